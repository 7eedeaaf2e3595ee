"""Stage outputs are written to a temporary folder and renamed into place when complete,
with the resolved configuration, the content hashes and the manifest added last: nothing
half-written ever looks complete."""
from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import UserError
from pipeline.outputs.integrity import HASHES, problems, write_hashes
from pipeline.outputs.manifest import MANIFEST, RESOLVED_CONFIG, is_complete, read_manifest
from pipeline.outputs.ownership import FOREIGN, NEW, OURS, folder
from pipeline.runtime.faults import crash_point
from pipeline.runtime.rank_zero import decided_by_main
from pipeline.schema.hashing import dump_yaml

# what atomic_output writes into every output folder itself (in place: never link these in)
BOOKKEEPING_FILES = (RESOLVED_CONFIG, HASHES, MANIFEST)


@contextmanager
def atomic_output(final: Path, cfg, stage: str, fingerprint: str):
    """Yield a temporary folder; on success add the resolved config, the hashes and a
    manifest recording ``fingerprint`` (what the output was made from), then replace
    ``final`` by it. On failure nothing that looks complete is left behind. Only a folder
    that this stage wrote before is ever replaced; temporary folders a killed writer left
    (the caller holds the run lock, so no live writer) are removed."""
    final = Path(final)
    check_replaceable(final, stage)
    for stale in final.parent.glob(f".{final.name}.tmp*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f".{final.name}.tmp{os.getpid()}"
    tmp.mkdir(parents=True)
    try:
        yield tmp
        (tmp / RESOLVED_CONFIG).write_text(dump_yaml(cfg))
        write_hashes(tmp)
        # the ranks that made it: a training stage's global batch and data order follow them
        (tmp / MANIFEST).write_text(json.dumps({"stage": stage, "status": "complete", "fingerprint": fingerprint,
                                                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                "ranks": int(os.environ.get("WORLD_SIZE") or 1)}, indent=1))
        crash_point("output")
        if final.exists():
            old = final.parent / f".{final.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_replaceable(final: Path, stage: str) -> None:
    """``final`` does not exist, or is a folder crild's ``stage`` wrote: nothing crild did
    not write is ever replaced or deleted."""
    found = folder(final, lambda path: (read_manifest(path) or {}).get("stage") == stage)
    if found.state in (NEW, OURS):
        return
    manifest = read_manifest(final) if found.state == FOREIGN else None
    if manifest:
        by = f"was written by crild's {manifest.get('stage')} stage"
    elif found.state == FOREIGN and (final / MANIFEST).is_file():
        by = f"its {MANIFEST} cannot be read, so crild cannot tell that its {stage} stage wrote it"
    else:
        by = "was not written by crild"
    raise UserError(f"{final}: already exists and {by}; crild replaces only what its {stage} stage wrote "
                    f"there: move it away or choose another output_dir or output name")


def verified(path: Path, what: str) -> Path:
    """``path`` if it is a complete output whose files match their recorded hashes. With
    several ranks, rank 0 reads the files and tells the others (a collective call)."""
    return decided_by_main(lambda: _verified(path, what))


def _verified(path: Path, what: str) -> Path:
    if not is_complete(path):
        raise UserError(f"{path}: {what} is not complete")
    bad = problems(path)
    if bad:
        raise UserError(f"{what} failed its integrity check: {bad[0]}" +
                        (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "") + "; rerun the stage that wrote it")
    return Path(path)


def write_json(path: Path, data) -> None:
    Path(path).write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")


@contextmanager
def renamed_into_place(final: Path):
    """Yield a temporary path beside ``final`` for a file or folder to be written there; it
    is renamed to ``final`` when the block succeeds, and removed when it fails (a full disk,
    an error), so nothing half-written is left under either name to be read or to take the
    space a rerun needs. A file replaces ``final``; a folder where another writer (a rank,
    a run sharing the cache) put the same folder first is dropped, and theirs kept."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    try:
        yield tmp
        try:
            tmp.replace(final)
        except OSError:
            if not (tmp.is_dir() and final.is_dir()):
                raise
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def replace_text(path: str | Path, text: str) -> None:
    """A single file written whole or not at all: a reader (or a kill) never sees it half
    written, and two writers of the same content do not interleave. Its folder is made if
    need be (a tool's ``--json`` may name one not made yet)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with renamed_into_place(path) as tmp:
        tmp.write_text(text)


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the file system allows one (no second copy of the weights on
    disk), a copy otherwise. Only files that are never written again may be linked: an
    output folder is replaced whole, its bookkeeping written anew."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
