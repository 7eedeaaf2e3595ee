"""Signals reaching ``crild run``: SIGUSR1/SIGTERM (preemption, time limits) are passed on to
the running stage, which checkpoints and exits with EXIT_PREEMPTED."""
from __future__ import annotations

import signal
import subprocess


class StageForwarder:
    """Runs stage commands, forwarding stop requests to the one running."""

    def __init__(self):
        self.child: subprocess.Popen | None = None
        self.received = False
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = True
        print(f"crild: received {signal.Signals(signum).name}; asking the running stage to checkpoint", flush=True)
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGUSR1)

    def run(self, cmd: list[str], env: dict) -> int:
        self.child = subprocess.Popen(cmd, env=env)
        try:
            return self.child.wait()
        finally:
            self.child = None
