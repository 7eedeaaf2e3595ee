"""Inside a Slurm allocation: whether stages launch with srun, the rendezvous address and
port of the job's ranks, and requeueing the job after a checkpoint."""
from __future__ import annotations

import os
import subprocess

from pipeline.runtime import environment


def in_slurm_allocation() -> bool:
    return "SLURM_JOB_ID" in os.environ and "SLURM_NTASKS" in os.environ and \
        environment.choice("CRILD_LAUNCHER", "srun", ("srun", "deepspeed")) == "srun"


def slurm_rendezvous() -> dict:
    """MASTER_ADDR/PORT for a stage launched with srun: the allocation's first node and a
    port derived from the job id (stable across requeues)."""
    nodes = subprocess.run(["scontrol", "show", "hostnames", os.environ.get("SLURM_JOB_NODELIST", "")],
                           capture_output=True, text=True).stdout.split()
    addr = nodes[0] if nodes else "127.0.0.1"
    if nodes:  # the node's address as Slurm knows it (node names need not resolve)
        info = subprocess.run(["scontrol", "show", "node", nodes[0], "-o"], capture_output=True, text=True).stdout
        addr = next((f.split("=", 1)[1] for f in info.split() if f.startswith("NodeAddr=")), addr)
    return {"MASTER_ADDR": addr,
            "MASTER_PORT": str(20000 + int(os.environ["SLURM_JOB_ID"]) % 20000)}


def requeue_self() -> bool:
    """Requeue this Slurm job (it resumes from the checkpoint); False outside Slurm."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return False
    return subprocess.run(["scontrol", "requeue", job]).returncode == 0
