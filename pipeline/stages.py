"""The stage registry: every stage's script, output folder, checkpoint folder and
fingerprint. The configuration's ``pipeline:`` list, the ``crild`` command and the launcher
all read it; adding a stage is one entry here plus its script.

A stage's fingerprint is a hash of everything its output depends on: its settings, the
DeepSpeed config's text, the content of the files and folders its settings name (data, model
folders, vectors) and the fingerprints of the outputs it reads. A stage script
records it in its output's manifest; ``crild run`` skips a stage whose complete output has
the fingerprint it would run with, and redoes it otherwise.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from pipeline.distill.presets import needs_teacher, phase_settings, phases_up_to, resolve_phases, revisions
from pipeline.outputs.atomic import check_replaceable
from pipeline.outputs.input_digest import input_digests
from pipeline.outputs.manifest import recorded_fingerprint
from pipeline.schema.hashing import config_hash, output_settings, settings_dict
from pipeline.schema.types import paths_in
from pipeline.training.ds_files import read_ds_text
from pipeline.training.nonfinite import READ_ONLY_WITH

DISTILL_PHASES = ("ild_supplementary", "ild", "kd")  # the sections of stages.distill that train
FORCED_ENV = "CRILD_FORCED"  # "1" in the stages crild run --force runs


def forced() -> bool:
    """Whether this stage runs under ``crild run --force``: the complete parts of its work that
    a stage keeps between attempts (a distillation's phases, augmentation's shards) are
    redone too, not only its output."""
    return os.environ.get(FORCED_ENV) == "1"


def ds_json_text(cfg, path: str | None) -> str:
    """The text of a DeepSpeed config: ``path`` (a per-stage override) or the run's own."""
    return read_ds_text(path or cfg.deepspeed_config, cfg.source)[1]


def _with_inputs(key: dict, sections: dict) -> str:
    """The hash of ``key`` plus the digests of the files and folders that ``sections``
    (prefix -> configuration section) name: an edited data file or a retrained model folder
    changes the fingerprint as a changed setting does. DeepSpeed configs are in ``key`` by
    their text already. A configuration that names no file (offline aliases and data) keeps
    the fingerprint it had before digests were part of it."""
    digests = input_digests(paths_in_sections(sections))
    return config_hash({**key, "inputs": digests} if digests else key)


# each stage's configuration sections that name files and folders it reads (prefix -> section)
def _teacher_inputs(cfg) -> dict:
    return {"task": cfg.task, "teacher": cfg.teacher, "stages.teacher": cfg.stages.teacher}


def _augment_inputs(cfg) -> dict:
    return {"task": cfg.task, "stages.augment": cfg.stages.augment}


def _distill_inputs(cfg) -> dict:
    return {"task": cfg.task, "student": cfg.student, "stages.distill": cfg.stages.distill}


def _evaluate_inputs(cfg) -> dict:
    return {"task": cfg.task, "stages.evaluate": cfg.stages.evaluate}


def _export_inputs(cfg) -> dict:
    return {"task": cfg.task, "stages.export": cfg.stages.export}


# task settings that change how a model is scored, not the examples it trains on: a stage
# that scores nothing (augmentation, the ILD phases) leaves them out of its fingerprint, so
# that capping the evaluation keeps its output
SCORING_TASK_KEYS = ("metric", "max_eval_examples")


def _unscored(task: dict) -> dict:
    return {k: v for k, v in task.items() if k not in SCORING_TASK_KEYS}


def _teacher_fingerprint(cfg, settings) -> str:
    return _with_inputs({"seed": cfg.seed, "task": settings(cfg.task), "teacher": settings(cfg.teacher),
                         "train": settings(cfg.stages.teacher),
                         "ds": ds_json_text(cfg, cfg.stages.teacher.deepspeed_config)}, _teacher_inputs(cfg))


