"""Content hashes of output folders and checkpoints: written when a folder is complete,
checked before it is trusted, so a truncated or corrupted file is reported instead of used."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

HASHES = "content_hashes.json"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_folder(folder: Path, skip: tuple[str, ...] = ()) -> dict:
    """{relative path: {"sha256", "size"}} of every file under ``folder``."""
    folder = Path(folder)
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in skip or rel == HASHES:
            continue
        out[rel] = {"sha256": file_sha256(path), "size": path.stat().st_size}
    return out


def write_hashes(folder: Path, skip: tuple[str, ...] = ()) -> None:
    (Path(folder) / HASHES).write_text(json.dumps(hash_folder(folder, skip), indent=1))


def problems(folder: Path, expected: dict | None = None) -> list[str]:
    """What is wrong with ``folder`` against its recorded hashes (empty: all good).
    A folder without recorded hashes is reported as unverifiable."""
    folder = Path(folder)
    if expected is None:
        path = folder / HASHES
        if not path.is_file():
            return [f"{folder}: no {HASHES} (written by an interrupted or older run)"]
        try:
            expected = json.loads(path.read_text())
        except json.JSONDecodeError:
            return [f"{path}: corrupted"]
    out = []
    for rel, want in expected.items():
        p = folder / rel
        if not p.is_file():
            out.append(f"{p}: missing")
        elif p.stat().st_size != want["size"]:
            out.append(f"{p}: {p.stat().st_size} bytes, expected {want['size']} (truncated?)")
        elif file_sha256(p) != want["sha256"]:
            out.append(f"{p}: content differs from its recorded hash (corrupted)")
    return out
