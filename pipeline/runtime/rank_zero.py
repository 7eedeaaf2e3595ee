"""Answers rank 0 works out once and gives every rank (a folder's hashes, a checkpoint's
integrity). Importing this loads no torch: no process group can exist before torch is
loaded, so the output checks that the command line and the configuration checks make
through it stay quick."""
from __future__ import annotations

import sys
from typing import Callable, TypeVar

from pipeline.errors import UserError

T = TypeVar("T")


def _process_group():
    """torch.distributed when a process group of more than one rank is up, else None."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return None
    return torch.distributed if torch.distributed.get_world_size() > 1 else None


def decided_by_main(fn: Callable[[], T]) -> T:
    """``fn()`` run on rank 0 only (e.g. hashing a large folder), its answer given to every
    rank; a UserError there is raised on every rank. Collective: never call it inside
    ``main_rank_first``."""
    dist = _process_group()
    if dist is None:
        return fn()
    answer = [None]
    if dist.get_rank() == 0:
        try:
            answer = [("ok", fn())]
        except UserError as err:
            answer = [("error", str(err))]
    dist.broadcast_object_list(answer, src=0)
    kind, value = answer[0]
    if kind == "error":
        raise UserError(value)
    return value
