"""Controlling a run from outside: the run lock (a second run on one output_dir is refused
at once, whatever its configuration, and a killed holder leaves no stale lock), stop
requests (SIGINT to the runner alone reaches the stage, which checkpoints; the runner waits
for it and nothing outlives it), and ``crild status``."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import REPO, Crild, crild_env, tiny_run_config

from pipeline.outputs.lock import RunLock, holder
from pipeline.outputs.manifest import is_complete

pytestmark = pytest.mark.slow


def long_teacher_config(tmp_path: Path, tiny_bert: Path, data: Path) -> Path:
    """A teacher stage that trains long enough to be caught running (checkpoints every 2 steps)."""
    raw = tiny_run_config(tmp_path, tiny_bert, data, epochs=400, checkpoint_every=2, eval_every=1000)
    raw["pipeline"] = ["teacher"]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def stage_processes(marker: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line and "stage1_teacher" in line]


def test_second_run_is_refused_at_once_then_sigint_checkpoints_and_nothing_outlives_the_runner(
        tmp_path, tiny_bert, sentiment_dir):
    config = long_teacher_config(tmp_path, tiny_bert, sentiment_dir)
    out = tmp_path / "run"
    first = Crild("run", str(config))
    try:
        first.wait_for("optimizer steps")
        while not list((out / "checkpoints" / "teacher").glob("step*")):
            time.sleep(0.2)
        info = holder(out)
        assert info["pid"] == first.proc.pid and info["stage"] == "teacher" and info["host"] == socket.gethostname()

        # the same configuration, then a different one: refused at once, in one line, touching nothing
        for extra in ([], ["stages.teacher.learning_rate=0.002"]):
            start = time.monotonic()
            second = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(config), *extra], cwd=REPO,
                                    env=crild_env(), capture_output=True, text=True, timeout=120)
            assert second.returncode == 2 and time.monotonic() - start < 60, second.stderr
            lines = second.stderr.strip().splitlines()
            assert lines[-1].startswith(f"crild: error: {out}: another crild run is using this output_dir (pid "
                                        f"{first.proc.pid} on {socket.gethostname()} since "), lines
            assert "running teacher" in lines[-1] and "Traceback" not in second.stderr
        assert not list(out.glob("checkpoints/*.stale-*")) and not list(out.glob("checkpoints.stale-*"))
        status = subprocess.run([sys.executable, "-m", "pipeline.cli", "status", str(config)], cwd=REPO,
                                env=crild_env(), capture_output=True, text=True, timeout=120)
        assert f"in use by pid {first.proc.pid}" in status.stdout and "teacher  running" in status.stdout

        os.kill(first.proc.pid, signal.SIGINT)  # the runner alone, not its process group
        assert first.finish(timeout=120) == 75, first.output
    finally:
        if first.proc.poll() is None:
            first.proc.kill()
    assert "asks this stage to stop; checkpointing at the next step" in first.output
    assert "teacher: stopped on request after a checkpoint; run again to resume" in first.output
    assert "Traceback" not in first.output
    assert stage_processes(str(config)) == []  # the stage ended before its runner
    assert not is_complete(out / "teacher") and holder(out) is None
    status = subprocess.run([sys.executable, "-m", "pipeline.cli", "status", str(config)], cwd=REPO,
                            env=crild_env(), capture_output=True, text=True, timeout=120)
    assert "not in use" in status.stdout and "teacher  interrupted (resumable from step " in status.stdout
    assert " on 1 rank)" in status.stdout  # a resume needs as many ranks as wrote the checkpoint


@pytest.mark.parametrize("ranks", [1, 2])
def test_a_mistake_a_stage_finds_is_the_runs_one_line(tmp_path, tiny_bert, sentiment_dir, ranks):
    """A stage's user error is already one line: crild run exits 2 with it alone, without a
    second line that the stage failed (with two ranks, whatever code the launcher reports
    for the rank it ended)."""
    import shutil

    data = shutil.copytree(sentiment_dir, tmp_path / "data")
    with open(data / "train.jsonl", "a") as f:
        f.write('{"sentence": "cut \\ud83d", "label": "fresh"}\n')
    line = sum(1 for _ in open(data / "train.jsonl"))
    raw = tiny_run_config(tmp_path, tiny_bert, data)
    raw.update(pipeline=["teacher"], num_ranks=ranks)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(config)], cwd=REPO, env=crild_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("crild: error")] == [f"crild: error: {data / 'train.jsonl'}:{line}: column 'sentence' holds "
                                                f"'\\ud83d', half of a UTF-16 pair without its other half (text cut "
                                                f"inside an emoji, say); expected whole characters"]
    assert not is_complete(tmp_path / "run" / "teacher") and not (tmp_path / "run" / ".crild-said").exists()


def test_a_killed_runner_takes_its_stage_with_it_and_leaves_no_stale_lock(tmp_path, tiny_bert, sentiment_dir):
    config = long_teacher_config(tmp_path, tiny_bert, sentiment_dir)
    run = Crild("run", str(config))
    run.wait_for("optimizer steps")
    run.proc.kill()  # SIGKILL: no handler runs
    run.finish(timeout=30)
    deadline = time.monotonic() + 60
    while stage_processes(str(config)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert stage_processes(str(config)) == []
    lock = RunLock(tmp_path / "run").acquire()  # the kernel released the dead holder's lock
    lock.release()


def test_a_stop_during_a_stage_that_does_not_checkpoint_ends_the_run_after_it(tmp_path, tiny_bert, sentiment_dir):
    """Evaluation and export run to their end (they have nothing to checkpoint): a stop request
    during evaluation stops the run before export, with exit code 75 and a line saying so; one
    during the last stage leaves nothing undone, and the run ends with 0."""
    from pipeline import stage1_teacher
    from pipeline.config import from_dict
    from pipeline.training.stop import StopRequest

    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir, epochs=1)
    raw["pipeline"] = ["teacher", "evaluate", "export"]
    raw["stages"]["export"] = {"models": [str(tmp_path / "run" / "teacher")],
                               "benchmark": {"batch1_examples": 8, "batch32_batches": 1, "warmup": 1, "threads": 1}}
    assert stage1_teacher.run(from_dict(raw), stop=StopRequest(install_handlers=False)) == 0
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"

    run = Crild("run", str(config))
    run.wait_for("crild: evaluate: running")
    os.kill(run.proc.pid, signal.SIGINT)
    assert run.finish(timeout=300) == 75, run.output
    assert run.lines[-1] == "crild: stopped on request before export; the stages before it are complete: run again " \
                            "to go on", run.output
    assert is_complete(out / "eval") and not (out / "export").exists() and "Traceback" not in run.output

    run = Crild("run", str(config))
    run.wait_for("crild: export: running")
    os.kill(run.proc.pid, signal.SIGINT)
    assert run.finish(timeout=300) == 0, run.output
    assert is_complete(out / "export") and "Traceback" not in run.output


def test_a_stop_during_augmentation_on_two_ranks_is_agreed_and_the_same_command_goes_on(tmp_path, tiny_bert,
                                                                                       sentiment_dir):
    """The ranks write their shards at their own pace: each stops after the shard under way
    and they agree once, so both exit 75 without a hang; the same command does the rest.
    (The stop file is there before the ranks start, as crild run writes it on Ctrl-C.)"""
    import subprocess

    from helpers import crild_env, write_vectors

    from pipeline.launch.command import DEEPSPEED_LAUNCHER
    from pipeline.outputs.lock import ENV, STOP_FILE

    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
    raw.update(pipeline=["augment"], num_ranks=2)
    raw["stages"]["augment"] = {"copies": 4, "candidates": 5, "num_shards": 16,
                                "vectors": {"path": str(write_vectors(tmp_path / "vectors.txt"))}}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    out.mkdir()
    (out / STOP_FILE).touch()
    done = subprocess.run([*DEEPSPEED_LAUNCHER, "--num_gpus", "2", str(REPO / "pipeline" / "stage2_augment.py"),
                           "--config", str(config)], cwd=REPO, env={**crild_env(), ENV: str(out.resolve())},
                          capture_output=True, text=True, timeout=300)  # as under crild run, which holds the lock
    assert done.returncode == 75, done.stdout[-3000:] + done.stderr[-3000:]
    assert "augment: stopped on request; the complete shards are kept, run again to do the rest" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr and not (out / "augmented").exists()

    again = Crild("run", str(config))  # a new run clears the old request
    assert again.finish(timeout=300) == 0, again.output
    assert is_complete(out / "augmented")
