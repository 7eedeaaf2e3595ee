"""Evaluation during training: the engine's classifier scored on the main dev split (and on
a fixed training subset, for the train-dev gap), and what train_results.json keeps of it."""
from __future__ import annotations

from typing import Callable

import numpy as np

from pipeline.evaluation.predict import classifier_forward, predict_logits, split_metrics
from pipeline.runtime.distributed import DistInfo


def dev_evaluator(engine, data, cfg, dist: DistInfo, seed: int) -> Callable[[], dict]:
    """Metrics ``<split>/<metric>`` of the main dev split and, when ``eval_train_examples``
    is set, ``train/<metric>`` of that many seeded training examples."""
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
