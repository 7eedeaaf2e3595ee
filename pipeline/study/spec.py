"""The study file: which methods, seeds, tasks and settings a comparison runs, on which base
configuration, and how the students are scored. Validated with the same machinery as a run
configuration (one-line errors, unknown keys refused).

    base: jobs/report_base.yaml           # run configuration every cell starts from
    output_dir: runs/report               # cells go to <output_dir>/<task>/<setting>/seed<seed>
    report_dir: reports/offline
    seeds: [42, 43, 44]
    methods: [kd, pkd, tinybert, minilmv2, l-ild, cr-ild, cr-ild-no-consistency, l-ild-supp]
    variants:                             # methods that are a preset with overrides
      l-ild-supp:
        preset: l-ild
        overrides: {stages.distill.ild_supplementary.epochs: 3}
        tasks: {rotten_tomatoes: {stages.distill.supplementary: [{task: {name: rotten_tomatoes_plot}}]}}
        settings: [few-sample-1000]       # run in these settings only (default: all)
    tasks: {rotten_tomatoes: {}, snli: {task.max_length: 128}}    # task -> overrides
    settings: {few-sample-1000: {task.few_sample: 1000}}           # setting -> overrides
    flatness: {scales: [0, 0.05, 0.1, 0.2], draws: 3, examples: 500, split: dev}
    eval_splits: [dev, test]
    score_max_examples: {snli: 3000}      # optional: score at most this many of each split (first N)
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, Field, PrivateAttr, field_validator, model_validator

from pipeline.config import TaskLabel
from pipeline.distill.presets import PRESETS
from pipeline.errors import UserError, not_a_folder
from pipeline.outputs.lock import shared_folder
from pipeline.outputs.ownership import FOREIGN, folder
from pipeline.schema.loading import read_yaml, validate
from pipeline.schema.messages import field_error, suggest
from pipeline.schema.paths import resolve_path
from pipeline.schema.types import Float, PathText, PositiveInt, Seed, Strict, listing, one_of

# what the study sets for each cell itself: an override of one would make cells share a run
# folder, or run another seed, task or method than their label says, without a word
CELL_KEYS = {"output_dir": "the study's output_dir and the cell's task, setting and seed", "seed": "the study's seeds",
             "task.name": "the study's tasks", "stages.distill.preset": "the study's methods",
             "stages.distill.output": "the cell's method"}


def _dotted_keys(mapping: dict, prefix: str = ""):
    """Every key an override sets, a section given as a mapping included (``task: {name: x}``
    sets task.name)."""
    for key, value in mapping.items():
        yield f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _dotted_keys(value, f"{prefix}{key}.")


def _not_set_per_cell(value: Optional[dict]) -> Optional[dict]:
    for key in _dotted_keys(value or {}):
        if key in CELL_KEYS:
            raise field_error(f"'{key}' is set for each cell from {CELL_KEYS[key]}; a study's overrides cannot "
                              f"change it")
    return value


Overrides = Annotated[Optional[dict[str, Any]], AfterValidator(_not_set_per_cell)]  # dotted key -> value


TEACHER = "teacher"  # each seed's teacher: its record file and its row in the report


def _plain_name(value: str) -> str:
    """A name that becomes one folder or file name under output_dir and report_dir: no path
    separators, no '.' or '..', nothing hidden."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", value):
        raise field_error(f"expected a plain name (letters, digits, '_', '-', '+', '.'), got {value!r}: it names "
                          f"a folder of the study's cells and records")
    return value


def _variant_name(value: str) -> str:
    """A variant names a student folder (``student_<name>``) and record files: a plain name,
    not a preset's, nor the teacher's."""
    _plain_name(value)
    if value in PRESETS:
        raise field_error(f"'{value}' is a preset; a variant needs a name of its own")
    if value == TEACHER:
        raise field_error(f"'{TEACHER}' names each seed's teacher record; a variant needs a name of its own")
    return value


class FlatnessSpec(Strict):
    scales: listing(Float, "scale", non_empty=True) = Field(default_factory=lambda: [0.0, 0.05, 0.1, 0.2],
                                                            description="relative weight-noise scales sigma")
    draws: PositiveInt = Field(3, description="noise draws per scale")
    examples: PositiveInt = Field(500, description="examples of the split scored per draw")
    split: str = Field("dev", description="the split scored")