def _augment_fingerprint(cfg, settings) -> str:
    key = {"seed": cfg.seed, "task": _unscored(settings(cfg.task)), "tokenizer": cfg.student.backbone,
           "augment": settings(cfg.stages.augment)}
    digests = input_digests({"student.backbone": cfg.student.backbone})
    return _with_inputs({**key, "tokenizer_files": digests} if digests else key, _augment_inputs(cfg))


def _distill_fingerprint(cfg, settings, phase: str | None = None) -> str:
    """The distill stage's fingerprint, or with ``phase`` that phase's output's: what the
    phases up to it read (see ``phase_settings``), so that a changed KD setting keeps the complete
    ILD phases, which the KD phase starts from, instead of training them again."""
    d = cfg.stages.distill
    upto = phases_up_to(d, phase)
    distill = settings(d) if phase is None else phase_settings(d, settings(d), phase)
    ds = {p: ds_json_text(cfg, getattr(d, p).deepspeed_config) for p in (DISTILL_PHASES if phase is None else upto)}
    if not needs_teacher(d, resolve_phases(d)):  # the baseline: a retrained teacher leaves it current
        teacher = None
    else:
        teacher = recorded_fingerprint(Path(cfg.output_dir) / "teacher") if not d.teacher_model else d.teacher_model
    reads_augmented = any(p in d.augmented_phases for p in upto)
    augmented = recorded_fingerprint(Path(cfg.output_dir) / "augmented") if reads_augmented else None
    task = _unscored(settings(cfg.task)) if phase not in (None, "kd") else settings(cfg.task)  # ILD scores nothing
    key = {"seed": cfg.seed, "task": task, "student": settings(cfg.student),
           "distill": distill, "ds": ds, "teacher": teacher, "augmented": augmented}
    if revisions(d):  # only where a preset or term changed its defaults: other outputs stay valid
        key["revisions"] = revisions(d)
    if phase is not None:
        key["phase"] = phase
    return _with_inputs(key, _distill_inputs(cfg))


def checkpoint_fingerprints(cfg, name: str) -> tuple[str, ...]:
    """Every fingerprint a current checkpoint of stage ``name`` may record: the stage's, or
    for a distillation, a phase's own (``phase_fingerprints``)."""
    phases = phases_up_to(cfg.stages.distill, None) if STAGES[name].owner == "distill" else []
    return tuple(dict.fromkeys(stage_fingerprints(cfg, name) + tuple(
        f for phase in phases for f in phase_fingerprints(cfg, phase))))


def phase_fingerprints(cfg, phase: str) -> tuple[str, ...]:
    """Every fingerprint a current output of distillation phase ``phase`` may record: its
    own (with bookkeeping settings, as ``stage_fingerprints`` has both), or the whole
    stage's, which phase folders recorded before phases had their own."""
    own = (_distill_fingerprint(cfg, output_settings, phase), _distill_fingerprint(cfg, settings_dict, phase))
    return tuple(dict.fromkeys(own + stage_fingerprints(cfg, "distill")))


def produced_models(cfg) -> tuple[str, ...]:
    """The model folders a run writes under ``output_dir``: the teacher, the distilled student
    (``stages.distill.output``) and the no-teacher baseline. Evaluation and export read these
    by default, and are redone when one of them is rewritten."""
    return tuple(dict.fromkeys(("teacher", cfg.stages.distill.output, BASELINE_OUTPUT)))


def _upstream(cfg) -> dict:
    out = Path(cfg.output_dir)
    return {name: recorded_fingerprint(out / name) for name in produced_models(cfg)}


def _evaluate_fingerprint(cfg, settings) -> str:
    return _with_inputs({"task": settings(cfg.task), "evaluate": settings(cfg.stages.evaluate),
                         "upstream": _upstream(cfg)}, _evaluate_inputs(cfg))


def _export_fingerprint(cfg, settings) -> str:
    return _with_inputs({"task": settings(cfg.task), "export": settings(cfg.stages.export),
                         "upstream": _upstream(cfg)}, _export_inputs(cfg))


