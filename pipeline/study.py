"""A comparison study: methods x seeds x settings x tasks, each cell one ``crild run`` of a
shared base configuration, then each student scored on held-out splits and probed for
flatness. Runs are skipped when complete and resume when interrupted (the runner's own
rules); each scored cell becomes a small record (``pipeline/study_records.py``) that the
report is written from.

The study file (YAML):

    base: jobs/report_base.yaml           # run configuration every cell starts from
    output_dir: runs/report               # cells go to <output_dir>/<task>/<setting>/seed<seed>
    report_dir: reports/offline
    seeds: [42, 43, 44]
    methods: [kd, pkd, tinybert, minilmv2, l-ild, cr-ild, cr-ild-no-consistency]
    tasks: {rotten_tomatoes: {}, snli: {task.max_length: 128}}    # task -> overrides
    settings: {few-sample-1000: {task.few_sample: 1000}}           # setting -> overrides
    flatness: {scales: [0, 0.05, 0.1, 0.2], draws: 3, examples: 500, split: dev}
    eval_splits: [dev, test]
    score_max_examples: {snli: 3000}      # optional: score at most this many of each split (first N)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import yaml

from pipeline.config import RunConfig, load_config, resolve_path
from pipeline.errors import UserError
from pipeline.objectives import PRESETS

STUDENT_PREFIX = "student_"


@dataclass
class FlatnessSpec:
    scales: list = field(default_factory=lambda: [0.0, 0.05, 0.1, 0.2])
    draws: int = 3
    examples: int = 500
    split: str = "dev"


@dataclass
class StudySpec:
    base: str
    output_dir: str
    report_dir: str
    seeds: list
    methods: list
    tasks: dict
    settings: dict
    flatness: FlatnessSpec
    eval_splits: list
    score_max_examples: dict = field(default_factory=dict)
    source: str = ""


@dataclass(frozen=True)
class Cell:
    task: str
    setting: str
    seed: int
    method: str
    run_dir: Path
    overrides: tuple

    @property
    def student(self) -> Path:
        return self.run_dir / f"{STUDENT_PREFIX}{self.method}"

    @property
    def label(self) -> str:
        return f"{self.task}/{self.setting}/seed{self.seed}/{self.method}"


_KEYS = {"base": str, "output_dir": str, "report_dir": str, "seeds": list, "methods": list, "tasks": dict,
         "settings": dict, "flatness": dict, "eval_splits": list,
         "score_max_examples": dict}


def load_study(path: str) -> StudySpec:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: study file not found")
    raw = yaml.safe_load(p.read_text()) or {}
    if not isinstance(raw, dict):
        raise UserError(f"{p}: expected a mapping at the top level")
    for key, value in raw.items():
        if key not in _KEYS:
            raise UserError(f"{p}: unknown key '{key}' (known: {', '.join(_KEYS)})")
        if not isinstance(value, _KEYS[key]):
            raise UserError(f"{p}: {key}: expected a {_KEYS[key].__name__}, got {type(value).__name__}")
    for key in ("base", "output_dir", "report_dir", "seeds", "methods", "tasks", "settings"):
        if key not in raw:
            raise UserError(f"{p}: missing key '{key}'")
    for m in raw["methods"]:
        if m not in PRESETS:
            raise UserError(f"{p}: methods: unknown preset '{m}' (known: {', '.join(PRESETS)})")
    if not all(isinstance(s, int) for s in raw["seeds"]):
        raise UserError(f"{p}: seeds: expected a list of integers")
    flat = raw.get("flatness", {})
    unknown = set(flat) - set(FlatnessSpec.__dataclass_fields__)
    if unknown:
        raise UserError(f"{p}: flatness: unknown key '{sorted(unknown)[0]}'")
    caps = raw.get("score_max_examples", {})
    for task, n in caps.items():
        if task not in raw["tasks"]:
            raise UserError(f"{p}: score_max_examples: '{task}' is not one of the study's tasks")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise UserError(f"{p}: score_max_examples: {task}: expected a positive integer, got {n!r}")
    base = resolve_path(raw["base"], "base", str(p))
    return StudySpec(str(base), raw["output_dir"], raw["report_dir"], raw["seeds"], raw["methods"],
                     {k: v or {} for k, v in raw["tasks"].items()}, {k: v or {} for k, v in raw["settings"].items()},
                     FlatnessSpec(**flat), raw.get("eval_splits", ["dev", "test"]), caps, str(p))


def _overrides(mapping: dict) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in mapping.items()]


def cells(spec: StudySpec) -> list[Cell]:
    out = []
    for task, task_over in spec.tasks.items():
        for setting, setting_over in spec.settings.items():
            for seed in spec.seeds:
                run_dir = Path(spec.output_dir) / task / setting / f"seed{seed}"
                for method in spec.methods:
                    over = [f"output_dir={run_dir}", f"seed={seed}", f"task.name={task}", *_overrides(task_over),
                            *_overrides(setting_over), f"stages.distill.preset={method}",
                            f"stages.distill.output={STUDENT_PREFIX}{method}"]
                    out.append(Cell(task, setting, seed, method, run_dir, tuple(over)))
    return out


def cell_config(spec: StudySpec, cell: Cell) -> RunConfig:
    return load_config(spec.base, list(cell.overrides))


def cell_done(spec: StudySpec, cell: Cell, known_intact: Optional[set] = None) -> bool:
    """Every stage of the cell complete and intact; pass the same ``known_intact`` set to
    hash a shared output (the seed's teacher) once rather than once per method."""
    from pipeline.runner import stage_is_done

    cfg = cell_config(spec, cell)
    return all(stage_is_done(cfg, name, known_intact) for name in cfg.pipeline)


def _start(cell: Cell, cmd: list[str], threads: Optional[int]) -> subprocess.Popen:
    """``cmd`` in the background, its output appended to ``<run_dir>/logs/<method>.log``;
    ``threads`` sets OMP_NUM_THREADS unless it is set."""
    log_dir = cell.run_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if threads and not env.get("OMP_NUM_THREADS"):
        env["OMP_NUM_THREADS"] = str(threads)
    with open(log_dir / f"{cell.method}.log", "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)


def run_command(spec: StudySpec, cell: Cell) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "run", spec.base, *cell.overrides]


def record_command(spec: StudySpec, cell: Cell) -> list[str]:
    return [sys.executable, "-m", "pipeline.study_records", spec.source, cell.label]


def run_cells(spec: StudySpec, todo: list[Cell], jobs: int = 1, record: bool = True,
              record_only: frozenset = frozenset(),
              on_start: Callable[[Cell], None] = lambda cell: None) -> Iterator[tuple[Cell, int, float]]:
    """Run ``todo`` in order, at most ``jobs`` at a time and never two cells of one run folder
    at once (a seed's methods share its teacher and checkpoint folder); with ``record``, each
    cell that completes is scored and recorded in its slot straight away, so an interrupted
    study keeps every record made so far. Cells in ``record_only`` are complete already: they
    are only recorded. Yields (cell, exit code, seconds) as each ends.
    With several jobs each gets an equal share of the cores: small models use two threads
    poorly, so two one-thread cells beat one two-thread cell."""
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    pending, running = list(todo), {}  # cell -> (process, start time, commands still to run)
    try:
        while pending or running:
            busy = {cell.run_dir for cell in running}
            for cell in list(pending):
                if len(running) >= jobs:
                    break
                if cell.run_dir in busy:
                    continue
                pending.remove(cell)
                busy.add(cell.run_dir)
                on_start(cell)
                steps = ([] if cell in record_only else [run_command(spec, cell)]) + \
                    ([record_command(spec, cell)] if record else [])
                if not steps:
                    continue
                running[cell] = (_start(cell, steps[0], threads), time.time(), steps[1:])
            for cell, (proc, t0, after) in list(running.items()):
                if proc.poll() is None:
                    continue
                if proc.returncode == 0 and after:
                    running[cell] = (_start(cell, after[0], threads), t0, after[1:])
                    continue
                del running[cell]
                yield cell, proc.returncode, time.time() - t0
            time.sleep(0.5)
    finally:  # interrupted: stop the cells still running (each resumes on the next invocation)
        for proc, _, _ in running.values():
            proc.terminate()
        for proc, _, _ in running.values():
            proc.wait()


# --------------------------------------------------------------------------- scoring


def score_folder(spec: StudySpec, cfg: RunConfig, folder: Path, probe: bool) -> dict:
    """Held-out metrics of a model folder on the study's splits and, with ``probe``, its
    flatness curve (score under Gaussian weight noise of each relative scale)."""
    import torch

    from pipeline.distributed import DistInfo
    from pipeline.evaluation import classifier_forward, predict_logits, split_metrics
    from pipeline.flatness import perturbed_scores
    from pipeline.models import load_tokenizer
    from pipeline.stage4_evaluate import load_eval_model
    from pipeline.stage_common import load_task_data

    dist = DistInfo(0, 1, 0, torch.device("cpu"))
    tokenizer = load_tokenizer(str(folder), str(folder))
    cfg.task.max_eval_examples = spec.score_max_examples.get(cfg.task.name)  # whole splits unless capped
    data = load_task_data(cfg, tokenizer, eval_splits=list(spec.eval_splits), with_train=False)
    model = load_eval_model(str(folder), data.spec, torch.float32, dist.device, cfg.task.max_length)
    forward = classifier_forward(model, dist.device)
    metric = data.spec.main_metric
    scores = {}
    for split, ds in data.eval.items():
        logits = predict_logits(forward, ds, data.collate, 128, dist)
        scores[split] = split_metrics(data.spec, logits, data.eval_labels[split])
    out = {"scores": scores, "metric": metric, "examples": {split: len(ds) for split, ds in data.eval.items()}}
    if probe:
        f = spec.flatness
        ds = data.eval[f.split] if f.split in data.eval else next(iter(data.eval.values()))
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
