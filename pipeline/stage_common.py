"""What every stage script shares: argument parsing, task data, engine set-up and the
final weights of an engine."""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import datasets
import numpy as np

from pipeline.batching import Collator
from pipeline.config import RunConfig, TrainConfig, config_hash, load_config
from pipeline.data_sources import available_eval_splits, load_split
from pipeline.distributed import DistInfo, main_rank_first
from pipeline.errors import UserError, cli_entry
from pipeline.synthetic import apply_settings
from pipeline.tasks import TaskSpec, get_task
from pipeline.tokenized import tokenize_cached


def stage_argparser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="run configuration (YAML)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="override configuration values, e.g. stages.teacher.epochs=1")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def stage_main(run: Callable[[RunConfig], int], description: str, argv: Optional[list[str]] = None) -> None:
    """Entry point of ``python|deepspeed pipeline/stageN_*.py --config FILE [overrides]``."""

    @cli_entry
    def main() -> None:
        args = stage_argparser(description).parse_args(argv)
        if args.local_rank is not None:
            os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
        cfg = load_config(args.config, args.overrides)
        sys.exit(run(cfg))

    main()


@dataclass
class TaskData:
    spec: TaskSpec
    train: datasets.Dataset
    eval: dict  # split -> datasets.Dataset
    eval_labels: dict  # split -> np.ndarray
    collate: Collator

    @property
    def main_split(self) -> str:
        return next(iter(self.eval))


def load_task_data(cfg: RunConfig, tokenizer, eval_splits: Optional[list[str]] = None,
                   with_train: bool = True) -> TaskData:
    """Tokenized training split (after the synthetic settings) and evaluation splits.
    Rank 0 tokenizes and caches; the other ranks then read the cache."""
    with main_rank_first():
        return _load_task_data(cfg, tokenizer, eval_splits, with_train)


def _load_task_data(cfg, tokenizer, eval_splits, with_train) -> TaskData:
    spec = get_task(cfg.task.name)
    train_ex, train_ds = None, None
    if with_train:
        train_ex = apply_settings(load_split(cfg.task, spec, "train"), cfg.task, spec, cfg.seed)
        train_ds = tokenize_cached(train_ex, tokenizer, cfg.task.max_length)
    available = available_eval_splits(cfg.task, spec)
    if eval_splits is None:
        eval_splits = available[:1]
    for split in eval_splits:
        if split not in available:
            raise UserError(f"{cfg.source}: split '{split}' is not available for task {spec.name} "
                            f"(available: {', '.join(available) or 'none'})")
    evals, labels = {}, {}
    for split in eval_splits:
        ex = load_split(cfg.task, spec, split)
        if cfg.task.max_eval_examples is not None and len(ex) > cfg.task.max_eval_examples:
            ex = ex.select(range(cfg.task.max_eval_examples))
        evals[split] = tokenize_cached(ex, tokenizer, cfg.task.max_length)
        labels[split] = ex.labels
    collate = Collator(tokenizer.pad_token_id, spec.regression)
    return TaskData(spec, train_ds, evals, labels, collate)


def consolidated_state_dict(engine, ds_cfg: dict) -> Optional[dict]:
    """Full weights of an engine's module (gathered under ZeRO-3; None on ranks > 0 there)."""
    if int(ds_cfg.get("zero_optimization", {}).get("stage", 0)) == 3:
        return engine._zero3_consolidated_16bit_state_dict()
    return engine.module.state_dict()


def stage_hash(cfg: RunConfig, stage: str, extra: dict) -> str:
    """Hash of what determines a stage's training trajectory (for checkpoint checks)."""
    from pipeline.config import settings_dict

    return config_hash({"seed": cfg.seed, "task": settings_dict(cfg.task), "stage": stage,
                        "settings": settings_dict(getattr(cfg.stages, stage)), **extra})


def run_dir(cfg: RunConfig) -> Path:
    return Path(cfg.output_dir)


def log(dist: DistInfo, message: str) -> None:
    if dist.is_main:
        print(f"crild: {message}", file=sys.stderr, flush=True)


def resume(engine, root: Path, dist: DistInfo, config_hash: str, keep: int, fingerprint: str, name: str,
           total_micro_steps: int, extra=None):
    """The stage's checkpoints and the client state to resume from ({} for a fresh start)."""
    from pipeline.checkpointing import Checkpoints

    ckpts = Checkpoints(root, dist, config_hash, keep, fingerprint=fingerprint, extra=extra)
    state = ckpts.load(engine) or {}
    if state:
        log(dist, f"{name}: resuming at micro-step {state['micro_step']} of {total_micro_steps}")
    return ckpts, state


def dev_evaluator(engine, data: TaskData, cfg: TrainConfig, dist: DistInfo, seed: int):
    """Periodic evaluation of the engine's classifier on the main dev split, and on a fixed
    subset of the training split when ``eval_train_examples`` is set (keys ``train/...``)."""
    from pipeline.evaluation import classifier_forward, predict_logits, split_metrics

    split = data.main_split
    splits = {split: (data.eval[split], data.eval_labels[split])}
    if cfg.eval_train_examples and data.train is not None:
        n = min(cfg.eval_train_examples, len(data.train))
        idx = np.sort(np.random.default_rng([seed, 0x7472]).choice(len(data.train), size=n, replace=False))
        subset = data.train.select(idx)
        splits["train"] = (subset, np.asarray(subset["label"]))

    def evaluate() -> dict:
        forward = classifier_forward(engine, dist.device)
        metrics = {}
        for name, (ds, labels) in splits.items():
            logits = predict_logits(forward, ds, data.collate, cfg.eval_batch_size, dist)
            metrics.update({f"{name}/{k}": v for k, v in split_metrics(data.spec, logits, labels).items()})
        return metrics

    return evaluate


def evaluations(result: dict) -> dict:
    """The evaluation part of train_results.json (best dev labelled as the optimistic pick)."""
    return {"last": (result["evals"] or [{}])[-1], "best_dev_optimistic": result["best"], "evals": result["evals"]}
