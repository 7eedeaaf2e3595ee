"""User-facing errors (one line, no traceback, exit code 2) and crild's exit codes.

Running out of disk space is one of them. A write that fails for want of space fails deep
inside torch, safetensors, Arrow or ONNX, often without the operating system's error:
:func:`out_of_space` recognises it from the exception chain or from the file system of the
run's output folder being full, and the command line says so instead of a traceback. The
run then resumes from its last complete checkpoint: a checkpoint cut short has no hashes and
is removed, an output cut short was never renamed into place. (Training stages also check
for room before their first step: ``Checkpoints.require_room``.)"""
from __future__ import annotations

import errno
import functools
import hashlib
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional


class UserError(Exception):
    """A problem with the user's input (config, data, paths). Printed as one line."""


EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: checkpointed on request, run again to resume
EXIT_LOST_PEER = 1  # another rank failed first; that rank's exit says why
LOST_PEER_GRACE_S = 3.0  # how long a rank that lost a peer waits before it exits (_leave_the_exit_to_the_first)


NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
NO_SPACE_TEXTS = ("no space left on device", "disk quota exceeded")
FULL_BELOW = 16 * 2**20  # a file system with less free space than this counts as full after a failed write
_watched: list[Path] = []


def free_bytes(path: str | Path) -> int:
    """Free space, for an unprivileged writer, on the file system that holds ``path`` (or
    would, when it does not exist yet)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def file_in_the_way(path: str | Path) -> Optional[Path]:
    """The file at ``path`` or at one of its parents, where a folder must be for crild to
    create ``path`` as one; None when there is none."""
    path = Path(path).absolute()
    for place in (path, *path.parents):
        if place.exists():
            return None if place.is_dir() else place
    return None


def not_a_folder(path: str | Path) -> Optional[str]:
    """Why ``path`` cannot be made a folder, for a message after its name: "is a file, not a
    folder", or "is under 'X', a file"; None when nothing on it is a file."""
    blocker = file_in_the_way(path)
    if blocker is None:
        return None
    return "is a file, not a folder" if blocker == Path(path).absolute() else f"is under '{blocker}', a file"


def size_text(n: float) -> str:
    """``n`` bytes for a reader: ``512 bytes``, ``12.3 MiB``."""
    if n < 1024:
        return f"{n:.0f} bytes"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"


