"""The names scored and exported models go under: distinct for distinct folders, so no
model's results replace another's, and as short as that allows."""
from hypothesis import given
from hypothesis import strategies as st

from pipeline.evaluation.models import distinct_labels, model_names


def test_a_lone_folder_keeps_its_name(tmp_path):
    assert model_names(["runs/a/student", str(tmp_path / "teacher")],
                       ["runs/a/student", str(tmp_path / "teacher")], "w") == ["student", "teacher"]


def test_only_clashing_names_grow():
    assert distinct_labels([("r", "run1", "student"), ("r", "run2", "student"), ("q", "teacher")]) == \
        ["run1-student", "run2-student", "teacher"]
    # a grown label that meets another folder's own name grows again, and so does that one
    assert distinct_labels([("r", "run1", "student"), ("r", "run2", "student"), ("q", "run1-student")]) == \
        ["r-run1-student", "run2-student", "q-run1-student"]
    assert distinct_labels([("x",), ("a", "x")]) == ["x", "a-x"]  # a folder directly under the root
    # even whole paths joined with '-' can clash: numbered
    assert distinct_labels([("a-b", "x"), ("a", "b-x"), ("c", "x"), ("d", "b-x")]) == \
        ["a-b-x-1", "a-b-x-2", "c-x", "d-b-x"]


def test_a_link_keeps_the_name_it_is_written_with(tmp_path):
    (tmp_path / "run-2026").mkdir()
    (tmp_path / "latest").symlink_to(tmp_path / "run-2026")
    assert model_names([str(tmp_path / "latest")], [str(tmp_path / "run-2026")], "w") == ["latest"]


segment = st.text(st.sampled_from("ab-"), min_size=1, max_size=3)


@given(st.lists(st.lists(segment, min_size=1, max_size=4).map(tuple), min_size=1, max_size=6, unique=True))
def test_distinct_paths_get_distinct_labels(parts):
    labels = distinct_labels(parts)
    assert len(set(labels)) == len(labels)
    for path, label in zip(parts, labels):  # the path's trailing folders, numbered only if they all clash
        tails = {"-".join(path[-d:]) for d in range(1, len(path) + 1)}
        assert label in tails or (label.rsplit("-", 1)[0] in tails and label.rsplit("-", 1)[1].isdigit())


def test_a_pinned_hub_name_is_reported_by_its_name_and_two_commits_of_it_by_theirs(tmp_path):
    """The folders differ (each commit's snapshot); the labels say which model, and which
    commit only where one model is given at two."""
    old, new = "0123456789abcdef0123456789abcdef01234567", "89abcdef0123456789abcdef0123456789abcdef"
    folders = [str(tmp_path / name) for name in ("s1", "s2", "s3")]
    assert model_names([f"me/tiny@{old}", "me/other", str(tmp_path / "student")], folders, "w") == \
        ["tiny", "other", "student"]
    assert model_names([f"me/tiny@{old}", f"me/tiny@{new}", "me/other"], folders, "w") == \
        ["tiny@0123456789ab", "tiny@89abcdef0123", "other"]
