"""crild's environment variables, read in one place: each with its type and default, and a
value that does not parse is one line naming the variable and what was expected (not a
traceback from deep inside a stage, nor a silent fallback)."""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

from pipeline.errors import UserError, not_a_folder


def seconds(name: str, default: float) -> float:
    """A positive, finite number of seconds."""
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"{name}: expected a number of seconds > 0, got {text!r}")
    return value


def _whole(name: str, low: int, high: int | None, expected: str, first_of_list: bool = False) -> int | None:
    """A whole number in [low, high] (no upper bound: None), or None when unset or empty; any
    other text is one line saying ``expected``."""
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    head = text.split(",")[0].strip() if first_of_list else text
    if not re.fullmatch(r"[0-9]+", head) or int(head) < low or (high is not None and int(head) > high):
        raise UserError(f"{name}: expected {expected}, got {text!r}")
    return int(head)


def count(name: str, first_of_list: bool = False) -> int | None:
    """A positive whole number, or None when unset or empty. ``first_of_list``: the variable
    may hold a comma-separated list whose first entry counts (OpenMP's nested
    OMP_NUM_THREADS=8,2)."""
    return _whole(name, 1, None, "a whole number >= 1", first_of_list)


def index(name: str, below: int | None = None) -> int | None:
    """A whole number >= 0 (and < ``below`` when given), or None when unset or empty: a
    rank."""
    bound = f" and < {below}" if below is not None else ""
    return _whole(name, 0, None if below is None else below - 1, f"a whole number >= 0{bound}")


def port(name: str) -> int | None:
    """A TCP port (1-65535), or None when unset or empty."""
    return _whole(name, 1, 65535, "a TCP port (1-65535)")


def folder(name: str, default: Path) -> Path:
    """A folder crild may create (it need not exist yet); a file there is refused. ``~`` is
    expanded and a relative path made absolute here, so every stage of a run (and every
    rank, whatever its working directory) means the same folder."""
    path = Path(os.environ.get(name) or default).expanduser().absolute()
    problem = not_a_folder(path)
    if problem:
        raise UserError(f"{name}: '{path}' {problem}")
    return path


def choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name, default)
    if value not in choices:
        raise UserError(f"{name}: expected {' or '.join(choices)}, got {value!r}")
    return value


def crild_home() -> Path:
    """CRILD_HOME: prepared offline data, tokenized caches, teacher logits, input digests."""
    return folder("CRILD_HOME", Path.home() / ".cache" / "crild")
