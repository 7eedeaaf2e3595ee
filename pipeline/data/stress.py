"""The paper's overfitting stress tests on a training split: few-sample subsets,
class imbalance and symmetric label noise, each driven by the run's seed."""
from __future__ import annotations

import numpy as np

from pipeline.data.sources import Examples
from pipeline.errors import UserError

# Separate streams so that changing one setting does not change the draws of another.
_FEW_SAMPLE, _IMBALANCE, _NOISE = 1, 2, 3


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def few_sample(ex: Examples, n: int, seed: int, key: str = "task") -> Examples:
    """A seeded subset of ``n`` examples. More than there are is refused: the run would train
    on all of them and still be labelled ``few_sample: n`` in its outputs and reports."""
    if n > len(ex):
        raise UserError(f"{key}.few_sample: {n} examples asked for, and the training set has {len(ex)} (after "
                        f"any imbalance subsampling); expected at most {len(ex)}, or no few_sample")
    if n == len(ex):
        return ex
    idx = np.sort(_rng(seed, _FEW_SAMPLE).choice(len(ex), size=n, replace=False))
    return ex.select(idx)


def imbalance(ex: Examples, ratio: float, num_labels: int, seed: int, key: str = "task",
              names=None) -> Examples:
    """Long-tailed subsample: the class of rank i (by size) keeps n_top * ratio**(-i/(C-1)),
    so largest/smallest = ratio. n_top is the largest class's size, or less where a smaller
    class has too few examples for its share: the largest class then gives some up, so that
    the ratio is the one asked for (a note says so), not a larger one without a word."""
    counts = np.bincount(ex.labels, minlength=num_labels)
    present = [c for c in np.argsort(-counts, kind="stable") if counts[c] > 0]
    if len(present) < 2:
        raise UserError(f"{key}.imbalance_ratio: needs a classification training set with at least two classes")
    shares = [ratio ** (-rank / (len(present) - 1)) for rank in range(len(present))]
    n_max = int(counts[present[0]])
    n_top = min(n_max, *(int(np.floor(counts[c] / share)) for c, share in zip(present, shares)))
    rng = _rng(seed, _IMBALANCE)
    keep = []
    for c, share in zip(present, shares):
        members = np.flatnonzero(ex.labels == c)
        target = max(1, min(int(np.floor(n_top * share)), len(members)))
        keep.append(rng.choice(members, size=target, replace=False))
    out = ex.select(np.sort(np.concatenate(keep)))
    if n_top < n_max:
        short = next(c for c, share in zip(present, shares) if np.floor(n_max * share) > counts[c])
        name = names[short] if names else int(short)
        out.notes.append(f"note: {key}.imbalance_ratio {ratio:g}: class '{name}' has {int(counts[short])} "
                         f"training examples, too few for its share at ratio {ratio:g}, so the largest class keeps "
                         f"{n_top} of its {n_max}")
    return out


def label_noise(ex: Examples, ratio: float, num_labels: int, seed: int) -> tuple[Examples, np.ndarray]:
    """Flip each label with probability ``ratio`` to a uniformly drawn *other* class.
    Returns the noisy examples and the mask of flipped positions."""
    rng = _rng(seed, _NOISE)
    flip = rng.random(len(ex)) < ratio
    shift = rng.integers(1, num_labels, size=len(ex))
    out = ex.select(np.arange(len(ex)))
    out.labels = np.where(flip, (ex.labels + shift) % num_labels, ex.labels)
    return out, flip


def apply_settings(ex: Examples, task_cfg, spec, seed: int, key: str = "task") -> Examples:
    """Apply the configured settings in a fixed order: imbalance, few-sample, noise (``key``:
    the task section, for messages)."""
    needs_classes = task_cfg.imbalance_ratio is not None or task_cfg.label_noise > 0
    if needs_classes and spec.regression:
        raise UserError(f"{key}.imbalance_ratio / {key}.label_noise: task {spec.name} is a regression task")
    if task_cfg.imbalance_ratio is not None:
        ex = imbalance(ex, task_cfg.imbalance_ratio, spec.num_labels, seed, key, spec.labels)
    if task_cfg.few_sample is not None:
        ex = few_sample(ex, task_cfg.few_sample, seed, key)
    if task_cfg.label_noise > 0:
        ex, _ = label_noise(ex, task_cfg.label_noise, spec.num_labels, seed)
    return ex
