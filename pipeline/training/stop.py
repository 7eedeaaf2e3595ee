"""A request to stop training cleanly: ``<output_dir>/.crild.stop`` written by ``crild run``,
SIGUSR1/SIGTERM/SIGINT to the stage itself (Slurm preemption, time limits, Ctrl-C), or a
micro-step count (tests). Training checkpoints at the next optimizer step and the stage
exits with EXIT_PREEMPTED; the same command resumes it. A second Ctrl-C stops at once."""
from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Optional

from pipeline.outputs.lock import STOP_FILE
from pipeline.runtime.distributed import start_all_reduce_max


class StopRequest:
    """Checked at optimizer-step boundaries; every rank stops at the same step. The ranks'
    votes travel in a background all-reduce over the control group, read one boundary later,
    so checking costs no synchronisation of the hot path."""

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

    def should_stop(self, micro_step: int) -> bool:
        if self.after is not None and micro_step >= self.after:  # a count: the same on every rank
            return True
        if not self.requested and self.stop_file is not None and self.stop_file.exists():
            self.requested = True
            print(f"crild: {self.stop_file} asks this stage to stop; checkpointing at the next step", file=sys.stderr,
                  flush=True)
        decided = self.drain()
        self._vote = start_all_reduce_max(1.0 if self.requested else 0.0)
        return decided if self._vote is not None else self.requested

    def drain(self) -> bool:
        """Wait for the vote under way; True if any rank asked to stop (then every rank keeps
        the request, for the next phase's first boundary)."""
        if self._vote is None:
            return False
        handle, tensor = self._vote
        self._vote = None
        handle.wait()
        if tensor.item() > 0:
            self.requested = True
        return tensor.item() > 0
