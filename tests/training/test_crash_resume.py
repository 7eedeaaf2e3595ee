"""SIGKILL at chosen points (CRILD_FAULT, see pipeline/runtime/faults.py), then the same command again:
the final weights are bitwise equal to an uninterrupted run's. Covers stage 1 and stage 3
(CR-ILD: mixup draws, dropout, the consistency target, data order), 1 and 2 ranks, kills
mid-accumulation, inside an evaluation, in the middle of writing a checkpoint and between a
finished output and its rename. With 2 ranks one rank is killed; the other must not hang."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import REPO, tiny_run_config
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

SCRIPTS = {"teacher": REPO / "pipeline" / "stage1_teacher.py", "distill": REPO / "pipeline" / "stage3_distill.py"}
OUTPUT = {"teacher": "teacher", "distill": "student"}


def write_config(folder: Path, stage: str, ranks: int, tiny_bert: Path, data: Path, teacher: Path,
                 **train) -> Path:
    raw = tiny_run_config(folder, tiny_bert, data, gradient_accumulation_steps=2, **train)
    if ranks == 2:
        raw["deepspeed_config"] = str(REPO / "ds_configs" / "zero2_bf16.json")
    if stage == "distill":
        train = {"batch_size": 8, "learning_rate": 1e-3, "checkpoint_every": 2, "eval_every": 2, "log_every": 2}
        raw["stages"]["distill"] = {"preset": "cr-ild", "teacher_model": str(teacher),
                                    "ild": {"epochs": 2, **train}, "kd": {"epochs": 1, **train}}
    path = folder / "run.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


def launch(stage: str, config: Path, ranks: int, fault: str | None = None, timeout: int = 300):
    from pipeline.runtime.distributed import free_port

    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE", "CRILD_FAULT"):
        env.pop(k, None)
    if fault:
        env["CRILD_FAULT"] = fault
    cmd = [sys.executable, str(SCRIPTS[stage]), "--config", str(config)]
    if ranks > 1:
        launcher = Path(sys.executable).with_name("deepspeed")
        cmd = [str(launcher), "--num_gpus", str(ranks), "--master_port", str(free_port()), *cmd[1:]]
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - start


def final_weights(config: Path, stage: str) -> dict:
    return load_file(str(config.parent / "run" / OUTPUT[stage] / "model.safetensors"))


_references: dict = {}


def reference(stage: str, ranks: int, tmp_path_factory, tiny_bert, data, teacher) -> dict:
    """The uninterrupted run's weights (once per stage and rank count)."""
    if (stage, ranks) not in _references:
        config = write_config(tmp_path_factory.mktemp(f"ref-{stage}-{ranks}"), stage, ranks, tiny_bert, data, teacher)
        proc, _ = launch(stage, config, ranks)
        assert proc.returncode == 0, proc.stderr[-3000:]
        _references[(stage, ranks)] = final_weights(config, stage)
    return _references[(stage, ranks)]


# (stage, ranks, fault "<point>:<n>[:<rank>]", the micro-step the rerun must resume at)
CASES = [
    ("teacher", 1, "step:11", 8),         # mid gradient-accumulation window, between checkpoints
    ("teacher", 1, "checkpoint:2", 8),    # engine files written, hashes not: the torn newest one is skipped
    ("teacher", 1, "checkpoint:1", None),  # the only checkpoint torn (a kill, a full disk): starts over
    ("teacher", 1, "eval:3", 8),          # inside a periodic evaluation
    ("teacher", 1, "output:1", 24),       # the final output complete but not yet renamed into place
    ("distill", 1, "step:9", 8),          # CR-ILD phase, mid-epoch: mixup draws and dropout must continue
    ("distill", 1, "output:1", 24),       # the ILD phase's output torn: the phase resumes from its checkpoint
    ("distill", 1, "step:30", 4),         # the prediction-layer KD phase (the ILD phase has 24 micro-steps)
    ("teacher", 2, "step:9:1", 8),        # rank 1 killed; rank 0 must not hang
    ("distill", 2, "checkpoint:2:0", 2),  # rank 0 killed while writing a checkpoint (2 steps per checkpoint)
]
# checkpoints by the clock only (checkpoint_minutes, due at every boundary here), none by steps
TIMED = {"checkpoint_every": 1000, "checkpoint_minutes": 1e-9}
TIMED_CASES = [
    ("teacher", 1, "step:11", 10),    # one process: a timed checkpoint at every optimizer step (2 micro-steps)
    ("teacher", 2, "step:11:1", 8),   # two ranks agree one boundary later, then save together: every other step
]


@pytest.mark.parametrize("stage,ranks,fault,resume_at,train",
                         [(*case, {}) for case in CASES] + [(*case, TIMED) for case in TIMED_CASES],
                         ids=[f"{s}-{r}rank-{f}" for s, r, f, _ in CASES] +
                             [f"{s}-{r}rank-{f}-timed" for s, r, f, _ in TIMED_CASES])
def test_sigkill_then_rerun_gives_bitwise_identical_weights(stage, ranks, fault, resume_at, train, tmp_path,
                                                            tmp_path_factory, tiny_bert, tiny_teacher, sentiment_dir):
    expected = reference(stage, ranks, tmp_path_factory, tiny_bert, sentiment_dir, tiny_teacher)
    config = write_config(tmp_path, stage, ranks, tiny_bert, sentiment_dir, tiny_teacher, **train)
    killed, seconds = launch(stage, config, ranks, fault=fault)
    if ranks == 1:
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    else:  # the surviving rank exits too, promptly, in one line, and the launcher reports the killed rank's code
        assert killed.returncode == 256 - signal.SIGKILL, killed.stderr[-2000:]
        assert seconds < 120
        assert "Traceback" not in killed.stderr, killed.stderr[-3000:]
        assert re.search(r"crild: error( \[rank 1\])?: another rank stopped during a collective \(", killed.stderr)
    assert not (tmp_path / "run" / OUTPUT[stage]).exists()  # nothing that looks complete

    if ranks == 2 and stage == "teacher" and not train:  # on another number of ranks: refused, touching nothing
        other, _ = launch(stage, config, 1)
        assert other.returncode == 2 and "Traceback" not in other.stderr, other.stderr[-3000:]
        assert re.search(r"crild: error: \S+/checkpoints/teacher/step\d+: checkpoint written by 2 ranks, and this "
                         r"run has 1; ", other.stderr), other.stderr[-2000:]
    resumed, _ = launch(stage, config, ranks)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    said = resumed.stdout + resumed.stderr
    if resume_at is None:
        assert "was interrupted while saving; removing it" in said and "resuming at" not in said, said[-2000:]
    else:
        assert f"resuming at micro-step {resume_at} " in said  # resumed, not restarted
    got = final_weights(config, stage)
    assert got.keys() == expected.keys()
    for k in expected:
        assert torch.equal(got[k], expected[k]), k
