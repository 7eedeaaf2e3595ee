"""Fault injection for crash tests. ``CRILD_FAULT=<point>:<n>[:<rank>]`` kills this process
with SIGKILL (no handler, no cleanup, as the OOM killer or a node failure would) the n-th time
it reaches ``<point>``, on every rank or only on ``<rank>``. Unset, each check is one dict
lookup.

Points: ``step`` (after an optimizer or accumulation micro-step), ``eval`` (inside a periodic
evaluation), ``checkpoint`` (engine files written, content hashes not yet), ``output`` (a stage
output complete in its temporary folder, not yet renamed into place), ``shard`` (an
augmentation shard written).
"""
from __future__ import annotations

import os
import signal
from collections import Counter

POINTS = ("step", "eval", "checkpoint", "output", "shard")
_hits: Counter = Counter()


def _spec():
    raw = os.environ.get("CRILD_FAULT")
    if not raw:
        return None
    parts = raw.split(":")
    if len(parts) not in (2, 3) or parts[0] not in POINTS:
        raise ValueError(f"CRILD_FAULT: expected <point>:<n>[:<rank>] with point one of {', '.join(POINTS)}, "
                         f"got '{raw}'")
    return parts[0], int(parts[1]), (int(parts[2]) if len(parts) == 3 else None)


def crash_point(point: str) -> None:
    spec = _spec()
    if spec is None or spec[0] != point:
        return
    if spec[2] is not None and int(os.environ.get("RANK", "0")) != spec[2]:
        return
    _hits[point] += 1
    if _hits[point] == spec[1]:
        os.kill(os.getpid(), signal.SIGKILL)
