"""Digests of the files and folders a configuration names (data folders, model folders,
vectors files), so that a stage's fingerprint changes when what it reads changes, not only
when its settings do: a training file edited in place, or a teacher folder retrained, would
otherwise leave the old output looking complete and current.

A file's digest is its content's SHA-256, remembered under ``$CRILD_HOME/digests`` by path,
size, modification time and inode, so an unchanged file costs one ``stat``. A folder's is
the digest of its top-level files (model and data folders keep what crild reads there), or,
for a complete folder crild wrote, of its recorded content hashes (no file read twice). A
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


def path_digest(path: str | Path) -> str | None:
    """The digest of a file or folder, or None when ``path`` names nothing on disk."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    if not path.is_dir():
        return None
    if is_complete(path) and (path / HASHES).is_file():
        return "crild:" + file_digest(path / HASHES)
    lines = [f"{f.name}\t{file_digest(f)}" for f in sorted(path.iterdir())
             if f.is_file() and not f.name.startswith(".")]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def input_digests(paths: dict[str, str]) -> dict[str, str]:
    """key -> digest for each of ``paths`` (configuration key -> value) that names a file or
    folder."""
    digests = {key: path_digest(value) for key, value in paths.items()}
    return {key: digest for key, digest in digests.items() if digest is not None}
