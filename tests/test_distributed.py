"""Collective helpers on a real 2-process gloo group."""
import os

import torch
import torch.multiprocessing as mp

from pipeline.distributed import decided_by_main, free_port
from pipeline.errors import UserError


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
