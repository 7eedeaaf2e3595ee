"""Stage 5: export the run's models to ONNX, prove the exports match PyTorch, quantize the
students to INT8, and time everything against the teacher.

    python pipeline/stage5_export.py --config jobs/demo.yaml [section.key=value ...]
    crild export jobs/demo.yaml

Output: ``<output_dir>/export`` with one folder per model (``model.onnx``, tokenizer,
config.json, and README.md, its model card) that ONNX Runtime loads as it is, ``<model>-int8``
folders, ``results.json`` (parity, score, size and timings of each) and ``latency.md`` (the
table the demo ends with). An export outside ``stages.export.tolerance`` fails, writing nothing.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the package, not this folder's modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import torch

from pipeline.config import RunConfig
from pipeline.data.sources import export_split
from pipeline.data.task_data import load_task_data
from pipeline.data.tasks import task_spec
from pipeline.errors import UserError
from pipeline.evaluation.models import load_eval_model, run_models, teachers
from pipeline.evaluation.predict import classifier_forward, predict_logits, split_metrics
from pipeline.export.latency import Candidate, measure, table
from pipeline.export.model_card import CARD, ExportedModel, model_card
from pipeline.export.onnx_export import DATA_SUFFIX, ONNX_FILE, export_classifier, input_names
from pipeline.export.parity import check, int8_shortfall, parity
from pipeline.export.quantize import INT8_SUFFIX, check_int8_names, quantize_folder
from pipeline.export.runtime import onnx_forward, onnxruntime, session
from pipeline.models.loading import WEIGHT_PATTERNS, load_tokenizer, quiet_libraries, resolve_model, saved_max_length
from pipeline.outputs.atomic import atomic_output, write_json
from pipeline.runtime.distributed import DistInfo, barrier, init_distributed, seed_everything
from pipeline.runtime.progress import counted, log
from pipeline.stage_cli import stage_main
from pipeline.stages import produced_models, stage_fingerprint

STAGE = "export"
ONNX_FILES = (ONNX_FILE, ONNX_FILE + DATA_SUFFIX)  # the graph and, over 2 GiB, its weights
CPU = torch.device("cpu")  # deployment here is ONNX Runtime's CPU provider: everything is compared and timed there


def _size_mb(folder: Path, patterns: tuple) -> float:
    files = {path for pattern in patterns for path in folder.glob(pattern) if path.is_file()}
    return sum(path.stat().st_size for path in files) / 2**20


def export_one(cfg: RunConfig, name: str, path: str, out: Path, dist: DistInfo, threads: int,
               quantize: bool) -> tuple:
    """Export one model (and, with ``quantize``, its INT8 copy) into ``out``; (result rows,
    timing candidates, (split, metric), the exported folders)."""
    export_cfg = cfg.stages.export
    folder = Path(resolve_model(path, "stages.export.models"))
    tokenizer = load_tokenizer(str(folder), "stages.export.models")
    data = load_task_data(cfg, tokenizer, eval_splits=[export_split(cfg.task, task_spec(cfg.task), export_cfg.split)],
                          with_train=False, splits_key="stages.export.split")
    split, ds = next(iter(data.eval.items()))
    labels, metric = data.eval_labels[split], data.spec.main_metric
    # the reference runs where the exports run, on the CPU in fp32: a GPU reference would differ
    # by its own kernels (TF32, SDPA's fused kernels) and time a different device in the table
    reference = load_eval_model(str(folder), data.spec, torch.float32, CPU, cfg.task.max_length,
                                "stages.export.models")
    # a copy to trace: tracing changes state inside a transformers model
    export_classifier(copy.deepcopy(reference).cpu(), tokenizer, folder, out / name, export_cfg.opset,
                      cfg.task.max_length)
    facts = ExportedModel(name, folder, reference.config, sum(p.numel() for p in reference.parameters()),
                          input_names(reference, tokenizer), int8=False, cut_at=saved_max_length(out / name))
    exported = [facts]
    torch_forward = classifier_forward(reference, CPU)
    batch_size = cfg.stages.evaluate.batch_size
    torch_logits = predict_logits(torch_forward, ds, data.collate, batch_size, dist)
    onnx_fwd = onnx_forward(session(out / name / ONNX_FILE, threads))
    onnx_logits = predict_logits(onnx_fwd, ds, data.collate, batch_size, dist)
    fp32 = parity(split, torch_logits, onnx_logits, data.spec.regression)
    check(name, fp32, export_cfg.tolerance.max_logit_diff, export_cfg.tolerance.min_agreement)
    score = split_metrics(data.spec, torch_logits, labels).get(metric)
    rows = [{"model": name, "runtime": "pytorch", "score": score, "size_mb": _size_mb(folder, WEIGHT_PATTERNS)},
            {"model": name, "runtime": "onnx", "score": split_metrics(data.spec, onnx_logits, labels).get(metric),
             "size_mb": _size_mb(out / name, ONNX_FILES), "parity": fp32.as_dict()}]
    candidates = [Candidate(name, "pytorch", torch_forward, ds, data.collate),
                  Candidate(name, "onnx", onnx_fwd, ds, data.collate)]
    if quantize:
        quantize_folder(out / name, out / f"{name}{INT8_SUFFIX}")
        int8_fwd = onnx_forward(session(out / f"{name}{INT8_SUFFIX}" / ONNX_FILE, threads))
        int8_logits = predict_logits(int8_fwd, ds, data.collate, batch_size, dist)
        int8_score = split_metrics(data.spec, int8_logits, labels).get(metric)
        shortfall = int8_shortfall(name, score, int8_score, metric, split, export_cfg.int8_max_drop)
        rows.append({"model": name, "runtime": "onnx-int8", "score": int8_score,
                     "size_mb": _size_mb(out / f"{name}{INT8_SUFFIX}", ONNX_FILES),
                     "parity": parity(split, torch_logits, int8_logits, data.spec.regression).as_dict(),
                     "kept": shortfall is None})
        candidates.append(Candidate(name, "onnx-int8", int8_fwd, ds, data.collate))
        if shortfall:  # scored and timed (the table shows what was given up), then removed from the staging folder
            log(dist, shortfall)
            shutil.rmtree(out / f"{name}{INT8_SUFFIX}")
        else:
            exported.append(dataclasses.replace(facts, int8=True))
    log(dist, f"{STAGE}: {name}: ONNX matches PyTorch on {split} ({fp32.said()})")
    return rows, candidates, (split, metric), exported


def oversubscribed_note(threads: int, cores: int) -> str | None:
    """A note when the benchmark's threads outnumber the cores it may use: its timings would
    be those of threads waiting for each other, presented as the models'."""
    if threads <= cores:
        return None
    return (f"note: stages.export.benchmark.threads is {threads}, and this process may use {counted(cores, 'core')}: the "
            f"timings are of an oversubscribed machine; set it to at most {cores}, or leave it unset")


