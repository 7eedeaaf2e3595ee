"""``crild study``: run (or collect) a comparison study and write its report.

Every cell (task x setting x seed x method) is one ``crild run`` of the study's base
configuration, scored as soon as it completes into a small record under
``<report_dir>/records/``; the report is written from the records. Recorded cells are not run
again (even where their run folders are gone: commit the records), complete cells are only
scored, interrupted ones resume from their checkpoints, so the same command continues a
study after a crash, a time limit or a move to another machine. ``--collect-only`` writes the
report of whatever is recorded (scoring complete runs that are not) and lists the rest.
"""
from __future__ import annotations

import os
import platform
import time
from collections import defaultdict
from typing import Optional

from pipeline.data.sources import checked_eval_splits
from pipeline.data.tasks import task_spec
from pipeline.errors import UserError
from pipeline.launch.local import stages_to_run
from pipeline.launch.preflight import check_stages
from pipeline.study.cells import Cell, cell_config, cell_done, cells
from pipeline.study.execute import run_cells
from pipeline.study.records import load_record, predicted_later, weights_digest
from pipeline.study.report import write_report
from pipeline.study.spec import TEACHER, StudySpec, load_study


def _shown(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _selects(prefix: str, label: str) -> bool:
    """``snli`` and ``snli/noise-0.3`` select snli/noise-0.3/seed42/kd; ``sn`` does not."""
    return label == prefix or label.startswith(prefix.rstrip("/") + "/")


def _first_of_each_seed(all_cells: list[Cell]) -> dict:
    """Each seed's teacher is recorded once, with the first of its cells."""
    first: dict = {}
    for cell in all_cells:
        first.setdefault(cell.run_dir, cell)
    return first


def _plan(spec: StudySpec, args, all_cells: list[Cell]) -> tuple[list[Cell], list[Cell]]:
    """(complete here but not recorded, still to run). The first are recorded before anything
    new runs, so finished work is secured first."""
    intact: set = set()  # (folder, fingerprint) verified in this invocation: hash each output once
    recorded = {cell for cell in all_cells if load_record(spec, cell)}
    unrecorded = [c for c in all_cells if c not in recorded and cell_done(spec, c, intact)]
    unrecorded += [c for c in _first_of_each_seed(all_cells).values()  # its cells recorded, its teacher not
                   if c in recorded and weights_digest(c.run_dir / "teacher") and not load_record(spec, c, teacher=True)]
    to_run = [] if args.collect_only else [c for c in all_cells if c not in recorded and c not in unrecorded
                                           and not cell_done(spec, c, intact)]
    if args.only:
        unknown = [p for p in args.only if not any(_selects(p, c.label) for c in all_cells)]
        if unknown:
            raise UserError(f"{args.study}: --only {unknown[0]}: no cell of the study matches "
                            f"(labels look like {all_cells[0].label})")
        to_run = [c for c in to_run if any(_selects(p, c.label) for p in args.only)]
    if args.max_runs is not None:
        to_run = to_run[:args.max_runs]
    _check_cells(spec, args.study, to_run, intact)
    _check_scored_splits(spec, args.study, [*unrecorded, *to_run])
    return unrecorded, to_run


def _check_scored_splits(spec: StudySpec, study: str, to_score: list[Cell]) -> None:
    """Each task to score has every split of ``eval_splits``: one it lacks was found when the
    first cell had trained and came to be scored."""
    seen = set()
    for cell in to_score:
        if cell.task not in seen:
            seen.add(cell.task)
            task = cell_config(spec, cell).task
            checked_eval_splits(task, task_spec(task), list(spec.eval_splits), study, "eval_splits")


def _check_cells(spec: StudySpec, study: str, to_run: list[Cell], intact: set) -> None:
    """Each cell to run, checked as ``crild run`` checks it before its first stage, before
    any of them runs: a method that cannot work is one line now, not a failed cell hours in.
    Seeds of one method that run the same stages are checked once (the checks do not read
    the seed)."""
    checked = set()
    for cell in to_run:
        cfg = cell_config(spec, cell)
        stages = stages_to_run(cfg, cfg.pipeline, known_intact=intact)
        key = (tuple(o for o in cell.overrides if not o.startswith(("output_dir=", "seed="))), tuple(stages))
        if key in checked:
            continue
        try:
            check_stages(cfg, stages, cfg.num_ranks)
        except UserError as err:
            raise UserError(f"{study}: cell {cell.label}: {err}") from None
        checked.add(key)


def _collect(spec: StudySpec, all_cells: list[Cell], failed_labels: set, unrecorded: list[Cell]):
    """(records, teachers, missing, unscored, metric_of) from the records on disk."""
    records = defaultdict(lambda: defaultdict(list))
    teachers, missing, unscored, metric_of = defaultdict(list), [], [], {}
    later: dict = {}  # per group: class counts measured after its records (tools/predicted_classes.py)

    def loaded(cell: Cell, teacher: bool) -> Optional[dict]:
        """The cell's record (or its seed's teacher's) with its class counts if measured later."""
        rec = load_record(spec, cell, teacher)
        if rec is None:
            return None
        if (cell.task, cell.setting) not in later:
            later[(cell.task, cell.setting)] = predicted_later(spec, cell.task, cell.setting)
        name = TEACHER if teacher else cell.method
        counts = later[(cell.task, cell.setting)].get((name, cell.seed, rec.get("weights_sha256")), {})
        return {**counts, **rec, "cell": cell}

    for cell in _first_of_each_seed(all_cells).values():
        teacher = loaded(cell, teacher=True)
        if teacher:
            teachers[(cell.task, cell.setting)].append(teacher)
    for cell in all_cells:
        if cell.task not in metric_of:  # a built-in task's, or from the cell's task.metric for one of the user's own
            metric_of[cell.task] = task_spec(cell_config(spec, cell).task).main_metric
        rec = loaded(cell, teacher=False)
        if rec is not None:
            records[(cell.task, cell.setting)][cell.method].append(rec)
        elif cell.label in failed_labels:
            continue  # listed with its log under "Failed"
        elif cell in unrecorded:  # complete, not recorded: --cached-scores
            unscored.append(cell.label)
        else:
            missing.append(cell.label)
    return records, teachers, missing, unscored, metric_of


def _header(spec: StudySpec, study: str, unscored: list) -> list[str]:
    import torch

    header = [f"Written by `crild study {study}` on {time.strftime('%Y-%m-%d')}; "
              f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
              f"{', CUDA' if torch.cuda.is_available() else ', CPU only'}.",
              f"Base configuration: `{_shown(spec.base)}`; tasks {', '.join(spec.tasks)}; settings "
              f"{', '.join(f'{k} ({v})' for k, v in spec.settings.items())}; seeds {spec.seeds}."]
    header += [f"Held-out {task} scores use the first {n:,} examples of each split (`score_max_examples`)."
               for task, n in spec.score_max_examples.items()]
    if unscored:
        header.append(f"{len(unscored)} complete runs are not scored yet (this report was written with "
                      f"`--cached-scores`); they are listed as missing.")
    return header


def run_study(args) -> int:
    """Run what ``args`` asks, then write the report; 1 if a cell failed."""
    spec = load_study(args.study)
    all_cells = cells(spec)  # task, setting, seed, method: one setting's seeds complete first
    started = time.time()
    unrecorded, to_run = _plan(spec, args, all_cells)
    todo = ([] if args.cached_scores else unrecorded) + to_run
    failed, failed_labels = [], set()

    def on_start(cell) -> None:
        print(f"report: {'scoring' if cell in unrecorded else 'running'} {cell.label}", flush=True)

    try:
        for cell, code, seconds in run_cells(spec, todo, args.jobs, record=not args.cached_scores,
                                             record_only=frozenset(unrecorded), on_start=on_start):
            if code != 0:
                failed.append(f"{cell.label}: exit code {code}, log {cell.run_dir / 'logs' / (cell.method + '.log')}")
                failed_labels.add(cell.label)
                print(f"report: {cell.label} failed with exit code {code}", flush=True)
            else:
                print(f"report: {cell.label} done in {seconds:.0f} s", flush=True)
    except KeyboardInterrupt:
        raise UserError("interrupted; rerun the same command to continue the study") from None

    records, teachers, missing, unscored, metric_of = _collect(spec, all_cells, failed_labels, unrecorded)
    path = write_report(spec, records, teachers, missing + unscored, failed, _header(spec, args.study, unscored),
                        metric_of)
    print(f"report: wrote {path} ({time.time() - started:.0f} s; {len(missing)} missing, {len(failed)} failed)")
    return 1 if failed else 0
