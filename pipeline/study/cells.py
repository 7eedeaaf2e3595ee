"""A study's cells: task x setting x seed x method, each one ``crild run`` of the study's
base configuration with the cell's overrides, in its seed's run folder (a seed's methods
share its teacher)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pipeline.config import RunConfig, load_config
from pipeline.errors import UserError
from pipeline.launch.local import stage_is_done
from pipeline.study.spec import StudySpec

STUDENT_PREFIX = "student_"


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


def _overrides(mapping: dict) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in mapping.items()]


def _method_overrides(spec: StudySpec, method: str, task: str) -> list[str]:
    """A preset, or a variant: its preset, then its overrides, then its task's."""
    variant = spec.variants.get(method)
    if variant is None:
        return [f"stages.distill.preset={method}"]
    return [f"stages.distill.preset={variant.preset}", *_overrides(variant.overrides),
            *_overrides(variant.tasks.get(task, {}))]


def cells(spec: StudySpec) -> list[Cell]:
    """Every cell, one setting's seeds complete before the next setting starts."""
    out = []
    for task, task_over in spec.tasks.items():
        for setting, setting_over in spec.settings.items():
            for seed in spec.seeds:
                run_dir = Path(spec.output_dir) / task / setting / f"seed{seed}"
                for method in spec.methods:
                    if not spec.runs_in(method, setting):
                        continue
                    over = [f"output_dir={run_dir}", f"seed={seed}", f"task.name={task}", *_overrides(task_over),
                            *_overrides(setting_over), *_method_overrides(spec, method, task),
                            f"stages.distill.output={STUDENT_PREFIX}{method}"]
                    out.append(Cell(task, setting, seed, method, run_dir, tuple(over)))
    return out


def cell_config(spec: StudySpec, cell: Cell) -> RunConfig:
    """The cell's run configuration: the study's base with the cell's overrides; a mistake
    names the study file and the cell, since it may be the study's (a task name) as well as
    the base's."""
    try:
        return load_config(spec.base, list(cell.overrides))
    except UserError as err:
        raise UserError(f"{spec.source}: cell {cell.label}: {err}") from None


def cell_done(spec: StudySpec, cell: Cell, known_intact: Optional[set] = None) -> bool:
    """Every stage of the cell complete and intact; pass the same ``known_intact`` set to
    hash a shared output (the seed's teacher) once rather than once per method."""
    cfg = cell_config(spec, cell)
    return all(stage_is_done(cfg, name, known_intact) for name in cfg.pipeline)
