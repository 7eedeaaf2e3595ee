"""The run lock: one crild run at a time per output_dir. An fcntl (flock) lock on
``<output_dir>/.crild.lock``, which the kernel releases when the holding process dies, so a
``kill -9`` never leaves a stale lock. The file itself says who holds it (pid, host, command,
the stage running), for the one-line refusal a second run gets and for ``crild status``.

Some cluster file systems refuse flock (Lustre mounted ``noflock``: ENOSYS; NFS without a
lock manager: ENOLCK). There the lock is a file created exclusively,
``<output_dir>/.crild.held``, holding the same description and removed on release. A holder
that died without releasing it is recognised where that can be known: a process on this host
that no longer runs (pid and start time), or an earlier run of the same Slurm job, which
Slurm has ended before requeueing it. A file left by a process on another host is named in
the refusal, for the user to remove.

``crild run`` holds it for the whole chain and tells the stages it launches (and their
ranks, on every node) through CRILD_RUN_LOCK, so they do not ask again; a stage script
started on its own takes it on rank 0.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from pipeline.errors import UserError, launch_number
from pipeline.schema.paths import not_utf8

LOCK_FILE = ".crild.lock"
HELD_FILE = ".crild.held"  # the lock where the file system has no flock
STOP_FILE = ".crild.stop"  # a stop request from the run's holder to every rank (pipeline.training.stop)
ENV = "CRILD_RUN_LOCK"  # the output_dir whose lock an ancestor process holds


def lock_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / LOCK_FILE


def shared_folder(path: Path) -> Optional[str]:
    """"the file system's root" or "your home folder" where ``path`` is one of them (folders
    whose other contents a run's folders would spread among), else None."""
    where = Path(path).resolve()
    try:
        home = Path.home().resolve()
    except (RuntimeError, KeyError):  # no HOME and no password entry: no home folder to mistake
        home = None
    if where == Path(where.anchor):
        return "the file system's root"
    return "your home folder" if where == home else None


def _prepare(output_dir: Path) -> list[Path]:
    """output_dir exists (created if need be) and is a writable folder, or one line. Returns
    the folders created here, deepest last."""
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"output_dir: '{output_dir}' is a file, not a folder")
    problem = not_utf8(os.path.abspath(output_dir))
    if problem:
        raise UserError(f"output_dir: {os.path.abspath(output_dir)!r} is not a UTF-8 path: {problem}")
    what = shared_folder(output_dir)
    if what:
        raise UserError(f"output_dir: '{output_dir}' is {what}; crild writes its stage folders (teacher, eval, "
                        f"checkpoints, tensorboard, ...) directly in output_dir: give the run a folder of its own "
                        f"(runs/NAME)")
    created = [folder for folder in (output_dir, *output_dir.parents) if not folder.exists()][::-1]
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"output_dir: cannot create '{output_dir}' ({err.strerror})") from None
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise UserError(f"output_dir: '{output_dir}' is not writable")
    return created


def _flock(fd: int, kind: int) -> Optional[OSError]:
    """Take ``kind`` without waiting: None when taken; raises BlockingIOError when another
    process holds it; returns the error when the file system has no flock."""
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        raise
    except OSError as err:
        if err.errno == errno.EINTR:
            return _flock(fd, kind)
        return err
    return None


def _process_start(pid: int) -> Optional[str]:
    """The start time of process ``pid`` in clock ticks since boot (``/proc/<pid>/stat``
    field 22), which tells a live process from a later one given the same pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _whoami() -> dict:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "command": " ".join(sys.argv)}
    start = _process_start(os.getpid())
    if start is not None:
        info["start"] = start
    if os.environ.get("SLURM_JOB_ID"):
        info["slurm_job"] = os.environ["SLURM_JOB_ID"]
        info["slurm_restart"] = os.environ.get("SLURM_RESTART_COUNT", "0")
    return info


def _ended(info: dict) -> bool:
    """Whether the process a held file names has certainly ended (False when it cannot be told)."""
    job = os.environ.get("SLURM_JOB_ID")
    if job and info.get("slurm_job") == job and \
            info.get("slurm_restart") != os.environ.get("SLURM_RESTART_COUNT", "0"):
        return True  # an earlier run of this requeued job: Slurm ended it before starting this one
    if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
        return False
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    start = _process_start(info["pid"])
    return start is not None and info.get("start") is not None and start != info["start"]


def _read_held(path: Path) -> Optional[dict]:
    """The held file's description, {} when unreadable, None when there is none."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        info = json.loads(text or "{}")
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def holder(output_dir: str | Path) -> Optional[dict]:
    """Who holds the lock (pid, host, command, stage, since), or None when nobody does."""
    path = lock_path(output_dir)
    held = _read_held(Path(output_dir) / HELD_FILE)
    if held is not None and not _ended(held):
        return held
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            _flock(fd, fcntl.LOCK_SH)  # a file system without flock: the held file said it all
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


def _refuse(output_dir: Path, info: dict, held: Optional[Path] = None) -> UserError:
    if held is not None and info.get("host") != socket.gethostname():
        return UserError(f"{output_dir}: another crild run is using this output_dir ({_describe(info)}), according "
                         f"to {held}; its file system has no flock, so a run killed on another host leaves that "
                         f"file behind: if no crild run is using this output_dir, remove it")
    return UserError(f"{output_dir}: another crild run is using this output_dir ({_describe(info)}); "
                     f"wait for it to finish or stop it, or use another output_dir")


