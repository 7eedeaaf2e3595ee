"""A request to stop training cleanly: SIGUSR1/SIGTERM (Slurm preemption, time limits, the
runner forwarding Ctrl-C) or a micro-step count (tests). Training checkpoints and the stage
exits with EXIT_PREEMPTED; the same command resumes it."""
from __future__ import annotations

import signal
import sys
from typing import Optional

from pipeline.runtime.distributed import all_reduce_max


class StopRequest:
    """Checked collectively at optimizer-step boundaries, so every rank stops at the same step."""

    def __init__(self, after_micro_steps: Optional[int] = None, install_handlers: bool = True):
        self.requested = False
        self.after = after_micro_steps
        if install_handlers:
            for sig in (signal.SIGUSR1, signal.SIGTERM):
                try:
                    signal.signal(sig, self._handle)
                except ValueError:  # not the main thread
                    pass

    def _handle(self, signum, frame) -> None:
        self.requested = True
        print(f"crild: received {signal.Signals(signum).name}; checkpointing at the next step", file=sys.stderr,
              flush=True)

    def should_stop(self, micro_step: int) -> bool:
        local = self.requested or (self.after is not None and micro_step >= self.after)
        return all_reduce_max(1.0 if local else 0.0) > 0
