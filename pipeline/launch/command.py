"""The command that runs one stage: srun inside a Slurm allocation (one task per rank), the
deepspeed launcher for several local ranks, plain python for one."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from pipeline.errors import UserError
from pipeline.launch.slurm import in_slurm_allocation
from pipeline.runtime.ports import free_port
from pipeline.runtime.progress import counted
from pipeline.stages import STAGES

PACKAGE_DIR = Path(__file__).resolve().parent.parent
# the deepspeed launcher of this interpreter's DeepSpeed: its console script need not sit beside
# sys.executable (pip install --target or --user, a system Python with a user site)
DEEPSPEED_LAUNCHER = (sys.executable, "-m", "deepspeed.launcher.runner")


def check_local_ranks(cfg) -> None:
    """On a machine with GPUs (outside Slurm), each local rank takes one: more ranks than GPUs
    would fail in the launcher only after the earlier stages had run, or share a GPU. On a CPU
    any number of gloo ranks may share the cores."""
    import torch

    if in_slurm_allocation() or cfg.num_ranks == 1 or not torch.cuda.is_available():
        return
    gpus = torch.cuda.device_count()
    if cfg.num_ranks > gpus:
        raise UserError(f"num_ranks: {cfg.num_ranks} ranks, one per GPU, and this machine has {counted(gpus, 'GPU')} "
                        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); expected at most "
                        f"{gpus}, or run on Slurm (crild submit)")


def stage_command(cfg, name: str, config_path: str, overrides: list[str]) -> list[str]:
    """Every rank of the run for a training or evaluation stage; one process, on one node,
    for a stage that runs as one (export), whatever ``num_ranks`` and the allocation say."""
    stage = STAGES[name]
    script = str(PACKAGE_DIR / stage.script)
    args = ["--config", config_path, *overrides, "--stage", name]
    if in_slurm_allocation():
        tasks = ["--ntasks=1", "--nodes=1"] if stage.one_process else [f"--ntasks={os.environ['SLURM_NTASKS']}"]
        return ["srun", "--kill-on-bad-exit=1", *tasks, sys.executable, script, *args]
    if cfg.num_ranks > 1 and not stage.one_process:  # a free port: runs can share a machine
        # the launcher's own log at "error": its info lines (a dozen a stage: the hostfile it has no
        # need of, each rank spawned and exited) filled stdout between crild's lines and tables
        return [*DEEPSPEED_LAUNCHER, "--num_gpus", str(cfg.num_ranks), "--master_port", str(free_port()),
                "--log_level", "error", script, *args]
    return [sys.executable, script, *args]
