"""Limits on the shape of what a YAML or JSON file holds. A configuration is a few levels
deep and a few hundred values; YAML's aliases can make a file of a few hundred bytes stand
for billions of values (each ``*name`` repeats its anchor's whole value), or for a list
that holds itself, and text nested thousands of levels deep exhausts Python's recursion
while it is read. Each of these is one line naming the file, before anything copies,
validates or prints the value."""
from __future__ import annotations

from pipeline.errors import UserError

MAX_VALUES = 100_000  # values after every alias is expanded: 100x the largest shipped configuration
MAX_DEPTH = 64  # levels of nested lists and mappings


def too_deep(where: str) -> UserError:
    """The error for text nested past Python's recursion limit (a RecursionError while
    parsing)."""
    return UserError(f"{where}: nested too deeply to read; expected at most {MAX_DEPTH} levels of lists and mappings")


def _children(value) -> list:
    if isinstance(value, dict):
        return [*value.keys(), *value.values()]
    return list(value) if isinstance(value, list) else []


def check_shape(value, where: str) -> None:
    """Refuse ``value`` (as parsed, aliases shared) if expanding its aliases would give more
    than ``MAX_VALUES`` values or more than ``MAX_DEPTH`` levels, or if it holds itself.
    Each shared list or mapping is measured once, so the check takes time linear in the
    text however much its aliases expand."""
    measured: dict[int, tuple[int, int]] = {}  # id -> (values, depth), with aliases expanded
    open_ids: set[int] = set()  # lists and mappings whose children are being measured
    stack = [(value, False)]
    while stack:
        node, closing = stack.pop()
        if not isinstance(node, (dict, list)) or (not closing and id(node) in measured):
            continue
        if closing:
            open_ids.discard(id(node))
            sizes = [measured.get(id(c), (1, 0)) for c in _children(node)]
            values, depth = 1 + sum(s[0] for s in sizes), 1 + max((s[1] for s in sizes), default=0)
            if values > MAX_VALUES:
                raise UserError(f"{where}: its aliases (*name) expand to more than {MAX_VALUES:,} values; "
                                f"expected a configuration of at most that many")
            if depth > MAX_DEPTH:
                raise UserError(f"{where}: nested more than {MAX_DEPTH} levels deep; expected at most {MAX_DEPTH} levels "
                                f"of lists and mappings")
            measured[id(node)] = (values, depth)
            continue
        if id(node) in open_ids:
            raise UserError(f"{where}: an alias (*name) refers to a list or mapping that holds it; "
                            f"expected values that end")
        open_ids.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node))
