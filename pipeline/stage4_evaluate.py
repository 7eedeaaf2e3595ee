"""Stage 4: evaluate model folders on the task's dev/test splits.

    deepspeed pipeline/stage4_evaluate.py --config jobs/demo.yaml [section.key=value ...]
    python pipeline/stage4_evaluate.py --config jobs/demo.yaml stages.evaluate.models=[path/to/model]

Output: ``<output_dir>/eval`` with results.json (metrics per model and split, model size and
inference speed) and predictions/<model>/<split>.tsv.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the package, not this folder's modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.config import RunConfig  # noqa: E402
from pipeline.batching import fetch  # noqa: E402
from pipeline.distributed import barrier, init_distributed, seed_everything  # noqa: E402
from pipeline.ds_config import load_ds_json, precision_dtype  # noqa: E402
from pipeline.errors import UserError  # noqa: E402
from pipeline.evaluation import classifier_forward, predict_logits, split_metrics  # noqa: E402
from pipeline.metrics import predictions_from_logits  # noqa: E402
from pipeline.models import check_max_length, load_tokenizer, quiet_libraries, resolve_model  # noqa: E402
from pipeline.outputs import atomic_output, is_complete, verified, write_json  # noqa: E402
from pipeline.stage_common import load_task_data, run_dir, stage_main  # noqa: E402
from pipeline.tasks import TaskSpec  # noqa: E402

STAGE = "evaluate"
PRODUCED_MODELS = ("teacher", "student", "student_finetuned")  # folders a run writes, evaluated by default


def models_to_evaluate(cfg: RunConfig) -> dict[str, str]:
    if cfg.stages.evaluate.models:
        return {Path(m).name or str(m): str(m) for m in cfg.stages.evaluate.models}
    found = {name: str(verified(run_dir(cfg) / name, f"the run's {name}")) for name in PRODUCED_MODELS
             if is_complete(run_dir(cfg) / name)}
    if not found:
        raise UserError(f"{run_dir(cfg)}: no complete teacher or student to evaluate; run the earlier stages "
                        f"first or set stages.evaluate.models")
    return found


def load_eval_model(path: str, spec: TaskSpec, dtype: torch.dtype, device: torch.device, max_length: int):
    from transformers import AutoModelForSequenceClassification

    folder = resolve_model(path, "stages.evaluate.models")
    model = AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="sdpa",
                                                               use_safetensors=True, dtype=dtype)
    if model.config.num_labels != spec.num_labels:
        raise UserError(f"{path}: model has {model.config.num_labels} output(s), task {spec.name} needs "
                        f"{spec.num_labels}")
    check_max_length(model.config, max_length, path)
    return model.to(device).eval()


def run(cfg: RunConfig) -> int:
    quiet_libraries()
    dist = init_distributed()
    seed_everything(cfg.seed)
    models = models_to_evaluate(cfg)
    _, ds_cfg = load_ds_json(cfg.deepspeed_config, cfg.source)
    dtype = precision_dtype(ds_cfg)
    results, predictions = {}, {}
    for name, path in models.items():
        tokenizer = load_tokenizer(resolve_model(path, "stages.evaluate.models"), "stages.evaluate.models")
        data = load_task_data(cfg, tokenizer, eval_splits=list(cfg.stages.evaluate.splits), with_train=False)
        model = load_eval_model(path, data.spec, dtype, dist.device, cfg.task.max_length)
        forward = classifier_forward(model, dist.device)
        entry = {"path": path, "parameters": sum(p.numel() for p in model.parameters()), "splits": {}}
        first = next(iter(data.eval.values()))
        with torch.no_grad():  # warm-up, so the first split's speed is not charged for it
            forward(fetch(first, list(range(min(len(first), cfg.stages.evaluate.batch_size))), data.collate))
        for split, ds in data.eval.items():
            start = time.perf_counter()
            logits = predict_logits(forward, ds, data.collate, cfg.stages.evaluate.batch_size, dist)
            elapsed = time.perf_counter() - start
            metrics = split_metrics(data.spec, logits, data.eval_labels[split])
            entry["splits"][split] = {"examples": len(ds), "examples_per_s": len(ds) / elapsed, **metrics}
            predictions[(name, split)] = (logits, data.eval_labels[split])
        results[name] = entry
        del model
    if dist.is_main:
        with atomic_output(run_dir(cfg) / "eval", cfg, STAGE) as tmp:
            write_json(tmp / "results.json", {"task": cfg.task.name, "models": results})
            for (name, split), (logits, labels) in predictions.items():
                _write_predictions(tmp / "predictions" / name / f"{split}.tsv", logits, labels, data.spec)
        print(format_table(cfg.task.name, results, data.spec), flush=True)
    barrier()
    return 0


def _write_predictions(path: Path, logits: np.ndarray, labels: np.ndarray, spec: TaskSpec) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    preds = predictions_from_logits(logits, spec.regression)
    with open(path, "w") as fh:
        fh.write("index\tprediction\tlabel\n")
        for i, (p, y) in enumerate(zip(preds, labels)):
            pred = f"{p:.6f}" if spec.regression else spec.labels[int(p)]
            gold = "" if (not spec.regression and y < 0) else (f"{y:.6f}" if spec.regression else spec.labels[int(y)])
            fh.write(f"{i}\t{pred}\t{gold}\n")


def format_table(task: str, results: dict, spec: TaskSpec) -> str:
    """Score, size and speed of every model; size and speed also relative to the teacher."""
    teacher = results.get("teacher")
    rows = [("model", "split", spec.main_metric, "all metrics", "params", "size vs teacher", "examples/s",
             "speed vs teacher")]
    for name, entry in results.items():
        for split, m in entry["splits"].items():
            others = ", ".join(f"{k} {v:.4f}" for k, v in m.items() if k not in ("examples", "examples_per_s"))
            main = m.get(spec.main_metric)
            size = speed = "-"
            if teacher is not None:
                size = f"{entry['parameters'] / teacher['parameters']:.2f}x"
                t_split = teacher["splits"].get(split)
                if t_split:
                    speed = f"{m['examples_per_s'] / t_split['examples_per_s']:.2f}x"
            rows.append((name, split, "-" if main is None else f"{main:.4f}", others or "(unlabelled)",
                         f"{entry['parameters'] / 1e6:.1f}M", size, f"{m['examples_per_s']:.0f}", speed))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"Evaluation on {task} (held-out splits):"]
    for j, r in enumerate(rows):
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


if __name__ == "__main__":
    stage_main(run, "Evaluate model folders on the task's dev/test splits.")
