"""Task metrics (scikit-learn / scipy) computed from logits and labels; the number each
ranks models by is ``pipeline.data.tasks.MAIN_METRIC``."""
from __future__ import annotations

from typing import Callable

import numpy as np

# scikit-learn and scipy.stats are imported where a metric is computed: they cost half a second,
# which every process importing this module (the CLI's checks among them) would pay

MetricFn = Callable[[np.ndarray, np.ndarray], dict]


def accuracy(preds: np.ndarray, labels: np.ndarray) -> dict:
    return {"accuracy": float((preds == labels).mean())}


def accuracy_f1(preds: np.ndarray, labels: np.ndarray) -> dict:
    from sklearn.metrics import f1_score

    return {**accuracy(preds, labels), "f1": float(f1_score(labels, preds, zero_division=0))}


def macro_f1(preds: np.ndarray, labels: np.ndarray) -> dict:
    """F1 averaged over the classes, each counting alike: for several classes of unequal
    size, where accuracy rewards predicting the largest."""
    from sklearn.metrics import f1_score

    return {"macro_f1": float(f1_score(labels, preds, average="macro", zero_division=0)), **accuracy(preds, labels)}


def matthews(preds: np.ndarray, labels: np.ndarray) -> dict:
    from sklearn.metrics import matthews_corrcoef

    return {"matthews_corr": float(matthews_corrcoef(labels, preds))}


def pearson_spearman(preds: np.ndarray, labels: np.ndarray) -> dict:
    from scipy.stats import pearsonr, spearmanr

    # constant predictions (or labels): correlation undefined, scored as none. Compared exactly, as
    # scipy does: float32 scores all equal have a standard deviation of a few 1e-9, not 0, which let
    # them through to scipy's NaN
    if len(preds) < 2 or (preds == preds[0]).all() or (labels == labels[0]).all():
        return {"pearson": 0.0, "spearman": 0.0}
    return {"pearson": float(pearsonr(preds, labels)[0]), "spearman": float(spearmanr(preds, labels)[0])}


METRICS: dict[str, MetricFn] = {
    "accuracy": accuracy,
    "accuracy_f1": accuracy_f1,
    "macro_f1": macro_f1,
    "matthews": matthews,
    "pearson_spearman": pearson_spearman,
}


def predictions_from_logits(logits: np.ndarray, regression: bool) -> np.ndarray:
    return logits[:, 0] if regression else logits.argmax(axis=-1)


def compute_metrics(metric: str, logits: np.ndarray, labels: np.ndarray, regression: bool) -> dict:
    preds = predictions_from_logits(logits, regression)
    return METRICS[metric](preds, labels)


def one_class_reference(metric: str, main: str, labels: np.ndarray, num_labels: int) -> tuple[int, dict]:
    """The class whose constant prediction scores best on ``labels`` by the number ``main``
    of ``metric`` (the one the table shows), and that predictor's metrics: the score a model
    that has learnt nothing but the label distribution reaches, to read a model's score
    against. (Ranked by another number, the majority class can show an F1 of 0 where
    predicting the other class everywhere reaches 0.67.)"""
    fn = METRICS[metric]
    scored = [(c, fn(np.full_like(labels, c), labels)) for c in range(num_labels)]
    return max(scored, key=lambda cs: cs[1][main])