def count_text(n: int) -> str:
    """A count of parameters for a reader, to three significant figures: ``22.7M``, ``1.3B``,
    ``35.1K``, ``512``, so a tiny model is not ``0.0M``."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale * 0.9995:
            return f"{n / scale:.3g}{unit}" if n < scale * 999.5 else f"{n / scale:.0f}{unit}"
    return str(n)


def watch(path: str | Path) -> None:
    """Name ``path`` (a run's output_dir) as where this process writes, for :func:`out_of_space`."""
    path = Path(path).absolute()
    if path not in _watched:
        _watched.append(path)


def _chain(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def out_of_space(err: BaseException) -> Optional[str]:
    """One line saying that ``err`` came from a full file system, or None when nothing says
    so: an ENOSPC/EDQUOT anywhere in its chain, the operating system's words for them in a
    library's message, or a watched folder whose file system is (now) full."""
    where = None
    for link in _chain(err):
        if isinstance(link, OSError) and link.errno in NO_SPACE_ERRNOS:
            where = Path(link.filename).parent if link.filename else None
            break
        if any(text in str(link).lower() for text in NO_SPACE_TEXTS):
            break
    else:
        where = next((p for p in _watched if free_bytes(p) < FULL_BELOW), None)
        if where is None:
            return None
    what = one_error(err)
    if where is None:
        return (f"a file system is full ({what}); free space there (or lift the quota), then run the same command "
                f"again: training resumes from its last complete checkpoint")
    return (f"{where}: no space left on its file system ({size_text(free_bytes(where))} free; {what}); free space "
            f"there or choose another output_dir, then run the same command again: training resumes from its last "
            f"complete checkpoint")


NO_ACCESS_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)


def no_access(err: BaseException) -> Optional[str]:
    """One line for a path the operating system refused crild (its permissions, a read-only
    file system, a file where a folder must be), or None: a folder or file of the user's,
    the machine's (TMPDIR, HF_HOME) or crild's own that it cannot write or read, named,
    where a traceback from deep inside a library said it. Only errors that name their path
    count."""
    for link in _chain(err):
        if isinstance(link, OSError) and link.errno == errno.ENOTDIR and link.filename:
            blocker = file_in_the_way(link.filename)
            if blocker is not None:
                return (f"'{link.filename}': '{blocker}' is a file, where crild needs a folder of that name: move "
                        f"the file, or point the setting or variable that leads there elsewhere")
        if isinstance(link, OSError) and link.errno in NO_ACCESS_ERRNOS and link.filename:
            return (f"'{link.filename}': {link.strerror or os.strerror(link.errno)}; crild cannot use it as it is: "
                    f"check its permissions and its folder's, or point the setting or variable that leads there "
                    f"(output_dir, CRILD_HOME, TMPDIR, HF_HOME) elsewhere")
    return None


def clipped(text: str, limit: int = 300) -> str:
    """A library's message ``text`` in at most ``limit`` characters: whole sentences where the
    first ones fit, else whole words, with "..." where words were cut, so that the line quoted
    never ends mid-word ("pip install --u")."""
    if len(text) <= limit:
        return text
    head = text[:limit + 1]
    end = max(head.rfind(". "), head.rfind("; "))
    if end >= limit // 3:
        return head[:end + 1].rstrip(";")
    return head[:limit - 4].rsplit(" ", 1)[0] + " ..."


def one_error(err: BaseException) -> str:
    """``Type: message`` of ``err``, its first line only."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def launch_number(name: str, default: int) -> int:
    """A launcher's variable (RANK, WORLD_SIZE) as this module and the progress lines read
    it: the default unless it is a whole number. They must never fail themselves; a bad value
    is refused, in one line, where the process group is set up."""
    text = os.environ.get(name, "").strip()
    return int(text) if text.isascii() and text.isdigit() else default


def _rank() -> int:
    return launch_number("RANK", 0)


def shown(text: str) -> str:
    """``text`` from a file, as a message quotes it: control and separator characters (a
    header's "\\r\\n", a U+2028) shown escaped, so that the message stays one line and says
    what the file holds."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def one_line(message: str) -> str:
    """``message`` on one line: newlines become spaces, other control and separator
    characters (a key named "\\r", a U+2028 in a file name) are shown escaped."""
    return shown(message.replace("\n", " "))


SAID_DIR = "crild-said"  # under the temporary folder: which lines the ranks of a launch have printed
SAID_TTL_S = 600  # a launch's marks are removed after this long
OTHERS_WAIT_S = 0.3  # ranks other than 0 wait this long, so that a line every rank has is rank 0's


def _launch_key() -> str:
    """What the ranks of one launch on this host share: their parent process (the deepspeed
    launcher's, torchrun's agent, srun's slurmstepd), by pid and start time."""
    parent = os.getppid()
    try:  # the start time makes a reused pid another key
        start = Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        start = "0"
    return f"{parent}-{start}"


def _said_folder() -> Path:
    """Where the ranks of this launch record the lines they have printed: this host's
    temporary folder, under a key of their parent process; for a Slurm step over several
    nodes, whose ranks share neither, the run's output_dir (on the file system the nodes
    share, as its checkpoints need), under the job and step (each node printed the line
    once before)."""
    job, step = os.environ.get("SLURM_JOB_ID", ""), os.environ.get("SLURM_STEP_ID", "")
    if _watched and job and step and launch_number("SLURM_STEP_NUM_NODES", 1) > 1:
        return _watched[0] / f".{SAID_DIR}" / f"slurm-{job}.{step}"
    return Path(tempfile.gettempdir()) / f"{SAID_DIR}-{os.getuid()}" / _launch_key()


def first_to_say(line: str) -> bool:
    """Whether this rank is the first of its launch to print ``line``. An error every rank
    meets (a model folder missing) was printed once per rank: eight GPUs, eight equal lines.
    Each distinct line is now claimed once, by an exclusively created file; rank 0 claims
    first (the others wait OTHERS_WAIT_S), so a line all ranks share is its own. When the
    claim cannot be made (no writable folder) the line is printed."""
    if launch_number("WORLD_SIZE", 1) < 2:
        return True
    if _rank() != 0:
        time.sleep(OTHERS_WAIT_S)
    folder = _said_folder()
    root = folder.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for old in root.iterdir():
            if old != folder and time.time() - old.stat().st_mtime > SAID_TTL_S:
                shutil.rmtree(old, ignore_errors=True)
        os.close(os.open(folder / hashlib.sha256(line.encode()).hexdigest()[:32], os.O_CREAT | os.O_EXCL | os.O_WRONLY,
                         0o600))
    except FileExistsError:
        return False
    except OSError:
        return True
    return True


def _say(what: str, text: str = "") -> None:
    """``crild: error: text`` on stderr (``crild: error [rank 3]: text`` from another rank than
    0), unless another rank of this launch on this host has said the same."""
    if first_to_say(f"{what}: {text}"):
        tag = "" if _rank() == 0 else f" [rank {_rank()}]"
        print(f"crild: {what}{tag}" + (f": {text}" if text else ""), file=sys.stderr, flush=True)


def _print_error(message: str) -> None:
    _say("error", one_line(message))


ERROR_NOTE_ENV = "CRILD_ERROR_NOTE"  # crild run names a file here for each stage it launches


def _note_user_error() -> None:
    """Leave the file ``crild run`` named (ERROR_NOTE_ENV) for the stage: the stage ended on
    a mistake of the user's, said in its one line. The launcher's exit code cannot say so:
    srun and the deepspeed launcher end the other ranks when one exits, and report the
    signal they sent them."""
    note = os.environ.get(ERROR_NOTE_ENV)
    if note:
        try:
            Path(note).parent.mkdir(parents=True, exist_ok=True)
            Path(note).touch()
        except OSError:
            pass


# What a rank's collective raises when another rank is gone: gloo's and NCCL's words for a
# peer whose connection closed, and torch's store errors during the rendezvous
PEER_GONE_TYPES = ("DistNetworkError", "DistStoreError")  # not DistBackendError: NCCL's own faults raise it too
PEER_GONE_TEXTS = ("connection reset by peer", "connection closed by peer", "broken pipe",
                   "connection was likely closed", "remote process exited", "communicator was aborted")
PEER_TIMEOUT_TEXTS = ("timed out", "timeout")
COLLECTIVE_TEXTS = ("gloo", "nccl", "collective", "recv", "send", "allreduce", "barrier", "store")


def lost_peer(err: BaseException) -> Optional[str]:
    """One line for a rank whose collective failed because another rank stopped (it failed,
    or was killed) or hangs, or None. Every surviving rank printed a traceback of the
    collective instead (gloo's or NCCL's, 60 lines a rank), and the one message that says
    what happened, the failed rank's own, was lost among them. Only with several ranks."""
    if launch_number("WORLD_SIZE", 1) < 2:
        return None
    for link in _chain(err):
        text = str(link).lower()
        if "waiting for clients" in text:  # the rendezvous: some rank never arrived
            return (f"the ranks did not all meet ({_short(link)}): a rank of WORLD_SIZE={os.environ.get('WORLD_SIZE')} "
                    f"did not start, failed first, or cannot reach MASTER_ADDR:MASTER_PORT; its own message, if it "
                    f"printed one, is among these lines")
        gone = type(link).__name__ in PEER_GONE_TYPES or any(t in text for t in PEER_GONE_TEXTS)
        timeout = any(t in text for t in PEER_TIMEOUT_TEXTS) and any(t in text for t in COLLECTIVE_TEXTS)
        if not gone and not (isinstance(link, RuntimeError) and timeout):
            continue
        if timeout and not any(t in text for t in PEER_GONE_TEXTS):
            return (f"a collective waited past CRILD_COLLECTIVE_TIMEOUT_S for another rank ({_short(link)}); that "
                    f"rank hangs or died: its own message, if it printed one, is among these lines")
        return (f"another rank stopped during a collective ({_short(link)}); it failed or was killed first: its "
                f"own message, if it printed one, is among these lines")
    return None


def _short(err: BaseException) -> str:
    """``Type: message`` of a collective's error, without the C++ source location gloo puts
    first and the advice it adds after the first sentence."""
    text = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*", "", one_error(err).split(": ", 1)[-1])
    first = re.split(r"(?<=\S)\. (?=[A-Z])", text, maxsplit=1)[0].rstrip(".")
    return f"{type(err).__name__}: {first}"


def _leave_the_exit_to_the_first() -> None:
    """Wait LOST_PEER_GRACE_S before a rank that lost a peer exits. The deepspeed launcher
    polls its ranks once a second and exits with the code of the first failed one it finds;
    a survivor that exited as fast as the rank that died was often that one, and its code 1
    hid the SIGKILL (the out-of-memory killer's) that ``crild run`` would have named. The
    launcher ends the survivor meanwhile with SIGTERM, which here just ends it: no
    "checkpointing at the next step" from the stop handler, with no step to come."""
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except ValueError:  # not the main thread
        pass
    time.sleep(LOST_PEER_GRACE_S)


def cli_entry(fn):
    """Wrap a ``main`` so a :class:`UserError`, a write that failed for want of disk space,
    or a path the operating system refused, exits with one line and code 2, and a rank
    whose collective lost another rank with one line and code 1, a moment later, so that
    the launcher reports the rank that failed first.

    Other exceptions are bugs and keep their traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            _print_error(str(err))
            _note_user_error()
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            _say("interrupted")
            sys.exit(130)
        except Exception as err:
            message = out_of_space(err) or no_access(err)
            if message is not None:
                _print_error(message)
                _note_user_error()
                sys.exit(EXIT_USER_ERROR)
            message = lost_peer(err)
            if message is None:
                raise
            _print_error(message)
            _leave_the_exit_to_the_first()
            sys.exit(EXIT_LOST_PEER)

    return wrapper