class Variant(Strict):
    """A method of the study that is a preset with overrides (a supplementary task, a
    sensitivity setting), named like a preset in ``methods``."""

    preset: one_of(PRESETS, "preset", always_list=True) = Field(description="the method it varies")
    overrides: Overrides = Field(default_factory=dict, description="dotted key -> value, in every task")
    tasks: dict[TaskLabel, Overrides] = Field(
        default_factory=dict, description="task -> overrides for that task only (e.g. its supplement)")
    settings: Optional[listing(str, "setting", non_empty=True)] = Field(
        None, description="the settings it runs in (null: all)")
    description: str = Field("", description="what it varies and why, for the report")


class FindingSpec(Strict):
    """A comparison the report checks, paired by seed (see pipeline/study/findings.py)."""

    statement: str = Field(description="what would hold")
    better: str = Field(description="the method the statement favours")
    worse: str = Field(description="the method it is compared with")
    quantity: Literal["test", "gap", "less_gap", "flat"] = Field(
        "test", description="test: held-out score; gap: better has the larger train-dev gap; less_gap: the "
                            "smaller; flat: the smaller drop under weight noise")


class SweepPoint(Strict):
    x: Float = Field(description="the swept value")
    method: str = Field(description="the method (preset or variant) run at it")


class SweepSpec(Strict):
    """One setting varied across methods: a table and a plot of test score and train-dev gap
    against it, each point compared with ``reference`` (paired by seed)."""

    name: Annotated[str, AfterValidator(_variant_name)] = Field(description="names the plot file")
    x: str = Field(description="the axis label")
    reference: str = Field(description="the method every point is compared with")
    log_x: bool = Field(False, description="a symmetric-log x axis (for weights spanning decades, 0 included)")
    points: list[SweepPoint] = Field(description="x -> method")


class StudySpec(Strict):
    base: PathText = Field(description="run configuration every cell starts from")
    output_dir: PathText = Field(description="cells run in <output_dir>/<task>/<setting>/seed<seed>")
    report_dir: PathText = Field(description="the report and its records/")
    seeds: listing(Seed, "seed", non_empty=True) = Field(description="one cell per seed")
    methods: listing(str, "method", non_empty=True) = Field(description="presets and variants compared")
    variants: dict[Annotated[str, AfterValidator(_variant_name)], Variant] = Field(
        default_factory=dict, description="name -> a preset with overrides, usable in methods")
    tasks: dict[TaskLabel, Overrides] = Field(description="task -> overrides")
    settings: dict[Annotated[str, AfterValidator(_plain_name)], Overrides] = Field(
        description="setting -> overrides (a setting names its cells' folders)")
    title: str = Field("Distillation methods compared in the paper's overfitting settings",
                       description="the report's title")
    findings: Optional[list[FindingSpec]] = Field(
        None, description="the comparisons the report checks (null: the paper's findings)")
    sweeps: list[SweepSpec] = Field(default_factory=list, description="settings varied across methods")
    flatness: FlatnessSpec = Field(default_factory=FlatnessSpec, description="the flatness probe")
    eval_splits: listing(str, "split", non_empty=True) = Field(default_factory=lambda: ["dev", "test"], description="held-out splits scored")
    score_max_examples: dict[str, PositiveInt] = Field(
        default_factory=dict, description="task -> score at most this many examples of each split (the first)")

    _source: str = PrivateAttr("")

    @property
    def source(self) -> str:
        return self._source

    @field_validator("seeds", mode="before")
    @classmethod
    def _integers(cls, value):
        if isinstance(value, list) and not all(isinstance(s, int) and not isinstance(s, bool) for s in value):
            raise field_error(f"expected a list of integers, got {value!r}")
        return value

    @model_validator(mode="after")
    def _cells_to_run(self):
        for key in ("tasks", "settings"):
            if not getattr(self, key):
                raise field_error(f"expected at least one {key[:-1]}, got none", key)
        return self

    @model_validator(mode="after")
    def _flatness_on_a_scored_split(self):
        if self.flatness.split not in self.eval_splits:  # the probe reads the split the scoring loaded
            raise field_error(f"'{self.flatness.split}' is not one of eval_splits ({', '.join(self.eval_splits)}); "
                              f"expected one of them", "flatness.split")
        return self

    @model_validator(mode="after")
    def _known_tasks(self):
        for task in self.score_max_examples:
            if task not in self.tasks:
                raise field_error(f"'{task}' is not one of the study's tasks", "score_max_examples")
        self.tasks = {k: v or {} for k, v in self.tasks.items()}
        self.settings = {k: v or {} for k, v in self.settings.items()}
        known = (*PRESETS, *self.variants)
        for i, method in enumerate(self.methods):
            if method not in known:
                hint = suggest(method, known)
                raise field_error(f"unknown method '{method}'{hint} (a preset, or one of variants: "
                                  f"{', '.join(self.variants) or 'none defined'})", f"methods[{i}]")
        for name, variant in self.variants.items():
            for task in variant.tasks:
                if task not in self.tasks:
                    raise field_error(f"'{task}' is not one of the study's tasks", f"variants.{name}.tasks")
            for setting in variant.settings or []:
                if setting not in self.settings:
                    raise field_error(f"unknown setting '{setting}'{suggest(setting, self.settings)}",
                                      f"variants.{name}.settings")
            variant.overrides = variant.overrides or {}
            variant.tasks = {k: v or {} for k, v in variant.tasks.items()}
        named = [(f"findings[{i}].{side}", getattr(f, side)) for i, f in enumerate(self.findings or [])
                 for side in ("better", "worse")]
        named += [(f"sweeps[{i}].reference", sw.reference) for i, sw in enumerate(self.sweeps)]
        named += [(f"sweeps[{i}].points[{j}].method", pt.method) for i, sw in enumerate(self.sweeps)
                  for j, pt in enumerate(sw.points)]
        for key, method in named:
            if method not in self.methods:
                raise field_error(f"'{method}' is not one of the study's methods{suggest(method, self.methods)}", key)
        return self

    def runs_in(self, method: str, setting: str) -> bool:
        variant = self.variants.get(method)
        return variant is None or variant.settings is None or setting in variant.settings


