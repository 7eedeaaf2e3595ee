"""crild's environment variables: a value that does not parse is one line naming the
variable, whether a stage reads it or the runner does."""
import sys

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


@given(st.text(max_size=8))
def test_any_count_text_is_a_positive_number_or_one_line(text):
    import os

    if "\x00" in text:
        return
    os.environ["LOCAL_WORLD_SIZE"] = text
    try:
        n = environment.count("LOCAL_WORLD_SIZE")
    except UserError as err:
        assert str(err) == f"LOCAL_WORLD_SIZE: expected a whole number >= 1, got {text.strip()!r}"
    else:
        assert n is None and not text.strip() or n >= 1 and int(text.strip()) == n
    finally:
        del os.environ["LOCAL_WORLD_SIZE"]


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
