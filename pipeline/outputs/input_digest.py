"""Digests of the files and folders a configuration names (data folders, model folders,
vectors files), so that a stage's fingerprint changes when what it reads changes, not only
when its settings do: a training file edited in place, or a teacher folder retrained, would
otherwise leave the old output looking complete and current.

A file's digest is its content's SHA-256, remembered under ``$CRILD_HOME/digests`` by path,
size, modification time and inode, so an unchanged file costs one ``stat``. A folder's is
the digest of its top-level files (model and data folders keep what crild reads there), of
all its files for a local copy of a hub dataset (which keeps them in data/ or a folder per
configuration), or, for a complete folder crild wrote, of its recorded content hashes (no file
read twice). Names that start with a dot (``hf download``'s .cache) are left out. A
value that names nothing on disk (an offline alias, a hub name) has none: its name, in the
settings, is all there is."""
from __future__ import annotations

import hashlib
from pathlib import Path

from pipeline.outputs.atomic import replace_text
from pipeline.outputs.integrity import HASHES, file_sha256
from pipeline.outputs.manifest import is_complete
from pipeline.runtime import environment


def _cache_dir() -> Path:
    return environment.crild_home() / "digests"


def file_digest(path: Path) -> str:
    path = Path(path).resolve()
    st = path.stat()
    key = hashlib.sha256(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}".encode()).hexdigest()
    remembered = _cache_dir() / key[:2] / key
    try:
        known = remembered.read_text().strip()
        if len(known) == 64:  # anything else was not written by this function: hash again
            return known
    except OSError:
        pass
    digest = file_sha256(path)
    try:
        remembered.parent.mkdir(parents=True, exist_ok=True)
        replace_text(remembered, digest)
    except OSError:  # a read-only home: digests are recomputed each time, nothing else changes
        pass
    return digest


def path_digest(path: str | Path, recursive: bool = False) -> str | None:
    """The digest of a file or folder (with ``recursive``, of the files in its subfolders
    too), or None when ``path`` names nothing on disk."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    if not path.is_dir():
        return None
    if is_complete(path) and (path / HASHES).is_file():
        return "crild:" + file_digest(path / HASHES)
    files = path.rglob("*") if recursive else path.iterdir()
    lines = [f"{f.relative_to(path).as_posix()}\t{file_digest(f)}" for f in sorted(files)
             if f.is_file() and not any(part.startswith(".") for part in f.relative_to(path).parts)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def input_digests(paths: dict[str, str]) -> dict[str, str]:
    """key -> digest for each of ``paths`` (configuration key -> value) that names a file or
    folder; a hub dataset's copy (``task.hub``) by all its files."""
    digests = {key: path_digest(value, recursive=key.endswith(".hub")) for key, value in paths.items()}
    return {key: digest for key, digest in digests.items() if digest is not None}
