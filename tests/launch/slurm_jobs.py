"""Jobs on the local Slurm clusters (tools/local_slurm.sh) for tests/launch/test_slurm*.py:
the tiny chain's configuration, sbatch and crild submit, waiting on a job, and a preemption
in the middle of ILD."""
import subprocess
import sys
import time
from pathlib import Path

import yaml
from helpers import REPO, tiny_run_config

DISTILL = ("distill",)  # with teacher_model: the distillation of a teacher another run trained


def chain_config(tmp_path: Path, tiny_bert, data_dir, name: str, stages=("teacher", "distill", "evaluate"),
                 **distill) -> Path:
    small = {"batch_size": 8, "learning_rate": 1e-3, "log_every": 2, "checkpoint_every": 1000}
    raw = tiny_run_config(tmp_path, tiny_bert, data_dir, epochs=1)
    raw.update(output_dir=str(tmp_path / name), num_ranks=2, pipeline=list(stages),
               deepspeed_config=str(REPO / "ds_configs" / "zero2_bf16.json"))
    raw["stages"]["distill"] = {"preset": "cr-ild", "ild": {"epochs": 30, **small}, "kd": {"epochs": 1, **small},
                                **distill}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def job_field(job: str, field: str, env) -> str:
    out = subprocess.run(["scontrol", "show", "job", job, "-o"], capture_output=True, text=True, env=env).stdout
    return next((f.split("=", 1)[1] for f in out.split() if f.startswith(f"{field}=")), "UNKNOWN")


def state(job: str, env) -> str:
    return job_field(job, "JobState", env)


def wait(job: str, env, timeout: float = 600) -> str:
    end = time.time() + timeout
    while time.time() < end:
        s = state(job, env)
        if s in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            return s
        time.sleep(1)
    subprocess.run(["scancel", job], env=env)
    raise AssertionError(f"job {job} did not finish in {timeout} s (state {state(job, env)})")


def sbatch_tiny(config: Path, log: Path, env, *sbatch_args: str) -> str:
    out = subprocess.run(["sbatch", "--parsable", f"--output={log}", *sbatch_args,
                          str(REPO / "jobs" / "crild_tiny.sbatch"), str(config)],
                         capture_output=True, text=True, env=env, cwd=REPO, check=True)
    return out.stdout.strip().split(";")[0]


def completed_chain(tmp: Path, tiny_bert, data_dir, name: str, env, *sbatch_args: str) -> str:
    """The tiny chain of ``chain_config``, with export, run to completion as one job; its log."""
    log = tmp / f"{name}.log"
    config = chain_config(tmp, tiny_bert, data_dir, name, stages=("teacher", "distill", "evaluate", "export"))
    job = sbatch_tiny(config, log, env, *sbatch_args)
    assert wait(job, env) == "COMPLETED", log.read_text()[-3000:]
    return log.read_text()


def preempted_during_ild(job: str, log: Path, env) -> str:
    """USR1 to the batch script a few ILD steps in; the job must checkpoint, requeue itself
    and complete. Returns its log."""
    end = time.time() + 300
    while time.time() < end and "crild: ild:" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.2)
    time.sleep(1.0)  # a few ILD steps in
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=env, check=True)
    assert wait(job, env) == "COMPLETED", log.read_text()[-3000:]
    text = log.read_text()
    assert "requeued to resume" in text and "restart 1" in text and "ild: resuming at micro-step" in text, \
        text[-3000:]
    return text


def submit(config: Path, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "submit", str(config)], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=600)


def submitted(proc) -> dict:
    return {line.split()[1].rstrip(":"): line.split()[4] for line in proc.stdout.splitlines()
            if "submitted job" in line}
