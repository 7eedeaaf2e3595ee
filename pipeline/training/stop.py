"""A request to stop training cleanly: ``<output_dir>/.crild.stop`` written by ``crild run``,
SIGUSR1/SIGTERM/SIGINT to the stage itself (Slurm preemption, time limits, Ctrl-C), or a
micro-step count (tests). Training checkpoints at the next optimizer step and the stage
exits with EXIT_PREEMPTED; the same command resumes it. A second Ctrl-C stops at once.

The same vote carries a timed checkpoint (``checkpoint_minutes``): a rank whose clock says
one is due asks for it, and every rank saves at the same step."""
from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Optional

from pipeline.outputs.lock import STOP_FILE
from pipeline.runtime.distributed import start_all_reduce_max

STOP, CHECKPOINT = 2.0, 1.0  # a rank's vote (the largest wins): stop (after a checkpoint), checkpoint, or 0


class StopRequest:
    """Checked at optimizer-step boundaries; every rank stops (or saves a timed checkpoint)
    at the same step. The ranks' votes travel in a background all-reduce over the control
    group, read one boundary later, so checking costs no synchronisation of the hot path."""

    def __init__(self, after_micro_steps: Optional[int] = None, install_handlers: bool = True,
                 output_dir: Optional[str | Path] = None):
        self.requested = False
        self.after = after_micro_steps
        self.stop_file = Path(output_dir) / STOP_FILE if output_dir is not None else None
        self._vote = None  # the last boundary's all-reduce, still under way
        if install_handlers:
            for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
                try:
                    signal.signal(sig, self._handle)
                except ValueError:  # not the main thread
                    pass

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without a checkpoint
        self.requested = True
        print(f"crild: received {signal.Signals(signum).name}; checkpointing at the next step", file=sys.stderr,
              flush=True)

    def at_boundary(self, micro_step: int, due: bool = False, saving: bool = False) -> tuple[bool, bool]:
        """(stop, checkpoint now) at an optimizer-step boundary, the same on every rank.
        ``due``: this rank's clock says a timed checkpoint is due; ``saving``: this boundary
        saves anyway (by its step count), so no other is asked for."""
        if self.after is not None and micro_step >= self.after:  # a count: the same on every rank
            return True, True
        if not self.requested and self.stop_file is not None and self.stop_file.exists():
            self.requested = True
            print(f"crild: {self.stop_file} asks this stage to stop; checkpointing at the next step", file=sys.stderr,
                  flush=True)
        decided = self._drain()
        vote = STOP if self.requested else CHECKPOINT if due and not (saving or decided >= CHECKPOINT) else 0.0
        self._vote = start_all_reduce_max(vote)
        if self._vote is None:  # one process: nobody to agree with
            return self.requested, self.requested or due
        return decided >= STOP, decided >= CHECKPOINT

    def asked(self, units_done: int = 0) -> bool:
        """Whether this rank has been asked to stop (a signal, the stop file, or ``units_done``
        reaching the count given for tests), checked here alone: for work the ranks do at
        their own pace (augmentation's shards), which agree once afterwards
        (``any_rank``)."""
        if self.after is not None and units_done >= self.after:
            return True
        if not self.requested and self.stop_file is not None and self.stop_file.exists():
            self.requested = True
            print(f"crild: {self.stop_file} asks this stage to stop; stopping after the work under way",
                  file=sys.stderr, flush=True)
        return self.requested

    def drain(self) -> bool:
        """Wait for the vote under way; True if any rank asked to stop (then every rank keeps
        the request, for the next phase's first boundary)."""
        return self._drain() >= STOP

    def _drain(self) -> float:
        if self._vote is None:
            return 0.0
        handle, tensor = self._vote
        self._vote = None
        handle.wait()
        if tensor.item() >= STOP:
            self.requested = True
        return tensor.item()
