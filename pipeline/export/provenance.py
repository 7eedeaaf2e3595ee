"""How crild made a model folder, in one sentence for its model card: fine-tuned from which
model, distilled from which teacher by which preset and phases, or the no-teacher baseline;
read from the files crild writes beside the weights (manifest, resolved configuration,
training results), or from the same facts in memory while a stage writes the folder. Local
paths are shown by their last name only: a card is meant to be published."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import yaml

from pipeline.distill.presets import PRESETS
from pipeline.outputs.manifest import RESOLVED_CONFIG, read_manifest

TRAIN_RESULTS = "train_results.json"


def _shown_name(value) -> str:
    """A model as the card names it: a hub name as it is, a local folder by its last name."""
    text = str(value)
    return Path(text).name if text.startswith(("/", "./", "../", "~")) or Path(text).exists() else text


def _read(path: Path, reader) -> Optional[dict]:
    try:
        value = reader(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return value if isinstance(value, dict) else None


def distilled(made: str) -> bool:
    """Whether ``made`` (a ``made_by`` sentence) says the model was distilled from a teacher."""
    return made.startswith("Distilled")


def provenance(source: Path) -> str:
    """How crild made the model in ``source``, from the files it wrote beside the weights."""
    return made_by((read_manifest(source) or {}).get("stage"), _read(source / RESOLVED_CONFIG, yaml.safe_load) or {},
                   _read(source / TRAIN_RESULTS, json.loads) or {})


def made_by(stage: Optional[str], cfg: dict, results: dict) -> str:
    """How crild made a model: by stage ``stage`` (None: not crild) under the resolved
    configuration ``cfg``, with the training results ``results`` it wrote."""
    task = (cfg.get("task") or {}).get("name", "its task")
    teacher = (cfg.get("teacher") or {}).get("model")
    distill = (cfg.get("stages") or {}).get("distill") or {}
    preset = results.get("preset") or distill.get("preset")
    phases = results.get("phases") or {}
    examples = results.get("train_examples") or sum(p.get("examples", 0) for p in phases.values() if isinstance(p, dict))
    on = f" on {task}" + (f" ({examples:,} training examples)" if isinstance(examples, int) and examples else "")
    if stage == "teacher" and teacher:
        if (cfg.get("teacher") or {}).get("random_init"):
            return f"Trained by crild from random weights, with the tokenizer of `{_shown_name(teacher)}`{on}."
        return f"Fine-tuned by crild from `{_shown_name(teacher)}`{on}."
    if stage != "distill":
        return "A model folder crild did not train; crild exported it and checked the export against it."
    if preset in PRESETS and not PRESETS[preset].needs_teacher:  # the baseline, written as the distill stage
        return f"Fine-tuned by crild without a teacher{on}: the no-teacher baseline that a distilled student of " \
               f"its shape is compared with."
    given = distill.get("teacher_model")
    source_teacher = f"`{_shown_name(given)}`" if given else \
        (f"a teacher fine-tuned from `{_shown_name(teacher)}`" if teacher else "its run's teacher")
    how = f" by preset `{preset}`" + (f" (phases {', '.join(phases)})" if phases else "") if preset else ""
    return f"Distilled by crild from {source_teacher}{how}, on {task}."
