"""Stage outputs: written to a temporary folder and renamed into place when complete,
with a manifest recording what produced them."""
from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from pipeline.config import RunConfig, dump_yaml
from pipeline.errors import UserError
from pipeline.faults import crash_point
from pipeline.integrity import HASHES, problems, write_hashes

MANIFEST = "crild_stage.json"
RESOLVED_CONFIG = "config.resolved.yaml"
# what atomic_output writes into every output folder itself (in place: never link these in)
BOOKKEEPING_FILES = (RESOLVED_CONFIG, HASHES, MANIFEST)


def is_complete(path: Path) -> bool:
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("status") == "complete"
    except json.JSONDecodeError:
        return False


@contextmanager
def atomic_output(final: Path, cfg: RunConfig, stage: str):
    """Yield a temporary folder; on success add the resolved config and a manifest, then
    replace ``final`` by it. On failure nothing that looks complete is left behind. The
    manifest's fingerprint lets the runner skip the stage when nothing it depends on changed."""
    from pipeline.runner import stage_fingerprint

    final = Path(final)
    tmp = final.parent / f".{final.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        (tmp / RESOLVED_CONFIG).write_text(dump_yaml(cfg))
        write_hashes(tmp)
        (tmp / MANIFEST).write_text(json.dumps({"stage": stage, "status": "complete",
                                                "fingerprint": stage_fingerprint(cfg, stage),
                                                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1))
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


def verified(path: Path, what: str) -> Path:
    """``path`` if it is a complete output whose files match their recorded hashes. With
    several ranks, rank 0 reads the files and tells the others (a collective call)."""
    from pipeline.distributed import decided_by_main

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
