"""``crild run`` and the stage it runs: a stop request (Ctrl-C, SIGTERM, Slurm's SIGUSR1)
reaches the stage, which checkpoints at its next optimizer step and exits; the runner waits
for it, within a bound, and never leaves it behind.

The request travels as a file, ``<output_dir>/.crild.stop``, that every rank of the stage
checks at its step boundaries: it reaches every rank under any launcher (plain python, the
deepspeed launcher, srun on several nodes) without signalling launchers that would kill
their ranks. The stage runs in its own session, so a terminal's Ctrl-C reaches the runner
alone, and dies with the runner (SIGTERM on the runner's death) if the runner is killed.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.outputs.lock import STOP_FILE
from pipeline.runtime import environment

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class StageRunner:
    """Runs stage commands one at a time and turns stop signals into stop requests."""

    def __init__(self, output_dir: str | Path, grace_s: float | None = None):
        self.stop_file = Path(output_dir) / STOP_FILE
        self.grace_s = environment.seconds("CRILD_STOP_GRACE_S", 600) if grace_s is None else grace_s
        self.child: subprocess.Popen | None = None
        self.received: list[str] = []
        self.stop_since: float | None = None
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        self.received.append(name)
        if len(self.received) > 1 and signum == signal.SIGINT and self.child is not None:
            print("crild: second interrupt; stopping the running stage now, without a checkpoint", flush=True)
            self._kill()
            return
        print(f"crild: received {name}; asking the running stage to checkpoint and stop"
              + (" (Ctrl-C again to stop it at once)" if signum == signal.SIGINT else ""), flush=True)
        self.stop_file.touch()
        if self.stop_since is None:
            self.stop_since = time.monotonic()

    @property
    def stopping(self) -> bool:
        return bool(self.received)

    def run(self, cmd: list[str], env: dict) -> int:
        """The stage's exit code. After a stop request it gets ``grace_s`` seconds to
        checkpoint and exit, then it is terminated (and killed 10 s later)."""
        self.stop_file.unlink(missing_ok=True)
        self.child = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_die_with_parent)
        try:
            while True:
                try:
                    return self.child.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    if self.stop_since is not None and time.monotonic() - self.stop_since > self.grace_s:
                        print(f"crild: the stage did not stop within {self.grace_s:.0f} s "
                              f"(CRILD_STOP_GRACE_S); terminating it", flush=True)
                        self._kill()
        finally:
            self.child = None
            self.stop_file.unlink(missing_ok=True)

    def _kill(self) -> None:
        """SIGTERM to the stage's whole process group (launcher and ranks), SIGKILL 10 s later."""
        child = self.child
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, None)):
            try:
                os.killpg(child.pid, sig)
            except ProcessLookupError:
                return
            if wait is None:
                break
            try:
                child.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue
