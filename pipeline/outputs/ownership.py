"""Whose a folder is, before crild writes into it, replaces it or removes it: the one test
behind every place crild writes a folder that a user names or could have made (stage
outputs, checkpoint folders, prepared data, a study's report). Nothing crild did not write
is ever moved or deleted, so each place accepts only some of these states and names the
rest in one line."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

NEW, EMPTY, OURS, FILE, LINK, FOREIGN = "new", "empty", "ours", "file", "link", "foreign"


@dataclass(frozen=True)
class Folder:
    path: Path
    state: str  # NEW (nothing there), EMPTY, OURS (carries crild's mark), FILE, LINK (symbolic), FOREIGN
    entries: list[str] = field(default_factory=list)  # what it holds, sorted

    def shown(self, limit: int = 3) -> str:
        """Its first entries, for a message: 'a, b, c, ...'."""
        return ", ".join(self.entries[:limit]) + (", ..." if len(self.entries) > limit else "")


def folder(path: Path, is_ours: Callable[[Path], bool], ignore: frozenset[str] = frozenset()) -> Folder:
    """The state of ``path``. ``is_ours`` reads the mark that the crild part writing there
    leaves (a manifest, a marker file, a summary); entries named in ``ignore`` do not make a
    folder non-empty (what that part keeps there itself). A symbolic link is not followed:
    what it points to is not crild's to replace or remove."""
    path = Path(path)
    if path.is_symlink():
        return Folder(path, LINK)
    if not path.exists():
        return Folder(path, NEW)
    if not path.is_dir():
        return Folder(path, FILE)
    entries = sorted(p.name for p in path.iterdir())
    if not set(entries) - ignore:
        return Folder(path, EMPTY, entries)
    return Folder(path, OURS if is_ours(path) else FOREIGN, entries)
