"""The one test behind every folder crild writes into, replaces or removes."""
import os

from pipeline.outputs.ownership import EMPTY, FILE, FOREIGN, LINK, NEW, OURS, folder


def marked(path):
    return (path / "MARK").is_file()


def test_each_state(tmp_path):
    assert folder(tmp_path / "none", marked).state == NEW
    (tmp_path / "empty").mkdir()
    assert folder(tmp_path / "empty", marked).state == EMPTY
    (tmp_path / "file").write_text("x")
    assert folder(tmp_path / "file", marked).state == FILE
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "MARK").touch()
    (ours / "b").touch()
    assert folder(ours, marked).state == OURS
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    for name in ("d", "c", "b", "a"):
        (theirs / name).touch()
    found = folder(theirs, marked)
    assert found.state == FOREIGN and found.shown() == "a, b, c, ..." and found.shown(4) == "a, b, c, d"


def test_what_the_writer_keeps_there_itself_does_not_count(tmp_path):
    (tmp_path / "records").mkdir()
    assert folder(tmp_path, marked, ignore=frozenset({"records"})).state == EMPTY
    (tmp_path / "notes.txt").touch()
    assert folder(tmp_path, marked, ignore=frozenset({"records"})).state == FOREIGN


def test_a_link_is_never_followed_even_to_a_marked_folder(tmp_path):
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "MARK").touch()
    os.symlink(ours, tmp_path / "link")
    os.symlink(tmp_path / "gone", tmp_path / "dangling")
    assert folder(tmp_path / "link", marked).state == LINK
    assert folder(tmp_path / "dangling", marked).state == LINK
