"""The augmented-data format that stage 2 writes and the distillation phases read.

Stage 2 writes ``<output_dir>/augmented.shards/shard-K-of-N`` (each atomically, with a
manifest), then merges them in order into ``<output_dir>/augmented``: an Arrow dataset with
text_a, text_b, label, source_id (the example's position in the training split) and
copy_index (0: the original).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import numpy as np

from pipeline.data.sources import Examples
from pipeline.errors import UserError
from pipeline.outputs.atomic import atomic_output, renamed_into_place, verified
from pipeline.outputs.manifest import MANIFEST, is_complete, recorded_fingerprint
from pipeline.runtime.faults import crash_point

FEATURES = datasets.Features({"text_a": datasets.Value("string"), "text_b": datasets.Value("string"),
                              "label": datasets.Value("float32"), "source_id": datasets.Value("int64"),
                              "copy_index": datasets.Value("int32")})
SHARDS = "augmented.shards"
MERGED = "augmented"


def shard_folders(run_dir: Path, num_shards: int) -> list[Path]:
    root = Path(run_dir) / SHARDS
    return [root / f"shard-{k:05d}-of-{num_shards:05d}" for k in range(num_shards)]


def shard_done(folder: Path, fingerprint: str) -> bool:
    return recorded_fingerprint(folder) == fingerprint


def write_shard(folder: Path, rows: dict, fingerprint: str) -> None:
    """One shard's rows, renamed into place when complete."""
    for stale in folder.parent.glob(f".{folder.name}.tmp*"):  # left by a killed writer of this shard
        shutil.rmtree(stale, ignore_errors=True)
    with renamed_into_place(folder) as tmp:
        datasets.Dataset.from_dict(rows, features=FEATURES).save_to_disk(str(tmp / "data"))
        (tmp / MANIFEST).write_text(json.dumps({
            "status": "complete", "fingerprint": fingerprint, "examples": len(set(rows["source_id"])),
            "rows": len(rows["text_a"])}))
        shutil.rmtree(folder, ignore_errors=True)  # a shard of another fingerprint, once this one is whole
    crash_point("shard")


def merge_shards(shard_dirs: list[Path], final: Path, cfg, fingerprint: str, regression: bool) -> None:
    """Every shard, in order, as the stage's output."""
    parts = [datasets.load_from_disk(str(d / "data")) for d in shard_dirs]
    merged = datasets.concatenate_datasets(parts)
    if not regression:
        merged = merged.cast_column("label", datasets.Value("int64"))
    with atomic_output(final, cfg, "augment", fingerprint) as tmp:
        merged.save_to_disk(str(tmp / "data"))
        (tmp / "summary.json").write_text(json.dumps({
            "examples": len(set(merged["source_id"])), "rows": len(merged), "shards": len(shard_dirs)}, indent=1))


def require_augmented(folder: Path) -> None:
    """Stop before any training when a phase will need stage 2's output and it is not there."""
    if not is_complete(folder):
        raise UserError(f"{folder}: no complete augmented data; run the augment stage first")


def verified_augmented(folder: Path) -> Path:
    """The augmented data folder, complete and intact (collective: rank 0 checks)."""
    require_augmented(folder)
    return verified(folder, "the augmented data")


def augmented_examples(folder: Path) -> Examples:
    """The merged augmented set as Examples (the distillation stage reads it the same way,
    so tokenized caches and teacher logits are shared); ``folder`` as verified_augmented
    returned it."""
    ds = datasets.load_from_disk(str(folder / "data"))
    text_b = ds["text_b"]
    return Examples(list(ds["text_a"]), None if all(b is None for b in text_b) else list(text_b),
                    np.asarray(ds["label"]), str(folder))