@dataclass(frozen=True)
class Stage:
    name: str
    script: str  # under pipeline/
    help: str
    output: Callable  # cfg -> its folder under output_dir
    fingerprint: Callable  # (cfg, settings: settings_dict or output_settings) -> str
    inputs: Callable  # cfg -> {prefix: section} of the sections naming files and folders it reads
    configure: Optional[Callable] = None  # raw configuration -> this stage's, in place (see config.stage_config)
    checkpoints: Callable = lambda cfg: ""  # cfg -> its checkpoint folder under output_dir ("" : none)
    one_process: bool = False  # runs as one process whatever num_ranks says (crild run and submit launch it so)
    writes_as: str = ""  # the stage its output's manifest names, where not its own (the baseline's: distill)
    # cfg -> {stage whose output it reads: the setting that would make it read none}
    reads: Callable = lambda cfg: {}
    reads_any: bool = False  # it reads whichever of those outputs there are (at least one), not all

    @property
    def owner(self) -> str:
        return self.writes_as or self.name

    @property
    def module(self) -> str:
        return f"pipeline.{Path(self.script).stem}"


BASELINE_OUTPUT = "student_finetuned"


def _as_baseline(raw: dict) -> None:
    """The baseline is the distill stage without a teacher: the student fine-tuned on the
    target task alone, trained as the student's KD phase with ``stages.baseline``'s keys
    over it. Its output takes the name that the run's own distill output may not."""
    stages = raw.setdefault("stages", {})
    distill = stages.setdefault("distill", {})
    # no ILD phase: nothing to mix, and the ILD phases' settings are not the baseline's (a changed one leaves it current)
    distill.update(preset="finetune", output=BASELINE_OUTPUT, phases=None, supplementary=[], augmented_phases=[],
                   mixup={}, consistency={}, ild_supplementary={}, ild={})
    own = {key: value for key, value in (stages.get("baseline") or {}).items() if value is not None}
    kd = {**(distill.get("kd") or {}), **own}
    for key, (decider, reading) in READ_ONLY_WITH.items():
        if key not in own and kd.get(decider) not in reading:
            kd.pop(key, None)  # the KD phase's, which reads it; the baseline's own decider does not
    distill["kd"] = kd


# folders under output_dir that belong to crild: the stages' fixed outputs and the run's own
# bookkeeping; stages.distill.output can be none of them
RESERVED_FOLDERS = ("teacher", "augmented", "augmented.shards", "eval", "export", "checkpoints", "tensorboard",
                    "logs")


def _distill_reads(cfg) -> dict[str, str]:
    d = cfg.stages.distill
    return {**({} if d.teacher_model else {"teacher": "stages.distill.teacher_model"}),
            **({"augment": "stages.distill.augmented_phases: []"} if d.augmented_phases else {})}


def _scoring_reads(section):
    """The run's model folders, for a scoring stage whose ``section`` lists no models."""
    return lambda cfg: {} if getattr(cfg.stages, section).models else dict.fromkeys(
        ("teacher", "distill", "baseline"), f"stages.{section}.models")


STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("teacher", "stage1_teacher.py", "stage 1: fine-tune the teacher", lambda c: "teacher",
          _teacher_fingerprint, _teacher_inputs, checkpoints=lambda c: "checkpoints/teacher"),
    Stage("augment", "stage2_augment.py", "stage 2: TinyBERT-style augmented data", lambda c: "augmented",
          _augment_fingerprint, _augment_inputs,
          reads=lambda c: {"teacher": "stages.augment.teacher_logits: false"} if c.stages.augment.teacher_logits
          else {}),
    Stage("distill", "stage3_distill.py", "stage 3: distil the teacher into the student",
          lambda c: c.stages.distill.output, _distill_fingerprint, _distill_inputs,
          checkpoints=lambda c: f"checkpoints/{c.stages.distill.output}", reads=_distill_reads),
    Stage("baseline", "stage3_distill.py", "the same student fine-tuned without a teacher, for comparison",
          lambda c: c.stages.distill.output, _distill_fingerprint, _distill_inputs, _as_baseline,
          checkpoints=lambda c: f"checkpoints/{c.stages.distill.output}", writes_as="distill"),
    Stage("evaluate", "stage4_evaluate.py", "stage 4: evaluate model folders on dev/test", lambda c: "eval",
          _evaluate_fingerprint, _evaluate_inputs, reads=_scoring_reads("evaluate"), reads_any=True),
    Stage("export", "stage5_export.py", "stage 5: export ONNX (and INT8), check parity, time it", lambda c: "export",
          _export_fingerprint, _export_inputs, one_process=True, reads=_scoring_reads("export"),
          reads_any=True),
]}


