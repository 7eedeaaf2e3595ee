"""Collective helpers on a real 2-process gloo group."""
import os

import torch
import torch.multiprocessing as mp

from pipeline.errors import UserError
from pipeline.runtime.distributed import decided_by_main, free_port


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


def _launched_rank(rank: int, port: int, out: dict) -> None:
    # the environment the deepspeed launcher gives a rank on one machine (LOCAL_SIZE included)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_SIZE="2", LOCAL_WORLD_SIZE="2")
    import deepspeed.comm

    from pipeline.runtime.distributed import SHM_DIR, init_distributed, shm_buffer_name

    info = init_distributed()
    torch.distributed.barrier()  # every rank has released its buffer's name
    left = sorted(p.name for p in SHM_DIR.glob(shm_buffer_name(0)[:-1] + "*"))
    t = torch.full((4,), float(rank + 1))
    deepspeed.comm.inference_all_reduce(t)  # the shared-memory path still works on the mappings
    out[rank] = (info.world_size, left, t.tolist())
    torch.distributed.destroy_process_group()


def test_deepspeed_cpu_shared_memory_buffers_do_not_outlive_the_run():
    port = free_port()
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_launched_rank, args=(port, out), nprocs=2, join=True)
        result = dict(out)
    for rank in (0, 1):
        world, left, reduced = result[rank]
        assert world == 2 and left == [] and reduced == [3.0] * 4
    from pipeline.runtime.distributed import SHM_DIR

    assert not list(SHM_DIR.glob(f"deepspeed_allreduce_buffer_*_127.0.0.1_{port}_*"))