class RunLock:
    """The lock, held from ``acquire`` until ``release`` or the process's end."""

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)
        self.fd: Optional[int] = None
        self.held: Optional[Path] = None  # the held file, where the file system has no flock
        self.info: dict = {}
        self.created: list[Path] = []  # the folders acquire made, removed on release if still holding nothing

    def acquire(self) -> "RunLock":
        self.created = _prepare(self.output_dir)
        held = _read_held(self.output_dir / HELD_FILE)
        if held is not None and not _ended(held):  # a holder on a file system that lost flock since
            raise _refuse(self.output_dir, held, self.output_dir / HELD_FILE)
        fd, unsupported = self._open_locked()
        self.info = _whoami()
        if unsupported is None:
            self.fd = fd
            if held is not None:  # left by a run that has ended, when flock was missing
                (self.output_dir / HELD_FILE).unlink(missing_ok=True)
        else:
            os.close(fd)
            self._create_held(unsupported)
        self._write()
        (self.output_dir / STOP_FILE).unlink(missing_ok=True)  # a request to a run that is over
        os.environ[ENV] = str(self.output_dir.resolve())  # the stages this process starts run under it
        return self

    def _open_locked(self) -> tuple[int, Optional[OSError]]:
        """The lock file, open and flocked (or the reason flock is missing). A run that
        releases a folder it made only for its lock removes the file (see _remove_if_unused):
        a flock taken on the file it removed, or an open into the folder it removed, is tried
        again, so two runs can never each hold a different file."""
        path = lock_path(self.output_dir)
        for _ in range(3):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # the folder went with it
                self.created = _prepare(self.output_dir)
                continue
            try:
                unsupported = _flock(fd, fcntl.LOCK_EX)
            except BlockingIOError:
                os.close(fd)
                raise _refuse(self.output_dir, holder(self.output_dir) or {}) from None
            if unsupported is not None or _names(path, fd):
                return fd, unsupported
            os.close(fd)
        raise _refuse(self.output_dir, holder(self.output_dir) or {})

    def _create_held(self, unsupported: OSError) -> None:
        """Hold the lock as a file created exclusively; one left by a holder that has
        certainly ended is replaced."""
        path = self.output_dir / HELD_FILE
        print(f"crild: {lock_path(self.output_dir)}: this file system does not support flock "
              f"({unsupported.strerror}); holding the run lock as {path} instead", file=sys.stderr, flush=True)
        for _ in range(2):
            try:
                self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                self.held = path
                return
            except FileExistsError:
                info = _read_held(path)
                if info is None:
                    continue  # released meanwhile
                if not _ended(info):
                    raise _refuse(self.output_dir, info, path) from None
                _remove_if_unchanged(path, info)
                print(f"crild: {path}: left by {_describe(info)}, which has ended; taking it over",
                      file=sys.stderr, flush=True)
        raise _refuse(self.output_dir, _read_held(path) or {}, path)

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
            if self.held is not None:
                self.held.unlink(missing_ok=True)
                self.held = None
            self._remove_if_unused()
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None

    def _remove_if_unused(self) -> None:
        """A run refused before it wrote anything (a mistake found by the checks before the
        first stage) leaves no folder behind that it made only to hold its lock; a folder with
        anything else in it, or one that was there before, is left as it is."""
        try:
            if not self.created or any(p.name not in (LOCK_FILE, STOP_FILE) for p in self.output_dir.iterdir()):
                return
        except OSError:  # removed or unreadable meanwhile: nothing of crild's to tidy
            return
        for name in (LOCK_FILE, STOP_FILE):
            (self.output_dir / name).unlink(missing_ok=True)
        for folder in reversed(self.created):
            try:
                folder.rmdir()  # only ever an empty folder: anything another process put there stays
            except OSError:
                return


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` is still the file open as ``fd``."""
    try:
        return os.path.samestat(os.stat(path), os.fstat(fd))
    except FileNotFoundError:
        return False


def _remove_if_unchanged(path: Path, info: dict) -> None:
    """Remove the held file a dead holder left, unless another run replaced it meanwhile:
    it is moved aside first, and put back when what was moved is not what was read."""
    aside = path.with_name(f"{path.name}.{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if _read_held(aside) == info:
        aside.unlink()
        return
    try:
        os.link(aside, path)  # another run's file: back where it was
    except FileExistsError:
        pass  # a third run took the name meanwhile: three runs racing on a file system without flock
    aside.unlink()


def held_by_ancestor(output_dir: str | Path) -> bool:
    """True when a process that started this one holds the lock for ``output_dir``."""
    return os.environ.get(ENV) == str(Path(output_dir).resolve())


def is_main_rank() -> bool:
    """Rank 0 of a launch (RANK, else srun's SLURM_PROCID), or a process no launcher started."""
    return launch_number("RANK", launch_number("SLURM_PROCID", 0)) == 0


@contextmanager
def run_lock(output_dir: str | Path):
    """Hold the lock for the block, unless an ancestor holds it; ranks other than 0 never
    take it (their rank 0 does)."""
    if held_by_ancestor(output_dir) or not is_main_rank():
        yield None
        return
    lock = RunLock(output_dir).acquire()
    try:
        yield lock
    finally:
        lock.release()
