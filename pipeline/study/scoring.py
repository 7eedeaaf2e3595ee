"""Scoring a study's model folders: held-out metrics, the flatness probe, and the training
curves read back from TensorBoard."""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline.config import RunConfig
from pipeline.data.task_data import load_task_data
from pipeline.evaluation.flatness import perturbed_scores
from pipeline.evaluation.models import load_eval_model
from pipeline.evaluation.predict import classifier_forward, predict_logits, split_metrics
from pipeline.evaluation.results import one_class_rows, predicted_counts
from pipeline.models.loading import load_tokenizer
from pipeline.runtime.distributed import DistInfo
from pipeline.study.spec import StudySpec


def score_folder(spec: StudySpec, cfg: RunConfig, folder: Path, probe: bool) -> dict:
    """Held-out metrics of a model folder on the study's splits, how often it predicts each
    class there beside the best one-class prediction's scores (classification) and, with
    ``probe``, its flatness curve (score under Gaussian weight noise of each relative scale)."""
    dist = DistInfo(0, 1, 0, torch.device("cpu"))
    tokenizer = load_tokenizer(str(folder), str(folder))
    cfg.task.max_eval_examples = spec.score_max_examples.get(cfg.task.name)  # whole splits unless capped
    data = load_task_data(cfg, tokenizer, eval_splits=list(spec.eval_splits), with_train=False)
    model = load_eval_model(str(folder), data.spec, torch.float32, dist.device, cfg.task.max_length)
    forward = classifier_forward(model, dist.device)
    metric = data.spec.main_metric
    scores, predicted = {}, {}
    for split, ds in data.eval.items():
        logits = predict_logits(forward, ds, data.collate, 128, dist)
        scores[split] = split_metrics(data.spec, logits, data.eval_labels[split])
        if not data.spec.regression:
            predicted[split] = predicted_counts(logits, data.spec)
    out = {"scores": scores, "metric": metric, "examples": {split: len(ds) for split, ds in data.eval.items()}}
    if predicted:
        out.update(predicted=predicted, one_class=one_class_rows(data.eval_labels, data.spec))
    if probe:
        f = spec.flatness
        ds = data.eval[f.split]  # one of eval_splits (the study file's schema)
        n = min(f.examples, len(ds))
        ds, labels = ds.select(range(n)), data.eval_labels[f.split][:n]

        def score() -> float:
            logits = predict_logits(forward, ds, data.collate, 128, dist)
            return split_metrics(data.spec, logits, labels)[metric]

        curve = perturbed_scores(model, score, [float(s) for s in f.scales], f.draws, cfg.seed)
        out["flatness"] = {str(k): v for k, v in curve.items()}
    return out


def read_scalars(event_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a TensorBoard folder; where a resumed run wrote a step twice, the
    later write wins. Returns tag -> [(step, value)] sorted by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    latest: dict[str, dict[int, tuple[float, float]]] = {}
    for f in sorted(event_dir.glob("events.out.tfevents.*")):
        ea = EventAccumulator(str(f), size_guidance={"scalars": 0})
        ea.Reload()
        for tag in ea.Tags()["scalars"]:
            per_step = latest.setdefault(tag, {})
            for e in ea.Scalars(tag):
                if e.step not in per_step or per_step[e.step][0] <= e.wall_time:
                    per_step[e.step] = (e.wall_time, e.value)
    return {tag: sorted((s, v) for s, (_, v) in steps.items()) for tag, steps in latest.items()}
