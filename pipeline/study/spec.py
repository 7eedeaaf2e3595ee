"""The study file: which methods, seeds, tasks and settings a comparison runs, on which base
configuration, and how the students are scored. Validated with the same machinery as a run
configuration (one-line errors, unknown keys refused).

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

from typing import Any, Optional

from pydantic import Field, PrivateAttr, field_validator, model_validator

from pipeline.data.tasks import TASKS
from pipeline.distill.presets import PRESETS
from pipeline.schema.loading import read_yaml, validate
from pipeline.schema.messages import field_error
from pipeline.schema.paths import resolve_path
from pipeline.schema.types import Float, PositiveInt, Seed, Strict, one_of

Overrides = Optional[dict[str, Any]]  # dotted key -> value, as on the command line


class FlatnessSpec(Strict):
    scales: list[Float] = Field(default_factory=lambda: [0.0, 0.05, 0.1, 0.2],
                                description="relative weight-noise scales sigma")
    draws: PositiveInt = Field(3, description="noise draws per scale")
    examples: PositiveInt = Field(500, description="examples of the split scored per draw")
    split: str = Field("dev", description="the split scored")


class StudySpec(Strict):
    base: str = Field(description="run configuration every cell starts from")
    output_dir: str = Field(description="cells run in <output_dir>/<task>/<setting>/seed<seed>")
    report_dir: str = Field(description="the report and its records/")
    seeds: list[Seed] = Field(description="one cell per seed")
    methods: list[one_of(PRESETS, "preset", always_list=True)] = Field(description="presets compared")
    tasks: dict[one_of(TASKS, "task", always_list=True), Overrides] = Field(description="task -> overrides")
    settings: dict[str, Overrides] = Field(description="setting -> overrides")
    flatness: FlatnessSpec = Field(default_factory=FlatnessSpec, description="the flatness probe")
    eval_splits: list[str] = Field(default_factory=lambda: ["dev", "test"], description="held-out splits scored")
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
    def _known_tasks(self):
        for task in self.score_max_examples:
            if task not in self.tasks:
                raise field_error(f"'{task}' is not one of the study's tasks", "score_max_examples")
        self.tasks = {k: v or {} for k, v in self.tasks.items()}
        self.settings = {k: v or {} for k, v in self.settings.items()}
        return self


def load_study(path: str) -> StudySpec:
    spec = validate(StudySpec, read_yaml(path, "study file"), str(path))
    spec.base = str(resolve_path(spec.base, "base", str(path)))
    spec._source = str(path)
    return spec
