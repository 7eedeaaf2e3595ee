"""The command that runs one stage: srun inside a Slurm allocation (one task per rank), the
deepspeed launcher for several local ranks, plain python for one."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from pipeline.launch.slurm import in_slurm_allocation
from pipeline.runtime.distributed import free_port
from pipeline.stages import STAGES

PACKAGE_DIR = Path(__file__).resolve().parent.parent


def stage_command(cfg, name: str, config_path: str, overrides: list[str]) -> list[str]:
    script = str(PACKAGE_DIR / STAGES[name].script)
    args = ["--config", config_path, *overrides, "--stage", name]
    if in_slurm_allocation():
        return ["srun", "--kill-on-bad-exit=1", f"--ntasks={os.environ['SLURM_NTASKS']}", sys.executable, script,
                *args]
    if cfg.num_ranks > 1:
        launcher = Path(sys.executable).with_name("deepspeed")  # a free port: runs can share a machine
        return [str(launcher), "--num_gpus", str(cfg.num_ranks), "--master_port", str(free_port()), script, *args]
    return [sys.executable, script, *args]
