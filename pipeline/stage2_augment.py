"""Stage 2: TinyBERT-style augmented training data, sharded and resumable.

    deepspeed --num_gpus 2 pipeline/stage2_augment.py --config jobs/demo.yaml
    python pipeline/stage2_augment.py --config jobs/demo.yaml stages.augment.copies=4

The training split (after the synthetic settings) is cut into ``num_shards`` contiguous
shards; rank r of W (or Slurm array task r of W) takes shards r, r+W, ...; each shard is
written atomically under ``<output_dir>/augmented.shards``, so a killed run redoes only
the shards that were not complete. When every shard is there they are merged, in order, into
``<output_dir>/augmented`` (an Arrow dataset: text_a, text_b, label, source_id, copy_index).
Random draws depend on the seed and the example only, so the merged result is the same for
any number of shards or ranks. Optionally the teacher's logits on the merged set are stored
where the KD phase looks for them.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the package, not this folder's modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import datasets  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.augment import AugmentParams, BatchedAugmenter, MaskedLM, load_vectors  # noqa: E402
from pipeline.config import RunConfig  # noqa: E402
from pipeline.data_sources import Examples, load_split  # noqa: E402
from pipeline.faults import crash_point  # noqa: E402
from pipeline.distributed import DistInfo, barrier, init_distributed, seed_everything  # noqa: E402
from pipeline.errors import UserError  # noqa: E402
from pipeline.models import load_tokenizer, quiet_libraries, resolve_model  # noqa: E402
from pipeline.outputs import MANIFEST, atomic_output, is_complete, verified  # noqa: E402
from pipeline.progress import Progress  # noqa: E402
from pipeline.runner import stage_fingerprint  # noqa: E402
from pipeline.stage_common import log, run_dir, stage_main  # noqa: E402
from pipeline.synthetic import apply_settings  # noqa: E402
from pipeline.tasks import get_task  # noqa: E402

STAGE = "augment"
EXAMPLES_PER_CALL = 64  # examples whose candidates are computed together


def verified_augmented(folder: Path) -> Path:
    """The augmented data folder, complete and intact (collective: rank 0 checks)."""
    if not is_complete(folder):
        raise UserError(f"{folder}: no complete augmented data; run the augment stage first")
    return verified(folder, "the augmented data")


def augmented_examples(folder: Path) -> Examples:
    """The merged augmented set as Examples (the distillation stage reads it the same way,
    so tokenized caches and teacher logits are shared); ``folder`` as verified_augmented
    returned it."""
    ds = datasets.load_from_disk(str(folder / "data"))
    text_b = ds["text_b"]
    return Examples(list(ds["text_a"]), None if all(b is None for b in text_b) else list(text_b),
                    np.asarray(ds["label"]), str(folder))


def shard_task() -> tuple[int, int] | None:
    """(index, count) of a Slurm array task, if this is one."""
    if "SLURM_ARRAY_TASK_ID" in os.environ and "SLURM_ARRAY_TASK_COUNT" in os.environ:
        return int(os.environ["SLURM_ARRAY_TASK_ID"]) - int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0")), \
            int(os.environ["SLURM_ARRAY_TASK_COUNT"])
    return None


def _shard_done(folder: Path, fingerprint: str) -> bool:
    manifest = folder / MANIFEST
    return manifest.is_file() and json.loads(manifest.read_text()).get("fingerprint") == fingerprint


def write_shard(folder: Path, rows: dict, fingerprint: str) -> None:
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    datasets.Dataset.from_dict(rows, features=FEATURES).save_to_disk(str(tmp / "data"))
    (tmp / MANIFEST).write_text(json.dumps({"status": "complete", "fingerprint": fingerprint,
                                            "examples": len(set(rows["source_id"])), "rows": len(rows["text_a"])}))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    crash_point("shard")


FEATURES = datasets.Features({"text_a": datasets.Value("string"), "text_b": datasets.Value("string"),
                              "label": datasets.Value("float32"), "source_id": datasets.Value("int64"),
                              "copy_index": datasets.Value("int32")})


def augment_shard(augmenter, ex: Examples, indices: np.ndarray, progress: Progress) -> dict:
    rows = {"text_a": [], "text_b": [], "label": [], "source_id": [], "copy_index": []}
    for start in range(0, len(indices), EXAMPLES_PER_CALL):
        part = indices[start:start + EXAMPLES_PER_CALL]
        a = [ex.text_a[i] for i in part]
        b = [ex.text_b[i] for i in part] if ex.text_b is not None else None
        for i, copies in zip(part, augmenter.augment(a, b, ex.ids[part])):
            for text_a, text_b, copy in copies:
                rows["text_a"].append(text_a)
                rows["text_b"].append(text_b)
                rows["label"].append(float(ex.labels[i]))
                rows["source_id"].append(int(ex.ids[i]))
                rows["copy_index"].append(copy)
        progress.update(len(part))
    return rows


def merge(shard_dirs: list[Path], cfg: RunConfig, regression: bool) -> None:
    parts = [datasets.load_from_disk(str(d / "data")) for d in shard_dirs]
    merged = datasets.concatenate_datasets(parts)
    if not regression:
        merged = merged.cast_column("label", datasets.Value("int64"))
    with atomic_output(run_dir(cfg) / "augmented", cfg, STAGE) as tmp:
        merged.save_to_disk(str(tmp / "data"))
        (tmp / "summary.json").write_text(json.dumps({
            "examples": len(set(merged["source_id"])), "rows": len(merged), "shards": len(shard_dirs)}, indent=1))


def store_teacher_logits(cfg: RunConfig, dist: DistInfo, tokenizer) -> None:
    """The teacher's logits on the augmented set, where the KD phase looks for them."""
    from pipeline.batching import Collator
    from pipeline.evaluation import classifier_forward
    from pipeline.models import build_classifier
    from pipeline.stage3_distill import teacher_folder
    from pipeline.teacher_cache import cached_teacher_logits, teacher_fingerprint
    from pipeline.tokenized import tokenize_cached

    spec = get_task(cfg.task.name)
    folder = teacher_folder(cfg)
    ex = augmented_examples(verified_augmented(run_dir(cfg) / "augmented"))
    ds = tokenize_cached(ex, tokenizer, cfg.task.max_length)
    teacher = build_classifier(str(folder), spec, "teacher").to(dist.device).eval()
    cached_teacher_logits(classifier_forward(teacher, dist.device), teacher_fingerprint(folder), ds,
                          Collator(tokenizer.pad_token_id, spec.regression), cfg.stages.distill.kd.eval_batch_size,
                          dist)
    log(dist, f"{STAGE}: teacher logits stored for {len(ds)} augmented examples")


