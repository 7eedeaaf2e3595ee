"""The README.md of an exported folder (its model card): what the model is, how crild made
it, how it scored and how fast it ran where it was exported, and the lines that serve it.
The Hugging Face hub shows the file as the model's page and reads its YAML header; anyone
handed the folder alone learns from it what it classifies and how to call it.

Everything in it comes from the export itself (results.json's row of the folder) and from the
files crild wrote beside the weights it exported (manifest, resolved configuration, training
results); a folder crild did not train is said to be one. Local paths are shown by their last
name only: a card is meant to be published.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml
from huggingface_hub import ModelCardData

from pipeline import __version__
from pipeline.distill.presets import PRESETS
from pipeline.models.loading import position_limit
from pipeline.outputs.manifest import RESOLVED_CONFIG, read_manifest

CARD = "README.md"

# the lines that serve an exported folder with ONNX Runtime and its tokenizer alone; the
# README's "Serving the student" shows them for the demo's INT8 student
_SERVE = '''import json
import numpy as np
import onnxruntime as ort
from transformers import AutoTokenizer

folder = "{folder}"
tokenizer = AutoTokenizer.from_pretrained(folder)
session = ort.InferenceSession(f"{{folder}}/model.onnx", providers=["CPUExecutionProvider"])
enc = tokenizer({texts}, return_tensors="np")
logits = session.run(["logits"], {{i.name: enc[i.name].astype(np.int64) for i in session.get_inputs()}})[0]
{answer}
'''
_LABEL = 'print(json.load(open(f"{folder}/config.json"))["id2label"][str(int(logits.argmax(-1)[0]))])'
_SCORE = "print(float(logits[0, 0]))"


def serving_code(folder: str, pair: bool, regression: bool) -> str:
    """Python that classifies one example with the exported ``folder``: a sentence (or a pair)
    in, a label name (or a regression's score) out."""
    texts = '["A gripping, beautifully acted film."]' if not pair else \
        '["A gripping, beautifully acted film."], ["The film is worth seeing."]'
    return _SERVE.format(folder=folder, texts=texts, answer=_SCORE if regression else _LABEL)


@dataclass
class ExportedModel:
    """One exported folder and what the card says about it."""
    model: str  # the model's name in results.json and latency.md (``student``)
    source: Path  # the model folder it was exported from
    config: object  # the transformers config of that model
    parameters: int
    inputs: list[str]  # the ONNX graph's inputs
    int8: bool

    @property
    def folder(self) -> str:
        """The folder's name under export/ (``student``, ``student-int8``)."""
        return f"{self.model}-int8" if self.int8 else self.model


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


def distilled(source: Path) -> bool:
    """Whether crild distilled the model in ``source`` from a teacher."""
    return provenance(source).startswith("Distilled")


def provenance(source: Path) -> str:
    """How crild made the model in ``source``, from the files it wrote beside the weights."""
    manifest = read_manifest(source) or {}
    cfg = _read(source / RESOLVED_CONFIG, yaml.safe_load) or {}
    results = _read(source / "train_results.json", json.loads) or {}
    task = (cfg.get("task") or {}).get("name", "its task")
    teacher = (cfg.get("teacher") or {}).get("model")
    distill = (cfg.get("stages") or {}).get("distill") or {}
    preset = results.get("preset") or distill.get("preset")
    phases = results.get("phases") or {}
    examples = results.get("train_examples") or sum(p.get("examples", 0) for p in phases.values() if isinstance(p, dict))
    on = f" on {task}" + (f" ({examples:,} training examples)" if isinstance(examples, int) and examples else "")
    if manifest.get("stage") == "teacher" and teacher:
        return f"Fine-tuned by crild from `{_shown_name(teacher)}`{on}."
    if manifest.get("stage") != "distill":
        return "A model folder crild did not train; crild exported it and checked the export against it."
    if preset in PRESETS and not PRESETS[preset].needs_teacher:  # the baseline, written as the distill stage
        return f"Fine-tuned by crild without a teacher{on}: the no-teacher baseline that a distilled student of " \
               f"its shape is compared with."
    given = distill.get("teacher_model")
    source_teacher = f"`{_shown_name(given)}`" if given else \
        (f"a teacher fine-tuned from `{_shown_name(teacher)}`" if teacher else "its run's teacher")
    how = f" by preset `{preset}`" + (f" (phases {', '.join(phases)})" if phases else "") if preset else ""
    return f"Distilled by crild from {source_teacher}{how}, on {task}."


def _count(n, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _number(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def model_card(model: ExportedModel, row: dict, torch_row: dict, spec, split: str, metric: str,
               threads: int) -> str:
    """The card of one exported folder: ``row`` is its results.json row, ``torch_row`` the
    PyTorch row of the model it was exported from; ``spec`` the task."""
    config = model.config
    tags = ["onnx", "crild"] + (["knowledge-distillation"] if distilled(model.source) else []) + \
        (["int8"] if model.int8 else [])
    header = ModelCardData(pipeline_tag="text-classification", tags=tags)
    runtime = "ONNX Runtime, INT8 (dynamic quantization)" if model.int8 else "ONNX Runtime, fp32"
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers", None)
    width = getattr(config, "hidden_size", None) or getattr(config, "dim", None)
    task = spec.name + (" (a regression)" if spec.regression else "")
    limit = position_limit(config, "stages.export.models")
    lines = ["---", header.to_yaml(), "---", "",
             f"# {model.folder}: {task}, {'sentence pairs' if spec.pair else 'single texts'}", "",
             f"{provenance(model.source)} Exported to ONNX by crild {__version__} for {runtime}.", "",
             "| | |", "|---|---|",
             f"| encoder | {config.model_type}, {_count(layers, 'layer')}, width {width} |",
             f"| parameters | {model.parameters / 1e6:.1f}M |",
             f"| file size | {row['size_mb']:.1f} MB |",
             f"| inputs | {', '.join(model.inputs)} (int64, batch x sequence"
             + (f", at most {limit} tokens" if limit else "") + ") |",
             f"| output | logits ({'one score' if spec.regression else f'{spec.num_labels} classes'}) |"]
    if not spec.regression:
        lines.append(f"| labels | {', '.join(f'{i}: {name}' for i, name in enumerate(spec.labels))} |")
    parity = row.get("parity") or {}
    examples = parity.get("examples")
    lines += ["", f"## Scores on {split} ({f'{examples:,}' if isinstance(examples, int) else 'n/a'} examples)", "",
              f"| {metric} in ONNX Runtime | {metric} in PyTorch (fp32) | largest logit difference | same prediction |",
              "|---|---|---|---|",
              f"| {_number(row.get('score'))} | {_number(torch_row.get('score'))} | "
              f"{parity.get('max_logit_diff', float('nan')):.2g} | {parity.get('agreement', float('nan')):.2%} |"]
    if "batch1_p50_ms" in row:
        lines += ["", f"## Speed where it was exported ({_count(threads, 'CPU thread')})", "",
                  "| batch 1, median | batch 1, 95th percentile | batch 32 |", "|---|---|---|",
                  f"| {row['batch1_p50_ms']:.2f} ms | {row['batch1_p95_ms']:.2f} ms | "
                  f"{row['batch32_examples_per_s']:,.0f} examples/s |"]
    lines += ["", "## Use", "", "With ONNX Runtime and the tokenizer in this folder (nothing of crild or PyTorch):",
              "", "```python", serving_code(".", spec.pair, spec.regression).rstrip("\n"), "```", ""]
    return "\n".join(lines)
