"""The evaluation stage's results: predictions as TSV files and the table of scores, sizes
and speeds printed at the end of a run."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.data.tasks import TaskSpec
from pipeline.evaluation.metrics import predictions_from_logits


def write_predictions(path: Path, logits: np.ndarray, labels: np.ndarray, spec: TaskSpec) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    preds = predictions_from_logits(logits, spec.regression)
    with open(path, "w") as fh:
        fh.write("index\tprediction\tlabel\n")
        for i, (p, y) in enumerate(zip(preds, labels)):
            pred = f"{p:.6f}" if spec.regression else spec.labels[int(p)]
            gold = "" if (not spec.regression and y < 0) else (f"{y:.6f}" if spec.regression else spec.labels[int(y)])
            fh.write(f"{i}\t{pred}\t{gold}\n")


def format_table(task: str, results: dict, spec: TaskSpec) -> str:
    """Score and size of every model, size also relative to the teacher. Speed is the export
    stage's: measured there per example and per batch, in PyTorch and ONNX Runtime."""
    teacher = results.get("teacher")
    rows = [("model", "split", spec.main_metric, "all metrics", "params", "size vs teacher")]
    for name, entry in results.items():
        for split, m in entry["splits"].items():
            others = ", ".join(f"{k} {v:.4f}" for k, v in m.items() if k not in ("examples", "examples_per_s"))
            main = m.get(spec.main_metric)
            size = f"{entry['parameters'] / teacher['parameters']:.2f}x" if teacher is not None else "-"
            rows.append((name, split, "-" if main is None else f"{main:.4f}", others or "(unlabelled)",
                         f"{entry['parameters'] / 1e6:.1f}M", size))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"Evaluation on {task} (held-out splits):"]
    for j, r in enumerate(rows):
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)
