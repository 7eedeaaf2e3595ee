"""Supplementary-task inputs for ILD: examples of other datasets, drawn in proportion to the
target task's training set, with their labels dropped (ILD does not use them).

A supplement must not be the target's own labelled data: when a supplementary dataset is
the target task's own training file (SNLI few-sample with other SNLI pairs as the
supplement), the target's training rows are left out before drawing."""
from __future__ import annotations

from typing import Optional

import datasets
import numpy as np

from pipeline.data.sources import UNLABELLED, Examples, load_split, resolve_source
from pipeline.data.stress import apply_settings
from pipeline.data.tasks import task_spec
from pipeline.data.tokenized import tokenize_cached
from pipeline.errors import UserError


def _same_file(cfg, sup_task) -> bool:
    """The supplementary dataset reads the target task's own training file."""
    source = ("name", "hub", "hub_config", "hub_revision")
    if [getattr(sup_task, k) for k in source] != [getattr(cfg.task, k) for k in source]:
        return False
    spec = task_spec(sup_task)
    return resolve_source(sup_task, spec) == resolve_source(cfg.task, spec)


def supplementary_data(cfg, tokenizer, target: Examples, regression: bool) -> Optional[datasets.Dataset]:
    """``ratio`` examples per target training example (``target``) of each
    ``stages.distill.supplementary`` dataset, drawn with the run's seed, none of them one of
    the target's training rows; None when there are none."""
    parts = []
    for i, sup in enumerate(cfg.stages.distill.supplementary):
        where = f"stages.distill.supplementary[{i}].task"
        spec = task_spec(sup.task)
        ex = apply_settings(load_split(sup.task, spec, "train", where), sup.task, spec, cfg.seed, where)
        if _same_file(cfg, sup.task):
            ex = ex.select(np.flatnonzero(~np.isin(ex.ids, target.ids)))
            if len(ex) == 0:
                raise UserError(f"{where}: the target's own training set, with no other rows; expected a "
                                f"dataset with inputs the target does not train on")
        n = min(len(ex), max(1, int(round(sup.ratio * len(target)))))
        idx = np.sort(np.random.default_rng([cfg.seed, 0x5355, i]).choice(len(ex), size=n, replace=False))
        ex = ex.select(idx)
        unlabelled = Examples(ex.text_a, ex.text_b, np.full(len(ex), UNLABELLED,
                                                             dtype=np.float32 if regression else np.int64),
                              ex.source, ex.ids)
        parts.append(tokenize_cached(unlabelled, tokenizer, cfg.task.max_length))
    return datasets.concatenate_datasets(parts) if parts else None
