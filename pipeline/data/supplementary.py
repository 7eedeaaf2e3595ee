"""Supplementary-task inputs for ILD: examples of other datasets, drawn in proportion to the
target task's training set, with their labels dropped (ILD does not use them)."""
from __future__ import annotations

from typing import Optional

import datasets
import numpy as np

from pipeline.data.sources import UNLABELLED, Examples, load_split
from pipeline.data.stress import apply_settings
from pipeline.data.tasks import get_task
from pipeline.data.tokenized import tokenize_cached


def supplementary_data(cfg, tokenizer, n_target: int, regression: bool) -> Optional[datasets.Dataset]:
    """``ratio`` examples per target example of each ``stages.distill.supplementary``
    dataset, drawn with the run's seed; None when there are none."""
    parts = []
    for i, sup in enumerate(cfg.stages.distill.supplementary):
        spec = get_task(sup.task.name)
        ex = apply_settings(load_split(sup.task, spec, "train", f"stages.distill.supplementary[{i}].task"),
                            sup.task, spec, cfg.seed)
        n = min(len(ex), max(1, int(round(sup.ratio * n_target))))
        idx = np.sort(np.random.default_rng([cfg.seed, 0x5355, i]).choice(len(ex), size=n, replace=False))
        ex = ex.select(idx)
        unlabelled = Examples(ex.text_a, ex.text_b, np.full(len(ex), UNLABELLED,
                                                             dtype=np.float32 if regression else np.int64),
                              ex.source, ex.ids)
        parts.append(tokenize_cached(unlabelled, tokenizer, cfg.task.max_length))
    return datasets.concatenate_datasets(parts) if parts else None
