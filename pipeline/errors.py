"""User-facing errors (one line, no traceback, exit code 2) and crild's exit codes."""
from __future__ import annotations

import functools
import os
import sys


class UserError(Exception):
    """A problem with the user's input (config, data, paths). Printed as one line."""


EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: checkpointed on request, run again to resume


def _rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def one_line(message: str) -> str:
    """``message`` on one line: newlines become spaces, other control and separator
    characters (a key named "\\r", a U+2028 in a file name) are shown escaped."""
    message = message.replace("\n", " ")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in message)


def cli_entry(fn):
    """Wrap a ``main`` so a :class:`UserError` exits with one line and code 2.

    Other exceptions are bugs and keep their traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            prefix = "crild: error: " if _rank() == 0 else f"crild: error [rank {_rank()}]: "
            print(prefix + one_line(str(err)), file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            print("crild: interrupted", file=sys.stderr, flush=True)
            sys.exit(130)

    return wrapper
