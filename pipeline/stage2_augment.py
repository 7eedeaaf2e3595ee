"""Stage 2: TinyBERT-style augmented training data, sharded and resumable.

    deepspeed --num_gpus 2 pipeline/stage2_augment.py --config jobs/demo.yaml
    python pipeline/stage2_augment.py --config jobs/demo.yaml stages.augment.copies=4

The training split (after the stress settings) is cut into ``num_shards`` contiguous shards;
rank r of W (or Slurm array task r of W) takes shards r, r+W, ...; each shard is written
atomically under ``<output_dir>/augmented.shards``, so a killed run redoes only the shards
that were not complete. When every shard is there they are merged, in order, into
``<output_dir>/augmented`` (format: ``pipeline/data/augmented.py``). Random draws depend on
the seed and the example only, so the merged result is the same for any number of shards or
ranks. Optionally the teacher's logits on the merged set are stored where the KD phase looks
for them.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the package, not this folder's modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np

from pipeline.config import RunConfig
from pipeline.data.augment import AugmentParams, BatchedAugmenter, MaskedLM, augment_rows, load_vectors
from pipeline.data.augmented import (
    MERGED,
    augmented_examples,
    merge_shards,
    shard_done,
    shard_folders,
    verified_augmented,
    write_shard,
)
from pipeline.data.batching import Collator
from pipeline.data.sources import load_split
from pipeline.data.stress import apply_settings
from pipeline.data.tasks import task_spec
from pipeline.data.tokenized import tokenize_cached, tokenizer_fingerprint
from pipeline.distill.teacher import cached_teacher_logits, kd_teacher_dtype, teacher_fingerprint, teacher_folder
from pipeline.errors import EXIT_PREEMPTED, UserError
from pipeline.evaluation.predict import classifier_forward
from pipeline.models.loading import build_classifier, load_tokenizer, quiet_libraries, resolve_model
from pipeline.outputs.manifest import is_complete
from pipeline.runtime.distributed import (
    DistInfo,
    any_rank,
    array_task,
    barrier,
    init_distributed,
    seed_everything,
    set_tf32,
)
from pipeline.runtime.progress import Progress, counted, log
from pipeline.stage_cli import stage_main
from pipeline.stages import forced, stage_fingerprint
from pipeline.training.stop import StopRequest

STAGE = "augment"


def store_teacher_logits(cfg: RunConfig, dist: DistInfo, tokenizer) -> None:
    """The teacher's logits on the augmented set, as the KD phase would compute them and where
    it looks for them: in the teacher's own tokens where it tokenizes otherwise than the
    student (``tokenizer``), and in the precision the teacher will run in there, which names
    the cache (the KD phase would otherwise not find them, and run the teacher again)."""
    spec = task_spec(cfg.task)
    distill = cfg.stages.distill
    folder, _ = teacher_folder(cfg)
    teacher_tokenizer = load_tokenizer(str(folder), "stages.distill.teacher_model")
    if tokenizer_fingerprint(teacher_tokenizer) != tokenizer_fingerprint(tokenizer):
        tokenizer = teacher_tokenizer
    dtype = kd_teacher_dtype(cfg)
    ex = augmented_examples(verified_augmented(Path(cfg.output_dir) / MERGED))
    ds = tokenize_cached(ex, tokenizer, cfg.task.max_length)
    teacher = build_classifier(str(folder), spec, "teacher", trained=True).to(dist.device, dtype).eval()
    cached_teacher_logits(classifier_forward(teacher, dist.device), teacher_fingerprint(folder), ds,
                          Collator(tokenizer.pad_token_id, spec.regression), distill.kd.eval_batch_size, dist, dtype)
    log(dist, f"{STAGE}: teacher logits stored for {len(ds)} augmented examples")


def build_augmenter(cfg: RunConfig, tokenizer, dist: DistInfo) -> BatchedAugmenter:
    augment_cfg = cfg.stages.augment
    vectors = load_vectors(augment_cfg.vectors.path, augment_cfg.vectors.vocab)
    mlm = MaskedLM(augment_cfg.masked_lm, dist.device) if augment_cfg.masked_lm else None
    if mlm is not None and mlm.tokenizer.get_vocab() != tokenizer.get_vocab():
        raise UserError(f"stages.augment.masked_lm: '{augment_cfg.masked_lm}' has a different vocabulary from "
                        f"student.backbone '{cfg.student.backbone}'")
    params = AugmentParams(augment_cfg.copies, augment_cfg.replace_prob, augment_cfg.candidates)
    return BatchedAugmenter(tokenizer, vectors, mlm, params, cfg.seed, batch_size=augment_cfg.batch_size)


def run(cfg: RunConfig, stop: StopRequest | None = None) -> int:
    """Augment the training set shard by shard. A stop request (Ctrl-C to crild run, Slurm's
    SIGTERM) is answered after the shard under way: the complete shards stay, the stage
    exits with EXIT_PREEMPTED, and the same command does the rest."""
    quiet_libraries()
    dist = init_distributed()
    seed_everything(cfg.seed)
    set_tf32(cfg.tf32)
    augment_cfg = cfg.stages.augment
    out = Path(cfg.output_dir)
    spec = task_spec(cfg.task)
    fingerprint = stage_fingerprint(cfg, STAGE)
    tokenizer = load_tokenizer(resolve_model(cfg.student.backbone, "student.backbone",
                                             need_weights=cfg.student.init != "random"), "student.backbone")
    ex = apply_settings(load_split(cfg.task, spec, "train"), cfg.task, spec, cfg.seed)
    augmenter = build_augmenter(cfg, tokenizer, dist)

    bounds = np.array_split(np.arange(len(ex)), augment_cfg.num_shards)
    names = shard_folders(out, augment_cfg.num_shards)
    names[0].parent.mkdir(parents=True, exist_ok=True)
    worker, workers = array_task() or (dist.rank, dist.world_size)
    mine = [k for k in range(worker, augment_cfg.num_shards, workers) if forced() or not shard_done(names[k], fingerprint)]
    progress = Progress(sum(len(bounds[k]) for k in mine), 0, STAGE, enabled=dist.is_main, unit="examples")
    log(dist, f"{STAGE}: {len(ex)} examples in {augment_cfg.num_shards} shards; this worker has {len(mine)} to do")
    stop = stop or StopRequest(output_dir=cfg.output_dir)
    left = list(mine)
    while left and not stop.asked(len(mine) - len(left)):
        k = left.pop(0)
        write_shard(names[k], augment_rows(augmenter, ex, bounds[k], progress), fingerprint)
    progress.close()
    if any_rank(bool(left)):  # every rank stops, whether or not its own shards were done
        log(dist, f"{STAGE}: stopped on request; the complete shards are kept, run again to do the rest")
        return EXIT_PREEMPTED
    barrier()
    if dist.is_main:
        missing = [n.name for n in names if not shard_done(n, fingerprint)]
        if missing:  # other array tasks still running: the last one to finish merges
            log(dist, f"{STAGE}: {counted(len(missing), 'shard')} not complete yet; merge happens when they are")
        else:
            merge_shards(names, out / MERGED, cfg, fingerprint, spec.regression)
            log(dist, f"{STAGE}: saved {out / MERGED}")
    barrier()
    if augment_cfg.teacher_logits and is_complete(out / MERGED):
        store_teacher_logits(cfg, dist, tokenizer)
    return 0


if __name__ == "__main__":
    stage_main(run, STAGE)
