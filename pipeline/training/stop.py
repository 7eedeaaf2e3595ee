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
from pipeline.runtime.distributed import all_reduce_max


class StopRequest:
    """Checked collectively at optimizer-step boundaries, so every rank stops at the same step."""

    def __init__(self, after_micro_steps: Optional[int] = None, install_handlers: bool = True,
                 output_dir: Optional[str | Path] = None):
        self.requested = False
        self.after = after_micro_steps
        self.stop_file = Path(output_dir) / STOP_FILE if output_dir is not None else None
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
        if not self.requested and self.stop_file is not None and self.stop_file.exists():
            self.requested = True
            print(f"crild: {self.stop_file} asks this stage to stop; checkpointing at this step", file=sys.stderr,
                  flush=True)
        local = self.requested or (self.after is not None and micro_step >= self.after)
        return all_reduce_max(1.0 if local else 0.0) > 0
