"""An error every rank meets is one line, not one per rank: the first rank of a launch on a
host to print a line claims it, rank 0 first, and the others stay silent about it."""
import os
import subprocess
import sys
import tempfile
import time

import pytest
import yaml
from helpers import REPO, crild_env, tiny_run_config
from hypothesis import given
from hypothesis import strategies as st

from pipeline import errors
from pipeline.runtime.distributed import free_port


@pytest.fixture
def launch(monkeypatch, tmp_path):
    """A launch of two ranks with its own temporary folder; returns a function that makes
    this process rank ``r`` of it."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(errors, "OTHERS_WAIT_S", 0.0)
    monkeypatch.setenv("WORLD_SIZE", "2")

    def as_rank(rank: int, key: str = "launcher-1"):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setattr(errors, "_launch_key", lambda: key)

    return as_rank


def test_a_line_is_said_once_per_launch(launch):
    launch(0)
    assert errors.first_to_say("error: model folder missing")
    assert not errors.first_to_say("error: model folder missing")
    launch(1)
    assert not errors.first_to_say("error: model folder missing")  # rank 0 said it
    assert errors.first_to_say("error: shard 1 is damaged")  # its own: said
    launch(1, key="launcher-2")  # the next launch says it again
    assert errors.first_to_say("error: model folder missing")


def test_a_slurm_step_over_several_nodes_says_a_line_once_through_output_dir(launch, monkeypatch, tmp_path):
    """The ranks of a two-node step have two parents and (on a real cluster) two temporary
    folders: each node printed the line once. They share output_dir's file system."""
    out = tmp_path / "run"
    monkeypatch.setattr(errors, "_watched", [out])
    monkeypatch.setenv("SLURM_JOB_ID", "17")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_STEP_NUM_NODES", "2")
    launch(0, key="node1-slurmstepd")
    assert errors.first_to_say("error: bad record")
    launch(1, key="node2-slurmstepd")
    assert not errors.first_to_say("error: bad record")  # the other node's rank: said already
    assert (out / f".{errors.SAID_DIR}" / "slurm-17.0").is_dir()
    monkeypatch.setenv("SLURM_STEP_ID", "1")  # the next step (stage) says it again
    assert errors.first_to_say("error: bad record")
    monkeypatch.setenv("SLURM_STEP_ID", "2")  # a step on one node keeps to the host's temporary folder
    monkeypatch.setenv("SLURM_STEP_NUM_NODES", "1")
    assert errors.first_to_say("error: bad record")
    assert (tmp_path / f"{errors.SAID_DIR}-{os.getuid()}" / "node2-slurmstepd").is_dir()
    assert not (out / f".{errors.SAID_DIR}" / "slurm-17.2").exists()


def test_one_rank_alone_always_says_it(launch, monkeypatch):
    launch(0)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert errors.first_to_say("x") and errors.first_to_say("x")


def test_without_a_writable_temporary_folder_every_rank_says_it(launch, tmp_path, monkeypatch):
    launch(0)
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "file"))  # a file where the folder would go
    assert errors.first_to_say("x") and errors.first_to_say("x")


def test_old_launches_marks_are_removed(launch, tmp_path):
    launch(0, key="old")
    errors.first_to_say("x")
    old = tmp_path / f"{errors.SAID_DIR}-{os.getuid()}" / "old"
    then = time.time() - errors.SAID_TTL_S - 1
    os.utime(old, (then, then))
    launch(0, key="new")
    errors.first_to_say("x")
    assert not old.exists() and (old.parent / "new").is_dir()


def test_rank_zero_says_it_plainly_and_another_rank_names_itself(launch, capsys):
    launch(1)
    errors._print_error("shard 1 is damaged")
    launch(0)
    errors._print_error("model folder missing")
    assert capsys.readouterr().err.splitlines() == ["crild: error [rank 1]: shard 1 is damaged",
                                                    "crild: error: model folder missing"]


@pytest.mark.slow
def test_an_error_of_every_rank_is_one_line_under_the_launcher(tmp_path, tiny_bert, sentiment_dir):
    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
    raw["teacher"]["model"] = str(tmp_path / "no-such-model")
    (config := tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    launcher = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port",
                str(free_port())]
    proc = subprocess.run([*launcher, str(REPO / "pipeline" / "stage1_teacher.py"), "--config", str(config)],
                          cwd=REPO, env=crild_env(), capture_output=True, text=True, timeout=300)
    said = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("crild: error")]
    assert proc.returncode != 0 and said == [f"crild: error: teacher.model: model folder '{tmp_path}/no-such-model' "
                                             f"does not exist"], proc.stderr[-3000:]


@given(st.text(alphabet=st.sampled_from("ab .;-`"), max_size=500), st.integers(20, 400))
def test_a_clipped_message_fits_and_never_ends_mid_word(text, limit):
    """A library's message quoted in a line is cut at a sentence end, else at a word, with
    "..." marking words cut; what is kept is the message's own start."""
    out = errors.clipped(text, limit)
    assert len(out) <= limit
    if len(text) <= limit:
        assert out == text
        return
    kept = out.removesuffix(" ...")
    assert text.startswith(kept)
    if out.endswith(" ..."):
        assert text[len(kept)] == " " or " " not in text[:limit - 4]
    else:
        assert kept.endswith(".") and text[len(kept)] == " "


def test_transformers_advice_is_cut_after_a_whole_sentence():
    advice = ("The checkpoint you are trying to load has model type `bertt` but Transformers does not recognize "
              "this architecture. This could be because of an issue with the checkpoint, or because your version "
              "of Transformers is out of date. You can update Transformers with the command `pip install "
              "--upgrade transformers`.")
    assert errors.clipped(advice).endswith("your version of Transformers is out of date.")
    assert errors.clipped("x" * 500) == "x" * 296 + " ..."
