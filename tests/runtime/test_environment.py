"""crild's environment variables: a value that does not parse is one line naming the
variable, whether a stage reads it or the runner does."""
import os
import sys
from contextlib import contextmanager

import pytest
import yaml
from helpers import REPO, crild_env, tiny_run_config
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import UserError
from pipeline.runtime import environment


@pytest.mark.parametrize("text, value", [(None, 600.0), ("30", 30.0), ("0.5", 0.5)])
def test_seconds_parse(monkeypatch, text, value):
    if text is not None:
        monkeypatch.setenv("CRILD_STOP_GRACE_S", text)
    assert environment.seconds("CRILD_STOP_GRACE_S", 600) == value


@pytest.mark.parametrize("text", ["abc", "-5", "0", "nan", "inf", ""])
def test_seconds_that_do_not_parse_name_the_variable(monkeypatch, text):
    monkeypatch.setenv("CRILD_STOP_GRACE_S", text)
    with pytest.raises(UserError) as exc:
        environment.seconds("CRILD_STOP_GRACE_S", 600)
    assert str(exc.value) == f"CRILD_STOP_GRACE_S: expected a number of seconds > 0, got {text!r}"


def test_a_home_that_is_a_file_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("CRILD_HOME", str(tmp_path / "missing"))
    assert environment.folder("CRILD_HOME", tmp_path) == tmp_path / "missing"  # made when first needed
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setenv("CRILD_HOME", str(tmp_path / "a-file"))
    with pytest.raises(UserError, match=r"^CRILD_HOME: '.*a-file' is a file, not a folder$"):
        environment.folder("CRILD_HOME", tmp_path)
    monkeypatch.setenv("CRILD_HOME", str(tmp_path / "a-file" / "crild"))  # no folder can be made there
    with pytest.raises(UserError, match=rf"^CRILD_HOME: '.*a-file/crild' is under '{tmp_path}/a-file', a file$"):
        environment.folder("CRILD_HOME", tmp_path)


def test_a_launcher_crild_does_not_know_is_refused(monkeypatch):
    monkeypatch.setenv("CRILD_LAUNCHER", "mpirun")
    with pytest.raises(UserError, match=r"^CRILD_LAUNCHER: expected srun or deepspeed, got 'mpirun'$"):
        environment.choice("CRILD_LAUNCHER", "srun", ("srun", "deepspeed"))


def test_a_stage_reports_a_bad_variable_in_one_line(tmp_path, tiny_bert, sentiment_dir):
    """Read inside the stage, when its ranks start (a process of its own: this one's
    process group may exist already): still one line, exit 2, nothing written."""
    import subprocess
    import sys

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_run_config(tmp_path, tiny_bert, sentiment_dir)))
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "teacher", str(config)], capture_output=True,
                          text=True, timeout=300, env=crild_env(CRILD_COLLECTIVE_TIMEOUT_S="ten minutes"), cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stderr.strip().splitlines()[-1] == (
        "crild: error: CRILD_COLLECTIVE_TIMEOUT_S: expected a number of seconds > 0, got 'ten minutes'")
    assert not (tmp_path / "run" / "teacher").exists()


