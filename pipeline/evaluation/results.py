"""The evaluation stage's results: predictions as TSV files, and the table of scores and
sizes printed at the end of a run, read against the best one-class predictor."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.data.tasks import TaskSpec
from pipeline.errors import count_text
from pipeline.evaluation.metrics import one_class_reference, predictions_from_logits

NOT_METRICS = ("examples", "examples_per_s", "predicted")  # per-split entries that are no score


def write_predictions(path: Path, logits: np.ndarray, labels: np.ndarray, spec: TaskSpec) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    preds = predictions_from_logits(logits, spec.regression)
    with open(path, "w") as fh:
        fh.write("index\tprediction\tlabel\n")
        for i, (p, y) in enumerate(zip(preds, labels)):
            pred = f"{p:.6f}" if spec.regression else spec.labels[int(p)]
            gold = "" if (not spec.regression and y < 0) else (f"{y:.6f}" if spec.regression else spec.labels[int(y)])
            fh.write(f"{i}\t{pred}\t{gold}\n")


def predicted_counts(logits: np.ndarray, spec: TaskSpec) -> dict[str, int]:
    """How often a classifier predicts each class over a split. One class with every
    example means the model predicts a constant, whatever its score says."""
    counts = np.bincount(predictions_from_logits(logits, spec.regression), minlength=spec.num_labels)
    return {label: int(n) for label, n in zip(spec.labels, counts)}


def one_class_predicted(counts: dict[str, int]) -> str | None:
    """The label a model predicts for every example of a split (``counts`` from
    ``predicted_counts``), or None when it predicts more than one, or the split is too small
    or has one class, so that predicting one says nothing."""
    used = [label for label, n in counts.items() if n > 0]
    return used[0] if len(used) == 1 and len(counts) > 1 and sum(counts.values()) > 1 else None


def one_class_rows(eval_labels: dict, spec: TaskSpec) -> dict:
    """{split: {"label": name, **metrics}}: the best constant prediction on each labelled
    split of a classification task (none for regression or unlabelled splits)."""
    if spec.regression:
        return {}
    rows = {}
    for split, labels in eval_labels.items():
        if len(labels) and (labels >= 0).all():
            label, metrics = one_class_reference(spec.metric, spec.main_metric, labels, spec.num_labels)
            rows[split] = {"label": spec.labels[label], **metrics}
    return rows


def format_table(task: str, results: dict, spec: TaskSpec, one_class: dict | None = None,
                 teacher: str | None = None) -> str:
    """Score and size of every model, size also relative to the model named ``teacher`` (see
    ``pipeline.evaluation.models.teachers``; none: no ratio). Speed is the export stage's:
    measured there per example and per batch, in PyTorch and ONNX Runtime. With
    ``one_class`` (see ``one_class_rows``), a reference row per split and a note for any
    model that predicts one class for every example of a split."""
    teacher = results.get(teacher) if teacher is not None else None
    rows = [("model", "split", spec.main_metric, "all metrics", "params", "size vs teacher")]
    for name, entry in results.items():
        for split, m in entry["splits"].items():
            others = ", ".join(f"{k} {v:.4f}" for k, v in m.items() if k not in NOT_METRICS)
            main = m.get(spec.main_metric)
            size = f"{entry['parameters'] / teacher['parameters']:.2f}x" if teacher is not None else "-"
            rows.append((name, split, "-" if main is None else f"{main:.4f}", others or "(unlabelled)",
                         count_text(entry["parameters"]), size))
    for split, m in (one_class or {}).items():
        rows.append((f"one class ('{m['label']}')", split, f"{m[spec.main_metric]:.4f}", "(reference: the best "
                     "constant prediction)", "-", "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"Evaluation on {task} (held-out splits):"]
    for j, r in enumerate(rows):
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    for name, entry in results.items():
        for split, m in entry["splits"].items():
            label = one_class_predicted(m.get("predicted", {}))
            if label is not None:
                lines.append(f"note: {name} predicts '{label}' for every {split} example: it has learnt no more "
                             f"than a label")
    return "\n".join(lines)
