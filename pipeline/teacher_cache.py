"""The KD phase's teacher logits: computed once per (teacher, tokenized dataset), stored
beside the dataset and reused by every epoch and every later run."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pipeline.distributed import DistInfo, barrier
from pipeline.evaluation import predict_logits


def teacher_fingerprint(folder: str | Path) -> str:
    """Content hash of a model folder's config and weights."""
    h = hashlib.sha256()
    folder = Path(folder)
    for name in ("config.json", "model.safetensors", "model.safetensors.index.json"):
        p = folder / name
        if p.is_file():
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 24), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def dataset_dir(ds) -> Path:
    return Path(ds.cache_files[0]["filename"]).parent


def cached_teacher_logits(forward, teacher_id: str, ds, collate, batch_size: int, dist: DistInfo) -> torch.Tensor:
    """(len(ds), num_labels) float32 teacher logits on the clean training inputs."""
    path = dataset_dir(ds) / f"teacher_logits-{teacher_id}.safetensors"
    if not path.is_file():
        logits = predict_logits(forward, ds, collate, batch_size, dist)  # sharded over ranks
        if dist.is_main:
            tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
            save_file({"logits": torch.from_numpy(logits).float()}, str(tmp))
            tmp.rename(path)
        barrier()
    return load_file(str(path))["logits"]