def test_a_home_given_with_a_tilde_or_relative_means_one_absolute_folder(monkeypatch, tmp_path):
    """CRILD_HOME="~/crild" (quoted, so the shell leaves the tilde) made a folder named '~'
    in the working directory; a relative one moved with each stage's working directory."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CRILD_HOME", "~/crild")
    assert environment.folder("CRILD_HOME", tmp_path) == tmp_path / "crild"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CRILD_HOME", "cache")
    assert environment.folder("CRILD_HOME", tmp_path) == tmp_path / "cache"


@pytest.mark.parametrize("text, first, value", [(None, False, None), ("", False, None), ("8", False, 8),
                                                 (" 3 ", False, 3), ("8,2", True, 8)])
def test_counts_parse(monkeypatch, text, first, value):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    if text is not None:
        monkeypatch.setenv("OMP_NUM_THREADS", text)
    assert environment.count("OMP_NUM_THREADS", first_of_list=first) == value


# what a shell can hold: any bytes but NUL, which Python decodes with surrogateescape (a lone
# surrogate outside \udc80-\udcff cannot be set at all), and readable text
VARIABLE_TEXT = st.one_of(
    st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=8),
    st.binary(max_size=8).filter(lambda raw: b"\x00" not in raw).map(os.fsdecode))


@contextmanager
def variable(name: str, text: str):
    os.environ[name] = text
    try:
        yield
    finally:
        del os.environ[name]


@given(VARIABLE_TEXT)
def test_any_count_text_is_a_positive_number_or_one_line(text):
    with variable("LOCAL_WORLD_SIZE", text):
        try:
            n = environment.count("LOCAL_WORLD_SIZE")
        except UserError as err:
            assert str(err) == f"LOCAL_WORLD_SIZE: expected a whole number >= 1, got {text.strip()!r}"
        else:
            assert n is None and not text.strip() or n >= 1 and int(text.strip()) == n


def test_thread_and_rank_counts_that_do_not_parse_stop_a_stage_in_one_line(tmp_path, tiny_bert, sentiment_dir):
    import subprocess

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_run_config(tmp_path, tiny_bert, sentiment_dir)))
    for name, value in (("OMP_NUM_THREADS", "0"), ("LOCAL_WORLD_SIZE", "two")):
        env = {**crild_env(), name: value}
        if name != "OMP_NUM_THREADS":
            del env["OMP_NUM_THREADS"]  # which would decide the threads without the rank count
        done = subprocess.run([sys.executable, "-m", "pipeline.cli", "teacher", str(path)], env=env, cwd=REPO,
                              capture_output=True, text=True)
        assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == (
            f"crild: error: {name}: expected a whole number >= 1, got {value!r}")


@pytest.mark.parametrize("name, value, extra, message", [
    ("WORLD_SIZE", "abc", {}, "WORLD_SIZE: expected a whole number >= 1, got 'abc'"),
    ("RANK", "5", {}, "RANK: expected a whole number >= 0 and < 1, got '5'"),
    ("LOCAL_RANK", "-1", {}, "LOCAL_RANK: expected a whole number >= 0 and < 1, got '-1'"),
    ("MASTER_PORT", "70000", {"WORLD_SIZE": "2"}, "MASTER_PORT: expected a TCP port (1-65535), got '70000'"),
    ("MASTER_ADDR", " ", {"WORLD_SIZE": "2"}, "MASTER_ADDR: expected a host name or address, got ''"),
])
def test_launcher_variables_out_of_range_stop_a_stage_in_one_line(tmp_path, tiny_bert, sentiment_dir, name, value,
                                                                  extra, message):
    """A launcher's variables left in a shell, or mistyped: torch would raise from int(), or
    rank 5 of a world of 1 would wait for a process group it cannot join; and the error
    printer itself, which reads RANK and WORLD_SIZE, must not fail on them."""
    import subprocess

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_run_config(tmp_path, tiny_bert, sentiment_dir)))
    env = {**crild_env(), name: value, **extra}
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "teacher", str(path)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("crild: error"), done.stderr[-2000:]
    assert lines[0].endswith(f": {message}")


@given(VARIABLE_TEXT)
def test_ranks_and_ports_are_numbers_in_range_or_one_line(text):
    with variable("CRILD_TEST_VAR", text):
        for read, bound in ((lambda: environment.index("CRILD_TEST_VAR", below=4), range(0, 4)),
                            (lambda: environment.port("CRILD_TEST_VAR"), range(1, 65536))):
            try:
                n = read()
            except UserError as err:
                assert str(err).startswith("CRILD_TEST_VAR: expected ") and str(err).endswith(f"got {text.strip()!r}")
            else:
                assert n is None and not text.strip() or n in bound and int(text.strip()) == n


@given(VARIABLE_TEXT)
def test_the_error_printer_reads_any_rank_text(text):
    """launch_number never raises: it runs while an error about that very variable is printed."""
    from pipeline.errors import launch_number

    with variable("CRILD_TEST_VAR", text):
        n = launch_number("CRILD_TEST_VAR", 7)
    assert n == (int(text.strip()) if text.strip().isascii() and text.strip().isdigit() else 7)


def test_one_rank_says_nothing_of_waiting_however_slow_its_start(monkeypatch, capsys):
    """A single rank has no one to wait for: a slow start (DeepSpeed building an op) is not
    reported as waiting for ranks."""
    import time

    from pipeline.runtime import distributed

    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(distributed, "WAIT_NOTE_S", 0.05)
    with distributed._said_if_waiting(distributed.timedelta(seconds=5)):
        time.sleep(0.3)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("WORLD_SIZE", "2")  # the same slow start with a second rank to wait for
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1234")
    with distributed._said_if_waiting(distributed.timedelta(seconds=5)):
        time.sleep(0.3)
    assert capsys.readouterr().err.startswith("crild: rank 0: the process group of WORLD_SIZE=2 at 127.0.0.1:1234")


def test_a_rank_waiting_for_ranks_that_never_come_says_so_then_fails_in_one_line():
    """WORLD_SIZE=2 with one process: the rank says what it waits for once the rendezvous is
    slow, then the timeout is one line that says the ranks did not all meet."""
    import subprocess

    from pipeline.runtime.distributed import free_port

    code = ("from pipeline.errors import cli_entry\nfrom pipeline.runtime import distributed\n"
            "distributed.WAIT_NOTE_S = 0.5\ncli_entry(distributed.init_distributed)()\n")
    env = {**crild_env(), "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "CRILD_COLLECTIVE_TIMEOUT_S": "3"}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.startswith("crild")]  # notes of op builds too
    waiting = [line for line in lines if line.startswith("crild: rank 0: the process group of WORLD_SIZE=2 at ")]
    assert len(waiting) == 1 and "has not formed after 0 s; it waits for every rank, up to 3 s" in waiting[0], lines
    assert [line for line in lines if line.startswith("crild: error")] == lines[-1:], lines
    assert lines[-1].startswith("crild: error: the ranks did not all meet ("), lines
    assert done.returncode != 0
