"""Collective helpers on a real 2-process gloo group."""
import os
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from helpers import crild_env

from pipeline.errors import UserError
from pipeline.runtime.distributed import free_port
from pipeline.runtime.rank_zero import decided_by_main


def _worker(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    calls = []

    def check():
        calls.append(rank)
        return {"intact": True, "by": rank}

    def broken():
        raise UserError("teacher failed its integrity check: model.safetensors")

    value = decided_by_main(check)
    try:
        decided_by_main(broken)
        error = None
    except UserError as err:
        error = str(err)
    out[rank] = (value, calls, error)
    torch.distributed.destroy_process_group()


def test_decided_by_main_runs_once_and_tells_every_rank():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(free_port(), out), nprocs=2, join=True)
        result = dict(out)
    for rank in (0, 1):
        value, calls, error = result[rank]
        assert value == {"intact": True, "by": 0}  # rank 0's answer everywhere
        assert calls == ([0] if rank == 0 else [])  # only rank 0 did the work
        assert error == "teacher failed its integrity check: model.safetensors"  # raised on every rank


def _launched_rank(rank: int, port: int, extensions: str, out: dict) -> None:
    # the environment the deepspeed launcher gives a rank on one machine (LOCAL_SIZE included)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_SIZE="2", LOCAL_WORLD_SIZE="2", TORCH_EXTENSIONS_DIR=extensions)
    import deepspeed.comm

    from pipeline.runtime.distributed import SHM_DIR, init_distributed, shm_buffer_name

    info = init_distributed()
    torch.distributed.barrier()  # every rank has started its backend
    made = sorted(p.name for p in SHM_DIR.glob(shm_buffer_name(0)[:-1] + "*"))
    t = torch.full((4,), float(rank + 1))
    deepspeed.comm.inference_all_reduce(t)  # DeepSpeed's inference allreduce falls back to the process group
    out[rank] = (info.world_size, deepspeed.comm.comm.cdb.shm_comm_op is not None, made, t.tolist())
    torch.distributed.destroy_process_group()


def test_deepspeed_cpu_shared_memory_allreduce_is_not_built(tmp_path):
    """DeepSpeed's CPU backend would compile its shared-memory allreduce when ranks start (a
    compiler, and tens of seconds on a machine's first run) and leave a 66 MB buffer per rank in
    /dev/shm; only its inference kernels use it. Two ranks as the launcher starts them on one
    machine: nothing built, no buffer, and the collectives work."""
    port = free_port()
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_launched_rank, args=(port, str(tmp_path / "extensions"), out), nprocs=2, join=True)
        result = dict(out)
    for rank in (0, 1):
        world, built, made, reduced = result[rank]
        assert world == 2 and not built and made == [] and reduced == [3.0] * 4
    assert not (tmp_path / "extensions" / "deepspeed_shm_comm").exists()
    from pipeline.runtime.distributed import SHM_DIR

    assert not list(SHM_DIR.glob(f"deepspeed_allreduce_buffer_*_127.0.0.1_{port}_*"))


# A rank that has done its work: the control group (init_distributed's host gather), a
# background vote and plain collectives, then a normal exit. Left to interpreter teardown,
# gloo's threads can abort such an exit with SIGABRT, often enough here to fail CI.
EXITING_RANK = """
import sys, torch
from pipeline.runtime.distributed import all_reduce_sum, barrier, init_distributed, start_all_reduce_max
info = init_distributed()
gathered = [None] * info.world_size
torch.distributed.all_gather_object(gathered, list(range(1000)))
all_reduce_sum([1.0, float(info.rank)])
handle, vote = start_all_reduce_max(float(info.rank))
handle.wait()
torch.distributed.all_reduce(torch.ones(10000))
barrier()
sys.exit(0)
"""


@pytest.mark.slow
def test_two_ranks_exit_cleanly_every_time(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(EXITING_RANK)
    for attempt in range(8):
        port = str(free_port())
        ranks = [subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True,
                                  env={**crild_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
                                       "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                       "LOCAL_WORLD_SIZE": "2"})
                 for r in (0, 1)]
        for rank, proc in enumerate(ranks):
            output, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"attempt {attempt}, rank {rank}: exit {proc.returncode}\n{output}"
            assert "terminate called" not in output


def test_a_stage_tears_down_its_process_group_on_every_exit(tmp_path, monkeypatch):
    """Both ways to run a stage in this process, its script and ``crild <stage>``, destroy the
    process group on success and on a user error, so no gloo thread outlives the interpreter."""
    import deepspeed.comm
    from deepspeed.utils import groups

    from pipeline.runtime import distributed
    from pipeline.stage_cli import stage_main

    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT", "CRILD_RUN_LOCK"):
        monkeypatch.delenv(key, raising=False)
    config = tmp_path / "run.yaml"
    config.write_text(f"output_dir: {tmp_path / 'out'}\n")
    seen = []

    def failing(cfg):
        distributed.init_distributed()
        groups._get_data_parallel_group()  # DeepSpeed caches it, as an engine does
        seen.append(torch.distributed.is_initialized())
        raise UserError("stages.teacher.model: not found")

    def passing(cfg):
        distributed.init_distributed()
        groups._get_data_parallel_group()  # DeepSpeed caches it, as an engine does
        seen.append(torch.distributed.is_initialized())
        return 0

    import pipeline.stage4_evaluate
    from pipeline.cli import main as crild

    for run, code in ((failing, 2), (passing, 0)) * 2:  # the script, then ``crild evaluate``
        with pytest.raises(SystemExit) as exit_:
            if len(seen) < 2:
                stage_main(run, "evaluate", ["--config", str(config)])
            else:
                monkeypatch.setattr(pipeline.stage4_evaluate, "run", run)
                crild(["evaluate", str(config)])
        assert exit_.value.code == code
        assert not torch.distributed.is_initialized() and distributed.control_group() is None
    assert seen == [True] * 4  # initialised inside, destroyed on the way out, re-initialisable
    distributed.init_distributed()  # and DeepSpeed's cached groups were forgotten with it
    assert deepspeed.comm.get_global_rank(groups._get_data_parallel_group(), 0) == 0
