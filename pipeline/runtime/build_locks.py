"""Stale build locks: a process killed while DeepSpeed compiles one of its ops (FusedAdam on a
GPU, its own Adam on a CPU where a DeepSpeed config asks for it) leaves torch's build lock behind,
and every later build of that op waits on it for ever, silently, inside DeepSpeed. This
finds such a lock before DeepSpeed starts and names it in one line.

torch's ``FileBaton`` creates ``<extensions root>/<op>/lock`` and keeps it open while it
builds, so on Linux a lock that no process has open is stale, once it has stayed so for a
while: the builder closes the file before it removes it, and on a loaded machine (many ranks
on few cores) it may wait seconds between the two. Where ``/proc`` is missing the lock's age
decides. A lock that a live process holds is waited for: another rank, or another run, is
building that op now. Nothing here removes a lock: it is torch's
file, and the user decides."""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from pipeline.errors import UserError

PROC = Path("/proc")
STALE_AFTER_S = 900.0  # without /proc: no op's build takes this long
RECHECK_S = 0.5
CONFIRM_S = 5.0  # a lock without a holder is stale once it has stayed so, the same file, this long


def extensions_root() -> Path:
    """Where ``torch.utils.cpp_extension`` builds: TORCH_EXTENSIONS_DIR, else one folder per
    Python version and accelerator under the default root."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    from torch.utils.cpp_extension import get_default_build_root

    accelerator = (f"rocm{torch.version.hip.replace('.', '')}" if torch.version.hip
                   else f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu")
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return Path(get_default_build_root()) / f"{python}_{accelerator}"


def held_open(path: Path, proc: Path = PROC) -> bool | None:
    """Whether some process has ``path`` open; None where ``/proc`` cannot say."""
    if not (proc / "self" / "fd").is_dir():
        return None
    target = str(path.resolve())
    for fd_dir in proc.glob("[0-9]*/fd"):
        try:
            fds = list(fd_dir.iterdir())
        except OSError:  # another user's process, or one that just ended
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == target:
                    return True
            except OSError:  # closed while we looked: the process's other files still count
                continue
    return False


def is_stale(lock: Path, proc: Path = PROC, now: float | None = None) -> bool:
    held = held_open(lock, proc)
    if held is None:
        return (now or time.time()) - lock.stat().st_mtime > STALE_AFTER_S
    return not held


def check_build_locks(root: Path | None = None, proc: Path = PROC, recheck_s: float = RECHECK_S,
                      confirm_s: float = CONFIRM_S) -> None:
    """Wait while another process builds an op; refuse a lock that nothing holds.

    A lock seen without a holder is looked at every ``recheck_s`` for ``confirm_s``: its
    builder may have closed it and not yet removed it."""
    root = root or extensions_root()
    if not root.is_dir():
        return
    waiting = False
    while True:
        locks = [lock for lock in root.glob("*/lock") if lock.exists()]
        if not locks:
            return
        stale = [lock for lock in locks if _still_stale(lock, proc, recheck_s, confirm_s)]
        if stale:
            lock = stale[0]
            raise UserError(f"{lock}: a build lock left by an interrupted build of DeepSpeed's "
                            f"'{lock.parent.name}' op; no process holds it, and every build of that op "
                            f"would wait on it for ever: remove the file and run again")
        if not waiting:
            print(f"crild: waiting for another process to finish building {locks[0].parent}",
                  file=sys.stderr, flush=True)
            waiting = True
        time.sleep(recheck_s)


@contextmanager
def op_builds():
    """A block in which DeepSpeed may build an op (its Adam when an engine is built; a
    communication op when ranks start, in a version that builds one): a build folder it
    cannot make or write there (a read-only home on a compute node, a TORCH_EXTENSIONS_DIR
    that names a file) is one line, not torch's traceback nor DeepSpeed's error around it."""
    try:
        yield
    except Exception as err:
        root = extensions_root()
        cause = _os_error_under(err, root)
        if cause is None:
            raise
        raise UserError(f"{cause.filename}: DeepSpeed builds its ops under {root} and cannot write there "
                        f"({cause.strerror or type(cause).__name__}); set TORCH_EXTENSIONS_DIR to a writable "
                        f"folder") from None


def _os_error_under(err: BaseException, root: Path) -> OSError | None:
    """The OSError on a path under ``root`` that ``err`` is or was raised from: DeepSpeed
    wraps a failed build in its own error (ZeRO-Offload's "DeepSpeedCPUAdam requires the
    cpu_adam op, which failed to build/load")."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.filename:
            failed = Path(err.filename)
            if failed == root or root in failed.parents:
                return err
        err = err.__cause__ or err.__context__
    return None


def _still_stale(lock: Path, proc: Path, recheck_s: float, confirm_s: float) -> bool:
    """Whether ``lock`` stays the same file, with no holder, for ``confirm_s``."""
    try:
        first = lock.stat()
        deadline = time.monotonic() + confirm_s
        while is_stale(lock, proc):
            if time.monotonic() >= deadline:
                return True
            time.sleep(recheck_s)
            now = lock.stat()
            if (now.st_ino, now.st_ctime_ns) != (first.st_ino, first.st_ctime_ns):
                return False  # released and taken again: a builder is at work
        return False
    except FileNotFoundError:  # released while we looked
        return False
