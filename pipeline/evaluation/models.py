"""The model folders a scoring stage reads (evaluation, export): the run's own or those
configured, and loading one as a classifier checked against the task."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from pipeline.errors import UserError
from pipeline.models.hub_models import split_pin
from pipeline.models.label_order import align_outputs
from pipeline.models.loading import (
    check_labels,
    check_max_length,
    load_pretrained,
    read_model_config,
    require_trained,
    resolve_model,
)
from pipeline.outputs.atomic import verified
from pipeline.outputs.manifest import MANIFEST, is_complete, read_manifest
from pipeline.outputs.trust import trust_note


def run_models(cfg, configured: list[str], where: str, produced: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    """name -> folder of the ``configured`` models (checked by the trust rule, with their
    notes), or of every complete one of ``produced``, the model folders the run writes under
    its ``output_dir`` (``pipeline.stages.produced_models``), verified against their hashes."""
    if configured:
        folders = [resolve_model(m, where) for m in configured]
        notes = [trust_note(folder, where) for folder in folders]
        return dict(zip(model_names(configured, folders, where), map(str, configured))), [n for n in notes if n]
    out = Path(cfg.output_dir)
    found = {name: str(verified(out / name, f"the run's {name}")) for name in produced
             if is_complete(out / name)}
    if not found:
        raise UserError(f"{out}: no complete teacher or student to {where.split('.')[1]}; run the earlier stages "
                        f"first or set {where}")
    # crild renames an output into place only when complete: one there without a readable
    # manifest is damaged or not crild's, and was left out without a word
    notes = [f"note: {out / name} is not a complete output of this run (its {MANIFEST} is missing or cannot be "
             f"read): left out; name it in {where} to include it"
             for name in produced if (out / name).is_dir() and name not in found]
    given = cfg.stages.distill.teacher_model
    if given:  # it may be a backbone (ILD-only phases), which cannot be scored: named, not added
        notes.append(f"note: the student's teacher, stages.distill.teacher_model '{given}', is not among the models "
                     f"a run {where.split('.')[1]}s by default; name it in {where} beside the run's models to compare "
                     f"them")
    return found, notes


def teachers(cfg, models: dict[str, str]) -> list[str]:
    """The names among ``models`` (name -> folder as configured) that are teachers: the run's
    own (the folder its distillation reads: ``stages.distill.teacher_model``, or
    ``<output_dir>/teacher``) or one that a crild teacher stage wrote (its manifest says so),
    in order. Sizes and speeds are read against the first, and export makes an INT8 copy of
    none: a teacher is what distillation compresses, not what is served. A name alone says
    nothing: two runs' teachers are listed as ``run1-teacher`` and ``run2-teacher``."""
    given = cfg.stages.distill.teacher_model
    own = {Path(cfg.output_dir, "teacher").resolve()}
    if given and Path(given).expanduser().exists():
        own.add(Path(given).expanduser().resolve())
    found = []
    for name, path in models.items():
        local = Path(path).expanduser()
        folder = local.resolve() if local.exists() else None
        written = (read_manifest(folder) or {}).get("stage") if folder is not None and folder.is_dir() else None
        if path == given or folder in own or written == "teacher":
            found.append(name)
    return found


def model_names(configured: list[str], folders: list[str], where: str) -> list[str]:
    """The name each configured model is reported (and exported) under: its folder's name,
    with as many parent folders as it takes to tell apart folders of the same name
    (``run1-student``, ``run2-student``), so that no model's results replace another's.
    Names are read from the path as written (a link keeps its own name); the same folder
    written two ways is refused."""
    real = [Path(f).resolve() for f in folders]
    for i, path in enumerate(real):
        if path in real[:i]:
            raise UserError(f"{where}: '{configured[real.index(path)]}' and '{configured[i]}' are the same folder; "
                            f"expected each model folder once")
    pins = [_pin(str(m)) for m in configured]
    repeated = [repo for repo, _ in pins if repo is not None]
    written = [str(m) if repo is None else repo if repeated.count(repo) == 1 else f"{repo}@{commit[:12]}"
               for m, (repo, commit) in zip(configured, pins)]
    paths = [Path(os.path.abspath(os.path.expanduser(m))) for m in written]
    return distinct_labels([path.parts[1:] or ("root",) for path in paths])


def _pin(name: str) -> tuple:
    """(hub name, commit) of a pinned hub name, which is reported by its hub name (with the
    commit's first digits where two commits of one model are compared); (None, None) for
    anything else."""
    if Path(name).expanduser().exists():
        return None, None
    try:
        repo, commit = split_pin(name)
    except ValueError:
        return None, None
    return (repo, commit) if commit else (None, None)


def distinct_labels(parts: list[tuple[str, ...]]) -> list[str]:
    """A label per path (its folder names, without the root): the last name, and, for labels
    that clash, one more parent folder at a time until none does; where even whole paths
    joined with '-' clash (``/a-b/x`` and ``/a/b/x``), numbered."""
    depth = [1] * len(parts)
    while True:
        labels = ["-".join(p[-d:]) for p, d in zip(parts, depth)]
        clashing = [i for i, label in enumerate(labels) if labels.count(label) > 1]
        growing = [i for i in clashing if depth[i] < len(parts[i])]
        if not growing:
            break
        for i in growing:
            depth[i] += 1
    for label in {labels[i] for i in clashing}:
        for k, i in enumerate([i for i, other in enumerate(labels) if other == label], start=1):
            labels[i] = f"{label}-{k}"
    return labels


def load_eval_model(path: str, spec, dtype: torch.dtype, device: torch.device, max_length: int,
                    where: str = "stages.evaluate.models"):
    """The trained classifier in ``path``, checked against the task, in eval mode on ``device``."""
    from transformers import AutoModelForSequenceClassification

    folder = resolve_model(path, where)
    config = read_model_config(folder, where)
    check_labels(config, spec, path, where)  # before the weights, which would not fit another head
    model, info = load_pretrained(AutoModelForSequenceClassification, folder, where, config=config, dtype=dtype,
                                  output_loading_info=True)
    require_trained(info["missing_keys"], folder, where, spec)
    align_outputs(model, model.config, spec, path, where)
    check_max_length(model.config, max_length, path)
    return model.to(device).eval()
