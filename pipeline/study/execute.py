"""Running a study's cells: each ``crild run`` in the background with its log in the run
folder, several at once when asked (never two of one seed), each scored and recorded as
soon as it completes."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Callable, Iterator, Optional

from pipeline.runtime.hub import commits_read
from pipeline.study.cells import Cell
from pipeline.study.spec import StudySpec


def _start(cell: Cell, cmd: list[str], threads: Optional[int]) -> subprocess.Popen:
    """``cmd`` in the background, its output appended to ``<run_dir>/logs/<method>.log``;
    ``threads`` sets OMP_NUM_THREADS unless it is set. Every cell reads the hub models and datasets
    at the commits the study's checks read."""
    log_dir = cell.run_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **commits_read()}
    if threads and not env.get("OMP_NUM_THREADS"):
        env["OMP_NUM_THREADS"] = str(threads)
    with open(log_dir / f"{cell.method}.log", "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)


def run_command(spec: StudySpec, cell: Cell) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "run", spec.base, *cell.overrides]


def record_command(spec: StudySpec, cell: Cell) -> list[str]:
    return [sys.executable, "-m", "pipeline.study.records", spec.source, cell.label]


def run_cells(spec: StudySpec, todo: list[Cell], jobs: int = 1, record: bool = True,
              record_only: frozenset = frozenset(),
              on_start: Callable[[Cell], None] = lambda cell: None) -> Iterator[tuple[Cell, int, float]]:
    """Run ``todo`` in order, at most ``jobs`` at a time and never two cells of one run folder
    at once (a seed's methods share its teacher and checkpoint folder); with ``record``, each
    cell that completes is scored and recorded in its slot straight away, so an interrupted
    study keeps every record made so far. Cells in ``record_only`` are complete already: they
    are only recorded. Yields (cell, exit code, seconds) as each ends.
    With several jobs each gets an equal share of the cores: small models use two threads
    poorly, so two one-thread cells beat one two-thread cell."""
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    pending, running = list(todo), {}  # cell -> (process, start time, commands still to run)
    try:
        while pending or running:
            busy = {cell.run_dir for cell in running}
            for cell in list(pending):
                if len(running) >= jobs:
                    break
                if cell.run_dir in busy:
                    continue
                pending.remove(cell)
                busy.add(cell.run_dir)
                on_start(cell)
                steps = ([] if cell in record_only else [run_command(spec, cell)]) + \
                    ([record_command(spec, cell)] if record else [])
                if not steps:
                    continue
                running[cell] = (_start(cell, steps[0], threads), time.time(), steps[1:])
            for cell, (proc, t0, after) in list(running.items()):
                if proc.poll() is None:
                    continue
                if proc.returncode == 0 and after:
                    running[cell] = (_start(cell, after[0], threads), t0, after[1:])
                    continue
                del running[cell]
                yield cell, proc.returncode, time.time() - t0
            time.sleep(0.5)
    finally:  # interrupted: stop the cells still running (each resumes on the next invocation)
        for proc, _, _ in running.values():
            proc.terminate()
        for proc, _, _ in running.values():
            proc.wait()
