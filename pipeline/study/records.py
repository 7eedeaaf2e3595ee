"""A study's results as small JSON records, one per scored cell (and one per seed's
teacher), kept under ``<report_dir>/records/<task>/<setting>/seed<seed>/``. The report is
written from these alone, so they are what a study keeps: commit them, copy them between
machines, and a fresh clone (or another node) continues the study from them instead of
redoing cells whose run folders are gone.

A record is valid while it was made by the cell's current configuration and scoring settings
(its ``key``) and, where the cell's run folder is here and complete, from the same weights. A
stale record is replaced when the cell is next scored.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from pipeline.data.tasks import task_spec
from pipeline.distill.presets import PHASES, revisions
from pipeline.outputs.atomic import replace_text
from pipeline.outputs.integrity import HASHES
from pipeline.outputs.manifest import is_complete
from pipeline.schema.hashing import config_hash, settings_dict, to_dict
from pipeline.stages import ds_json_text, stage_fingerprint
from pipeline.study.cells import Cell, cell_config
from pipeline.study.spec import TEACHER, StudySpec

RECORD_VERSION = 1


def record_path(spec: StudySpec, cell: Cell, teacher: bool = False) -> Path:
    name = TEACHER if teacher else cell.method
    return Path(spec.report_dir) / "records" / cell.task / cell.setting / f"seed{cell.seed}" / f"{name}.json"


def scoring_key(spec: StudySpec, task: str, probe: bool) -> dict:
    key = {"flatness": to_dict(spec.flatness) if probe else None, "splits": list(spec.eval_splits)}
    if spec.score_max_examples.get(task) is not None:
        key["max_examples"] = spec.score_max_examples[task]
    return key


def record_key(spec: StudySpec, cell: Cell, teacher: bool = False) -> str:
    """What produced a record, wherever its run folder lies, and the scoring settings. A
    teacher's is the teacher stage's own fingerprint, which its seed's cells share; a
    student's is the cell's configuration (the settings that differ from the defaults, less
    ``output_dir``) with the DeepSpeed config's text."""
    cfg = cell_config(spec, cell)
    scoring = scoring_key(spec, cell.task, probe=not teacher)
    if teacher:
        # every setting counts here, the bookkeeping ones too, as when the records were made
        return config_hash({"version": RECORD_VERSION, "teacher": stage_fingerprint(cfg, "teacher", settings_dict),
                            "scoring": scoring})
    settings = settings_dict(cfg)
    settings.pop("output_dir", None)
    key = {"version": RECORD_VERSION, "config": settings, "ds": ds_json_text(cfg, None), "scoring": scoring}
    d = cfg.stages.distill
    overrides = {name: ds_json_text(cfg, path) for name, path in (
        *((phase, getattr(d, phase).deepspeed_config) for phase in PHASES),
        ("teacher_deepspeed_config", d.teacher_deepspeed_config)) if path}
    if overrides:  # a per-phase DeepSpeed config's text, like the top-level one's (settings hold only its path)
        key["ds_overrides"] = overrides
    revised = revisions(d)
    if revised:  # a preset or term whose defaults changed: its records made before are stale
        key["revisions"] = revised
    return config_hash(key)


def predicted_classes_path(spec: StudySpec, task: str, setting: str) -> Path:
    """Where tools/predicted_classes.py keeps a group's class counts, measured after its records."""
    return Path(spec.report_dir) / f"predicted_classes_{task}_{setting}.json"


def predicted_later(spec: StudySpec, task: str, setting: str) -> dict:
    """(model, seed, weights sha256) -> {"predicted", "one_class"} from the group's
    predicted-classes file, if there is one: what each model predicts, for records scored
    before records said. Keyed by the weights, so a count never joins a record of other weights."""
    from pipeline.errors import UserError

    path = predicted_classes_path(spec, task, setting)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        return {(m["model"], m["seed"], m["weights_sha256"]): {"predicted": m["predicted"],
                                                               "one_class": data["one_class"]}
                for m in data["models"]}
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: not a predicted-classes file from tools/predicted_classes.py ({err})") from None


def weights_digest(folder: Path) -> Optional[str]:
    """sha256 of a complete output's weights (from its content hashes), None if incomplete."""
    hashes = folder / HASHES
    if not (is_complete(folder) and hashes.is_file()):
        return None
    return json.loads(hashes.read_text()).get("model.safetensors", {}).get("sha256")


def model_folder(cell: Cell, teacher: bool = False) -> Path:
    return cell.run_dir / "teacher" if teacher else cell.student


def load_record(spec: StudySpec, cell: Cell, teacher: bool = False) -> Optional[dict]:
    """The cell's valid record, or None (missing, unreadable, or stale)."""
    path = record_path(spec, cell, teacher)
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("key") != record_key(spec, cell, teacher):
        return None
    local = weights_digest(model_folder(cell, teacher))
    if local is not None and rec.get("weights_sha256") != local:
        return None  # the run here was redone since: its record must be remade
    return rec