def check_output_folder(cfg, name: str) -> None:
    """Stage ``name``'s output folder is new or one that stage wrote, checked when the stage
    starts (and by ``crild run`` before its first stage), where a folder of the user's in
    its place was refused only once the stage had trained and came to write it. ``cfg`` is
    the stage's own (``stage_config``)."""
    stage = STAGES[name]
    check_replaceable(Path(cfg.output_dir) / stage.output(cfg), stage.owner)


def in_running_order(names) -> list[str]:
    """Stage ``names`` in the order stages run, whatever order they were given in
    (``crild run --only evaluate --only teacher`` trains the teacher first)."""
    return [name for name in STAGES if name in names]


FILE_SUFFIXES = frozenset({".npy", ".txt", ".parquet", ".json", ".jsonl", ".csv", ".tsv", ".yaml", ".gz"})


def missing_inputs(cfg, name: str) -> list[tuple[str, str]]:
    """(key, path) of each file or folder stage ``name`` reads that is not there, for ``cfg``
    as that stage runs it: a ``crild run`` checks them all before its first stage, so a
    missing input of a late stage does not wait for the hours of the stages before it.
    Checked are the keys that always name a local path (``data_dir``, ``vocab``) and any value
    written as one (absolute, ``./``, ``../``, or with a file suffix such as ``.npy``); a bare name may be an offline alias or a hub
    model, which only the stage can resolve, and a path under ``output_dir`` may be written by
    an earlier stage of the run."""
    out = Path(cfg.output_dir).absolute()
    missing = []
    for key, path in paths_in_sections(STAGES[name].inputs(cfg)).items():
        local = (key.endswith(("data_dir", "vocab")) or Path(path).is_absolute() or path.startswith(("./", "../"))
                 or Path(path).suffix in FILE_SUFFIXES)
        where = Path(path).absolute()
        if local and not where.exists() and out not in where.parents and where != out:
            missing.append((key, path))
    return missing


def paths_in_sections(sections: dict) -> dict[str, str]:
    """dotted key -> path of every file or folder ``sections`` name, DeepSpeed configs aside
    (they are read, and checked, when the configuration loads)."""
    paths = {}
    for prefix, section in sections.items():
        paths.update({k: v for k, v in paths_in(section, prefix).items() if not k.endswith("deepspeed_config")})
    return paths


def stage_fingerprint(cfg, name: str, settings=output_settings) -> str:
    """What stage ``name``'s output depends on, for ``cfg`` as that stage runs it (the
    baseline's configuration: see ``pipeline.config.stage_config``): its settings (less the
    bookkeeping ones, with ``output_settings``), its inputs' digests and manifests."""
    return STAGES[name].fingerprint(cfg, settings)


def stage_fingerprints(cfg, name: str) -> tuple[str, ...]:
    """Every fingerprint an up-to-date output or checkpoint of stage ``name`` may record:
    the current one, and the one of crild versions whose fingerprints still held the
    bookkeeping settings (outputs written by them stay valid)."""
    return tuple(dict.fromkeys((stage_fingerprint(cfg, name), stage_fingerprint(cfg, name, settings_dict))))
