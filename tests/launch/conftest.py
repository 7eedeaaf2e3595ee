"""The single-node Slurm cluster (tools/local_slurm.sh, which CI starts before the suite) and
the tiny chain run on it once per session: the reference that the preempted jobs on one node
and on two nodes, and the two-node job itself, are compared with."""
import os
import sys

import pytest
from helpers import REPO, once_per_session
from slurm_jobs import completed_chain


@pytest.fixture(scope="session")
def slurm_env():
    import subprocess

    proc = subprocess.run(["bash", str(REPO / "tools" / "local_slurm.sh"), "start"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    env = dict(os.environ, SLURM_CONF=os.environ.get("CRILD_SLURM_DIR", "/tmp/crild-slurm") + "/slurm.conf",
               CRILD_PYTHON=sys.executable)
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "CRILD_HOME"):
        env.pop(k, None)
    return env


@pytest.fixture(scope="session")
def one_node_chain(tmp_path_factory, tiny_bert, sentiment_dir, slurm_env):
    """The tiny chain (teacher, distill, evaluate, export) as one job of 2 tasks on one node:
    its folder, run folder and log. Made once per session, by the first pytest-xdist worker that
    asks (the tiny model and data are the same on every worker: they are written from a seed)."""
    folder = once_per_session(tmp_path_factory, "one-node-chain",
                              lambda tmp: completed_chain(tmp, tiny_bert, sentiment_dir, "plain", slurm_env))
    return folder, folder / "plain", (folder / "plain.log").read_text()
