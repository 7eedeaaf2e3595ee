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

import torch

from pipeline.config import RunConfig
from pipeline.data.batching import fetch
from pipeline.data.sources import available_eval_splits
from pipeline.data.task_data import held_out_overlap, load_task_data
from pipeline.data.tasks import task_spec
from pipeline.evaluation.models import load_eval_model, run_models, teachers
from pipeline.evaluation.predict import classifier_forward, predict_logits, split_metrics
from pipeline.evaluation.results import format_table, one_class_rows, predicted_counts, write_predictions
from pipeline.models.loading import load_tokenizer, quiet_libraries, resolve_model
from pipeline.outputs.atomic import atomic_output, write_json
from pipeline.runtime.distributed import barrier, init_distributed, seed_everything, set_tf32
from pipeline.runtime.progress import log
from pipeline.stage_cli import stage_main
from pipeline.stages import produced_models, stage_fingerprint
from pipeline.training.ds_config import precision_dtype
from pipeline.training.ds_files import load_ds_json

STAGE = "evaluate"


def evaluate_model(cfg: RunConfig, path: str, dtype, dist):
    """(results entry, {split: (logits, labels)}, task data) of one model folder."""
    tokenizer = load_tokenizer(resolve_model(path, "stages.evaluate.models"), "stages.evaluate.models")
    splits = cfg.stages.evaluate.splits or available_eval_splits(cfg.task, task_spec(cfg.task))
    data = load_task_data(cfg, tokenizer, eval_splits=list(splits), with_train=False,
                          splits_key="stages.evaluate.splits")
    model = load_eval_model(path, data.spec, dtype, dist.device, cfg.task.max_length)
    forward = classifier_forward(model, dist.device)
    batch_size = cfg.stages.evaluate.batch_size
    entry = {"path": path, "parameters": sum(p.numel() for p in model.parameters()), "splits": {}}
    first = next(iter(data.eval.values()))
    with torch.no_grad():  # warm-up, so the first split's speed is not charged for it
        forward(fetch(first, list(range(min(len(first), batch_size))), data.collate))
    predictions = {}
    for split, ds in data.eval.items():
        start = time.perf_counter()
        logits = predict_logits(forward, ds, data.collate, batch_size, dist)
        elapsed = time.perf_counter() - start
        metrics = split_metrics(data.spec, logits, data.eval_labels[split])
        entry["splits"][split] = {"examples": len(ds), "examples_per_s": len(ds) / elapsed, **metrics}
        if metrics and not data.spec.regression:
            entry["splits"][split]["predicted"] = predicted_counts(logits, data.spec)
        predictions[split] = (logits, data.eval_labels[split])
    return entry, predictions, data


def run(cfg: RunConfig) -> int:
    quiet_libraries()
    dist = init_distributed()
    seed_everything(cfg.seed)
    set_tf32(cfg.tf32)
    _, ds_cfg = load_ds_json(cfg.deepspeed_config, cfg.source)
    results, predictions = {}, {}
    models, notes = run_models(cfg, cfg.stages.evaluate.models, "stages.evaluate.models", produced_models(cfg))
    for name, path in models.items():
        results[name], predictions[name], data = evaluate_model(cfg, path, precision_dtype(ds_cfg), dist)
    # the data's notes (label ids read as names, held-out examples that are training examples) hold for every model
    for note in [*notes, *data.notes, *held_out_overlap(cfg, data)]:
        log(dist, note)
    if dist.is_main:
        with atomic_output(Path(cfg.output_dir) / "eval", cfg, STAGE, stage_fingerprint(cfg, STAGE)) as tmp:
            one_class = one_class_rows(data.eval_labels, data.spec)
            write_json(tmp / "results.json", {"task": cfg.task.name, "models": results, "one_class": one_class})
            for name, per_split in predictions.items():
                for split, (logits, labels) in per_split.items():
                    write_predictions(tmp / "predictions" / name / f"{split}.tsv", logits, labels, data.spec)
        teacher = next(iter(teachers(cfg, models)), None)
        print(format_table(cfg.task.name, results, data.spec, one_class, teacher), flush=True)
    barrier()
    return 0


if __name__ == "__main__":
    stage_main(run, STAGE)