def run(cfg: RunConfig) -> int:
    quiet_libraries()
    dist = init_distributed()
    seed_everything(cfg.seed)
    acfg = cfg.stages.augment
    spec = get_task(cfg.task.name)
    fingerprint = stage_fingerprint(cfg, STAGE)
    tokenizer = load_tokenizer(resolve_model(cfg.student.backbone, "student.backbone",
                                             need_weights=cfg.student.init != "random"), "student.backbone")
    ex = apply_settings(load_split(cfg.task, spec, "train"), cfg.task, spec, cfg.seed)
    vectors = load_vectors(acfg.vectors.path, acfg.vectors.vocab)
    mlm = MaskedLM(acfg.masked_lm, dist.device) if acfg.masked_lm else None
    if mlm is not None and mlm.tokenizer.get_vocab() != tokenizer.get_vocab():
        raise UserError(f"stages.augment.masked_lm: '{acfg.masked_lm}' has a different vocabulary from "
                        f"student.backbone '{cfg.student.backbone}'")
    params = AugmentParams(acfg.copies, acfg.replace_prob, acfg.candidates)
    augmenter = BatchedAugmenter(tokenizer, vectors, mlm, params, cfg.seed, batch_size=acfg.batch_size)

    shards_root = run_dir(cfg) / "augmented.shards"
    shards_root.mkdir(parents=True, exist_ok=True)
    bounds = np.array_split(np.arange(len(ex)), acfg.num_shards)
    names = [shards_root / f"shard-{k:05d}-of-{acfg.num_shards:05d}" for k in range(acfg.num_shards)]
    worker, workers = shard_task() or (dist.rank, dist.world_size)
    mine = [k for k in range(worker, acfg.num_shards, workers) if not _shard_done(names[k], fingerprint)]
    progress = Progress(sum(len(bounds[k]) for k in mine), 0, STAGE, enabled=dist.is_main, unit="examples")
    log(dist, f"{STAGE}: {len(ex)} examples in {acfg.num_shards} shards; this worker has {len(mine)} to do")
    for k in mine:
        write_shard(names[k], augment_shard(augmenter, ex, bounds[k], progress), fingerprint)
    progress.close()
    barrier()
    if dist.is_main:
        missing = [n.name for n in names if not _shard_done(n, fingerprint)]
        if missing:  # other array tasks still running: the last one to finish merges
            log(dist, f"{STAGE}: {len(missing)} shard(s) not complete yet; merge happens when they are")
        else:
            merge(names, cfg, spec.regression)
            log(dist, f"{STAGE}: saved {run_dir(cfg) / 'augmented'}")
    barrier()
    if acfg.teacher_logits and is_complete(run_dir(cfg) / "augmented"):
        store_teacher_logits(cfg, dist, tokenizer)
    return 0


if __name__ == "__main__":
    stage_main(run, "Generate TinyBERT-style augmented training data.")
