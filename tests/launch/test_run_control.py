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