RUN_ONLY_KEYS = frozenset({"task", "teacher", "student", "stages", "pipeline"})  # a run configuration's sections


def load_study(path: str) -> StudySpec:
    raw = read_yaml(path, "study file")
    if "base" not in raw and RUN_ONLY_KEYS & raw.keys():
        raise UserError(f"{path}: is a run configuration (it has {', '.join(sorted(RUN_ONLY_KEYS & raw.keys()))}), "
                        f"not a study file; run it with `crild run {path}`, or give crild study a study file that names "
                        f"it as its base (see jobs/studies/)")
    spec = validate(StudySpec, raw, str(path))
    spec.base = str(resolve_path(spec.base, "base", str(path)))
    spec._source = str(path)
    _check_base_pipeline(spec)
    _check_folders(spec)
    return spec


def _holds_a_report(path: Path) -> bool:
    try:
        return "findings" in json.loads((path / "summary.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def _check_folders(spec: StudySpec) -> None:
    """``output_dir`` is not a folder shared with everything else (cells go to
    ``<output_dir>/<task>/...``). The report writes README.md, index.html, summary.json and
    plots into ``report_dir``, replacing files of those names: a folder is accepted when it is
    new or empty, holds only the records of cells run so far, or holds a report crild wrote
    (its summary.json)."""
    for key in ("output_dir", "report_dir"):  # a file there, or on the way there: the first mkdir's traceback
        problem = not_a_folder(getattr(spec, key))
        if problem:
            raise UserError(f"{spec.source}: {key}: '{getattr(spec, key)}' {problem}")
    what = shared_folder(Path(spec.output_dir))
    if what:
        raise UserError(f"{spec.source}: output_dir: '{spec.output_dir}' is {what}; the study makes a folder per task "
                        f"there (<output_dir>/<task>/<setting>/seed<N>): give it a folder of its own (runs/NAME)")
    out = Path(spec.report_dir)
    found = folder(out.resolve(), _holds_a_report, ignore=frozenset({"records"}))  # a link to a folder is fine here
    if found.state == FOREIGN:
        raise UserError(f"{spec.source}: report_dir: '{out}' holds files crild did not write ({found.shown()}); the report "
                        f"writes README.md, index.html, summary.json and plots there, replacing any of those names: "
                        f"expected a new or empty folder, or one holding a crild report")


def _check_base_pipeline(spec: StudySpec) -> None:
    """Every cell trains and scores a student: a base configuration without the distill stage
    would run its teachers, then fail each cell when scoring a student that was never made."""
    from pipeline.config import RunConfig

    stages = read_yaml(spec.base).get("pipeline", RunConfig.model_fields["pipeline"].default_factory())
    if isinstance(stages, list) and "distill" not in stages:  # other errors: the cells' validation names them
        raise UserError(f"{spec.source}: base: the pipeline of '{spec.base}' is [{', '.join(map(str, stages))}]; "
                        f"every cell trains a student, so expected 'distill' in it")