def write_record(spec: StudySpec, cell: Cell, data: dict, teacher: bool = False) -> Path:
    """Write a record atomically (two scorers of one record write the same content)."""
    path = record_path(spec, cell, teacher)
    path.parent.mkdir(parents=True, exist_ok=True)
    rec = {"cell": cell.label if not teacher else f"{cell.task}/{cell.setting}/seed{cell.seed}/{TEACHER}",
           "key": record_key(spec, cell, teacher), "weights_sha256": weights_digest(model_folder(cell, teacher)),
           **data}
    replace_text(path, _dumps(rec))
    return path


def _round(value, digits: int = 6):
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, (list, tuple)):
        return [_round(v, digits) for v in value]
    if isinstance(value, dict):
        return {k: _round(v, digits) for k, v in value.items()}
    return value


def _dumps(rec: dict) -> str:
    """Compact but diffable JSON: one line per top-level key, curves on one line each."""
    rec = _round(rec)
    lines = []
    for k, v in rec.items():
        if isinstance(v, dict) and v and k in ("losses", "scores", "flatness"):
            inner = ",\n".join(f"  {json.dumps(ik)}: {json.dumps(iv)}" for ik, iv in v.items())
            lines.append(f" {json.dumps(k)}: {{\n{inner}\n }}")
        else:
            lines.append(f" {json.dumps(k)}: {json.dumps(v)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


# --------------------------------------------------------------------------- making records

# TensorBoard training tags that are bookkeeping, not loss components
_NOT_LOSSES = ("lr", "grad_norm", "samples_per_s", "tokens_per_s", "epoch", "nonfinite_skipped")


def is_loss_tag(tag: str) -> bool:
    """``<phase>/train/<component>`` for a loss component (not ``kd/eval/train/accuracy``)."""
    parts = tag.split("/")
    return len(parts) >= 3 and parts[1] == "train" and parts[-1] not in _NOT_LOSSES


def training_record(cell: Cell, scalars: dict, main_metric: str) -> dict:
    """What the report needs of a finished cell's training: the best periodic dev score (the
    reference code's optimistic pick), the train-dev gap over prediction-layer training, and
    the loss components as logged."""
    results = json.loads((cell.student / "train_results.json").read_text())
    kd = results["phases"].get("kd", {})
    best = kd.get("best_dev_optimistic") or {}
    train = dict(scalars.get(f"kd/eval/train/{main_metric}", []))
    dev = dict(scalars.get(f"kd/eval/dev/{main_metric}", []))
    steps = sorted(set(train) & set(dev))
    last = max(steps) if steps else 1
    gap_curve = [[s / last, train[s] - dev[s]] for s in steps]
    return {"best_dev": best.get("score"),
            "last_dev_during_training": (kd.get("last") or {}).get(f"dev/{main_metric}"),
            "gap_curve": gap_curve, "gap_end": gap_curve[-1][1] if steps else None,
            "losses": {tag: [[s, v] for s, v in pts] for tag, pts in scalars.items() if is_loss_tag(tag)}}


def record_cell(spec: StudySpec, cell: Cell, teacher: bool = False) -> dict:
    """Score the cell's student (or its seed's teacher) on the held-out splits, probe its
    flatness, read its training curves, and write the record. The run must be complete here."""
    import platform

    import torch

    from pipeline.study.scoring import read_scalars, score_folder

    cfg = cell_config(spec, cell)
    scored = score_folder(spec, cfg, model_folder(cell, teacher), probe=not teacher)
    data = {**scored, "scored_on": f"{platform.machine()}, torch {torch.__version__}"}
    if not teacher:
        scalars = read_scalars(cell.run_dir / "tensorboard" / cell.student.name)
        data.update(training_record(cell, scalars, task_spec(cfg.task).main_metric))
    write_record(spec, cell, data, teacher)
    return data


def main(argv: Optional[list] = None) -> int:
    """``python -m pipeline.study.records STUDY LABEL``: record one complete cell (and its
    seed's teacher, if that has no record yet); what tools/report.py runs after each cell."""
    from pipeline.errors import UserError
    from pipeline.models.loading import quiet_libraries
    from pipeline.schema.arguments import OneLineParser
    from pipeline.study.cells import cells
    from pipeline.study.spec import load_study

    parser = OneLineParser(description=main.__doc__.split(";")[0])
    parser.add_argument("study")
    parser.add_argument("label", help="task/setting/seed<N>/method")
    args = parser.parse_args(argv)
    quiet_libraries()
    spec = load_study(args.study)
    cell = next((c for c in cells(spec) if c.label == args.label), None)
    if cell is None:
        raise UserError(f"{args.study}: no cell '{args.label}' in this study")
    for teacher in (True, False):
        if teacher and weights_digest(model_folder(cell, teacher)) is None:
            continue  # the seed's teacher is not here (its record comes from elsewhere)
        if load_record(spec, cell, teacher) is None:
            record_cell(spec, cell, teacher)
            print(f"crild: recorded {record_path(spec, cell, teacher)}", flush=True)
    return 0


if __name__ == "__main__":
    import sys

    from pipeline.errors import cli_entry

    cli_entry(lambda: sys.exit(main()))()
