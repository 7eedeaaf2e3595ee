"""Chain a run's stages locally, each as its own process (the deepspeed launcher for more
than one rank), skipping stages whose output is complete for the same configuration."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.config import RunConfig, config_hash, resolve_path, to_dict
from pipeline.errors import UserError
from pipeline.outputs import MANIFEST, is_complete

PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Stage:
    name: str
    script: str
    output: str  # folder under output_dir
    fingerprint: Callable[[RunConfig], str]


def _ds_json_text(cfg: RunConfig, path: str | None) -> str:
    return resolve_path(path or cfg.deepspeed_config, "deepspeed_config", cfg.source).read_text()


def _teacher_fingerprint(cfg: RunConfig) -> str:
    return config_hash({"seed": cfg.seed, "task": to_dict(cfg.task), "teacher": to_dict(cfg.teacher),
                        "train": to_dict(cfg.stages.teacher),
                        "ds": _ds_json_text(cfg, cfg.stages.teacher.deepspeed_config)})


def _upstream(cfg: RunConfig, names: tuple[str, ...]) -> dict:
    out = {}
    for name in names:
        manifest = Path(cfg.output_dir) / STAGES[name].output / MANIFEST
        out[name] = json.loads(manifest.read_text()).get("fingerprint") if manifest.is_file() else None
    return out


def _evaluate_fingerprint(cfg: RunConfig) -> str:
    return config_hash({"task": to_dict(cfg.task), "evaluate": to_dict(cfg.stages.evaluate),
                        "upstream": _upstream(cfg, ("teacher",))})


STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("teacher", "stage1_teacher.py", "teacher", _teacher_fingerprint),
    Stage("evaluate", "stage4_evaluate.py", "eval", _evaluate_fingerprint),
]}


def stage_fingerprint(cfg: RunConfig, name: str) -> str:
    return STAGES[name].fingerprint(cfg)


def stage_is_done(cfg: RunConfig, name: str) -> bool:
    folder = Path(cfg.output_dir) / STAGES[name].output
    if not is_complete(folder):
        return False
    manifest = json.loads((folder / MANIFEST).read_text())
    return manifest.get("fingerprint") == stage_fingerprint(cfg, name)


def stage_command(cfg: RunConfig, name: str, config_path: str, overrides: list[str]) -> list[str]:
    script = str(PACKAGE_DIR / STAGES[name].script)
    args = ["--config", config_path, *overrides]
    if cfg.num_ranks > 1:
        launcher = Path(sys.executable).with_name("deepspeed")
        return [str(launcher), "--num_gpus", str(cfg.num_ranks), script, *args]
    return [sys.executable, script, *args]


def run_pipeline(cfg: RunConfig, config_path: str, overrides: list[str], force: bool = False) -> int:
    from pipeline.trainer import EXIT_PREEMPTED

    for name in cfg.pipeline:
        if not force and stage_is_done(cfg, name):
            print(f"crild: {name}: complete for this configuration, skipped "
                  f"({Path(cfg.output_dir) / STAGES[name].output})", flush=True)
            continue
        cmd = stage_command(cfg, name, config_path, overrides)
        print(f"crild: {name}: running {' '.join(cmd)}", flush=True)
        code = subprocess.run(cmd, env=os.environ.copy()).returncode
        if code == EXIT_PREEMPTED:
            print(f"crild: {name}: stopped on request after a checkpoint; run again to resume", flush=True)
            return code
        if code != 0:
            raise UserError(f"stage '{name}' failed with exit code {code}; see the output above")
    return 0
