"""The run lock: one crild run at a time per output_dir. An fcntl (flock) lock on
``<output_dir>/.crild.lock``, which the kernel releases when the holding process dies, so a
``kill -9`` never leaves a stale lock. The file itself says who holds it (pid, host, command,
the stage running), for the one-line refusal a second run gets and for ``crild status``.

``crild run`` holds it for the whole chain and tells the stages it launches (and their
ranks, on every node) through CRILD_RUN_LOCK, so they do not ask again; a stage script
started on its own takes it on rank 0.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from pipeline.errors import UserError

LOCK_FILE = ".crild.lock"
STOP_FILE = ".crild.stop"  # a stop request from the run's holder to every rank (pipeline.training.stop)
ENV = "CRILD_RUN_LOCK"  # the output_dir whose lock an ancestor process holds


def lock_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / LOCK_FILE


def _prepare(output_dir: Path) -> None:
    """output_dir exists (created if need be) and is a writable folder, or one line."""
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"output_dir: '{output_dir}' is a file, not a folder")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"output_dir: cannot create '{output_dir}' ({err.strerror})") from None
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise UserError(f"output_dir: '{output_dir}' is not writable")


def holder(output_dir: str | Path) -> Optional[dict]:
    """Who holds the lock (pid, host, command, stage, since), or None when nobody does."""
    path = lock_path(output_dir)
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # held: read what the holder wrote
            try:
                return json.loads(Path(path).read_text() or "{}")
            except ValueError:
                return {}
        return None
    finally:
        os.close(fd)  # a shared lock taken only to test is released with the descriptor


def _describe(info: dict) -> str:
    stage = f", running {info['stage']}" if info.get("stage") else ""
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')} since {info.get('since', '?')}{stage}"


class RunLock:
    """The lock, held from ``acquire`` until ``release`` or the process's end."""

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)
        self.fd: Optional[int] = None
        self.info: dict = {}

    def acquire(self) -> "RunLock":
        _prepare(self.output_dir)
        fd = os.open(lock_path(self.output_dir), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            info = holder(self.output_dir) or {}
            raise UserError(f"{self.output_dir}: another crild run is using this output_dir ({_describe(info)}); "
                            f"wait for it to finish or stop it, or use another output_dir") from None
        self.fd = fd
        self.info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
                     "command": " ".join(sys.argv)}
        self._write()
        (self.output_dir / STOP_FILE).unlink(missing_ok=True)  # a request to a run that is over
        os.environ[ENV] = str(self.output_dir.resolve())  # the stages this process starts run under it
        return self

    def set_stage(self, stage: Optional[str]) -> None:
        """Say which stage is running (``crild status`` shows it)."""
        self.info["stage"] = stage
        self._write()

    def _write(self) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(self.info).encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            if os.environ.get(ENV) == str(self.output_dir.resolve()):
                del os.environ[ENV]
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


def held_by_ancestor(output_dir: str | Path) -> bool:
    """True when a process that started this one holds the lock for ``output_dir``."""
    return os.environ.get(ENV) == str(Path(output_dir).resolve())


def _is_main_rank() -> bool:
    return int(os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or 0) == 0


@contextmanager
def run_lock(output_dir: str | Path):
    """Hold the lock for the block, unless an ancestor holds it; ranks other than 0 never
    take it (their rank 0 does)."""
    if held_by_ancestor(output_dir) or not _is_main_rank():
        yield None
        return
    lock = RunLock(output_dir).acquire()
    try:
        yield lock
    finally:
        lock.release()