def run(cfg: RunConfig) -> int:
    quiet_libraries()
    dist = init_distributed()
    seed_everything(cfg.seed)
    onnxruntime()  # one line if it is missing, before any work
    if dist.world_size > 1:
        raise UserError(f"stages.export runs in one process, and this is one of {dist.world_size}; start it as one "
                        f"(python pipeline/stage5_export.py, or srun --ntasks=1), or through crild run, which does")
    export_cfg = cfg.stages.export
    threads = export_cfg.benchmark.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    models, notes = run_models(cfg, export_cfg.models, "stages.export.models", produced_models(cfg))
    teacher_names = teachers(cfg, models)
    reference = teacher_names[0] if teacher_names else next(iter(models))
    quantized = [name for name in models if export_cfg.quantize and name not in teacher_names]
    check_int8_names(list(models), quantized)
    if export_cfg.benchmark.enabled:
        notes.append(oversubscribed_note(threads, len(os.sched_getaffinity(0))))
    out = Path(cfg.output_dir)
    with atomic_output(out / STAGE, cfg, STAGE, stage_fingerprint(cfg, STAGE)) as tmp:
        rows, candidates, exported = [], [], []
        for name, path in models.items():
            model_rows, model_candidates, timing_data, model_folders = export_one(
                cfg, name, path, tmp, dist, threads, name in quantized)
            rows += model_rows
            candidates += model_candidates
            exported += model_folders
        for note in filter(None, notes):
            log(dist, note)
        split, metric = timing_data
        result = {"task": cfg.task.name, "split": split, "metric": metric, "threads": threads,
                  "reference": reference, "reference_is_teacher": bool(teacher_names), "models": rows}
        if export_cfg.benchmark.enabled:
            bench = export_cfg.benchmark
            timings = measure(candidates, bench.batch1_examples, bench.batch32_batches, bench.warmup, cfg.seed)
            for row in rows:
                row.update(timings[f"{row['model']} ({row['runtime']})"])
            (tmp / "latency.md").write_text(table(rows, cfg.task.name, split, metric, threads, reference,
                                                     bool(teacher_names)))
        write_json(tmp / "results.json", result)
        by_runtime = {(row["model"], row["runtime"]): row for row in rows}
        for model in exported:
            row = by_runtime[(model.model, "onnx-int8" if model.int8 else "onnx")]
            card = model_card(model, row, by_runtime[(model.model, "pytorch")], task_spec(cfg.task), split, metric,
                              threads)
            (tmp / model.folder / CARD).write_text(card, encoding="utf-8")
    if export_cfg.benchmark.enabled:
        print((out / STAGE / "latency.md").read_text(), end="", flush=True)
    barrier()
    return 0


if __name__ == "__main__":
    stage_main(run, STAGE)
