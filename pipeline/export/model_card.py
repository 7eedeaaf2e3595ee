"""Model cards (README.md) for the folders crild hands over: each exported ONNX folder's
(what the model is, how crild made it, how it scored and how fast it ran where it was
exported, the lines that serve it with ONNX Runtime) and each trained model folder's (the same
facts for the PyTorch weights, its dev scores, the lines that classify with transformers).
The Hugging Face hub shows the file as the model's page and reads its YAML header; anyone
handed the folder alone learns from it what it classifies and how to call it. Every figure
comes from the export's results or the stage's training results; how the model was made,
from ``provenance.py``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from huggingface_hub import ModelCardData

from pipeline import __version__
from pipeline.errors import count_text
from pipeline.export.provenance import distilled, made_by, provenance
from pipeline.export.quantize import INT8_SUFFIX
from pipeline.models.loading import OFFLINE_MODELS, position_limit, read_model_config, weight_shapes

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
enc = tokenizer({texts}, truncation=True, return_tensors="np")
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
    cut_at: Optional[int] = None  # the tokens its saved tokenizer cuts a text at (saved_max_length)

    @property
    def folder(self) -> str:
        """The folder's name under export/ (``student``, ``student-int8``)."""
        return f"{self.model}{INT8_SUFFIX}" if self.int8 else self.model


def _count(n, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _number(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _cell(text: str) -> str:
    """User text (label names) as one Markdown table cell: a ``|`` in it would end the cell."""
    return text.replace("|", "\\|")


def _model_rows(config, parameters: int, spec) -> list[str]:
    """Table rows both cards give: encoder, parameters, output, labels."""
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers", None)
    width = getattr(config, "hidden_size", None) or getattr(config, "dim", None)
    rows = [f"| encoder | {config.model_type}, {_count(layers, 'layer')}, width {width} |",
            f"| parameters | {count_text(parameters)} |",
            f"| output | logits ({'one score' if spec.regression else f'{spec.num_labels} classes'}) |"]
    if not spec.regression:
        rows.append(f"| labels | {_cell(', '.join(f'{i}: {name}' for i, name in enumerate(spec.labels)))} |")
    return rows


def _title(folder: str, spec) -> str:
    task = spec.name + (" (a regression)" if spec.regression else "")
    return f"# {folder}: {task}, {'sentence pairs' if spec.pair else 'single texts'}"


def model_card(model: ExportedModel, row: dict, torch_row: dict, spec, split: str, metric: str,
               threads: int) -> str:
    """The card of one exported folder: ``row`` is its results.json row, ``torch_row`` the
    PyTorch row of the model it was exported from; ``spec`` the task."""
    config = model.config
    made = provenance(model.source)
    tags = ["onnx", "crild"] + (["knowledge-distillation"] if distilled(made) else []) + \
        (["int8"] if model.int8 else [])
    header = ModelCardData(pipeline_tag="text-classification", tags=tags)
    runtime = "ONNX Runtime, INT8 (dynamic quantization)" if model.int8 else "ONNX Runtime, fp32"
    limit = position_limit(config, "stages.export.models")
    facts = _model_rows(config, model.parameters, spec)
    lines = ["---", header.to_yaml(), "---", "",
             _title(model.folder, spec), "",
             f"{made} Exported to ONNX by crild {__version__} for {runtime}.", "",
             "| | |", "|---|---|",
             *facts[:2],
             f"| file size | {row['size_mb']:.1f} MB |",
             f"| inputs | {', '.join(model.inputs)} (int64, batch x sequence"
             + (f", at most {limit} tokens" if limit else "") + ") |",
             *([f"| text length | the tokenizer here cuts a text at {model.cut_at} tokens (`truncation=True`), "
                f"the length crild scored it at |"] if model.cut_at else []),
             *facts[2:]]
    parity = row.get("parity") or {}
    examples = parity.get("examples")
    agreement = parity.get("agreement")  # None for a regression: one score, no class to agree on
    lines += ["", f"## Scores on {split} ({f'{examples:,}' if isinstance(examples, int) else 'n/a'} examples)", "",
              f"| {metric} in ONNX Runtime | {metric} in PyTorch (fp32) | largest logit difference |"
              + (" same prediction |" if agreement is not None else ""),
              "|---|---|---|" + ("---|" if agreement is not None else ""),
              f"| {_number(row.get('score'))} | {_number(torch_row.get('score'))} | "
              f"{parity.get('max_logit_diff', float('nan')):.2g} |" + (f" {agreement:.2%} |" if agreement is not None else "")]
    if "batch1_p50_ms" in row:
        lines += ["", f"## Speed where it was exported ({_count(threads, 'CPU thread')})", "",
                  "| batch 1, median | batch 1, 95th percentile | batch 32 |", "|---|---|---|",
                  f"| {row['batch1_p50_ms']:.2f} ms | {row['batch1_p95_ms']:.2f} ms | "
                  f"{row['batch32_examples_per_s']:,.0f} examples/s |"]
    lines += ["", "## Use", "", "With ONNX Runtime and the tokenizer in this folder (nothing of crild or PyTorch):",
              "", "```python", serving_code(".", spec.pair, spec.regression).rstrip("\n"), "```", ""]
    return "\n".join(lines)


# the lines that classify with a model folder crild trained, through transformers' pipeline
_PIPELINE = '''from transformers import pipeline

classifier = pipeline("text-classification", model="{folder}")
print(classifier({example}, truncation=True{extra}))
'''


def pipeline_code(folder: str, pair: bool, regression: bool) -> str:
    """Python that classifies one example with the model ``folder`` through transformers."""
    example = '{"text": "A gripping, beautifully acted film.", "text_pair": "The film is worth seeing."}' if pair \
        else '"A gripping, beautifully acted film."'
    return _PIPELINE.format(folder=folder, example=example, extra=', function_to_apply="none"' if regression else "")


def hub_id(name: str) -> Optional[str]:
    """The hub repository a model setting names (an offline alias by its hub name), or None
    for a local folder: what a card's ``base_model`` may say."""
    if name in OFFLINE_MODELS:
        return next((key for key, value in OFFLINE_MODELS.items() if "/" in key and value == OFFLINE_MODELS[name]),
                    None)
    if name.startswith(("/", ".", "~")) or Path(name).exists() or name.count("/") != 1:
        return None
    return name.partition("@")[0]


def trained_card(folder: Path, name: str, stage: str, cfg: dict, results: dict, spec) -> str:
    """The card of the model folder ``name`` that a training stage is writing in ``folder``
    (its config and weights already there), from the run's resolved configuration ``cfg`` and
    the stage's training results."""
    config = read_model_config(str(folder), "model card")
    parameters = sum(math.prod(shape) for shape in weight_shapes(str(folder), "model card").values())
    made = made_by(stage, cfg, results)
    teacher = (cfg.get("teacher") or {}).get("model")
    base = hub_id(str(teacher)) if made.startswith("Fine-tuned by crild from") and stage == "teacher" else None
    header = ModelCardData(library_name="transformers", pipeline_tag="text-classification", base_model=base,
                           tags=["crild"] + (["knowledge-distillation"] if distilled(made) else []))
    task = cfg.get("task") or {}
    lines = ["---", header.to_yaml(), "---", "", _title(name, spec), "",
             f"{made} Saved by crild {__version__}.", "", "| | |", "|---|---|",
             *_model_rows(config, parameters, spec), f"| trained on | at most {task.get('max_length')} tokens |"]
    phases = results.get("phases") or {}
    last = (results.get("last") or (list(phases.values())[-1].get("last") if phases else None)) or {}
    dev = {key.split("/", 1)[1]: value for key, value in last.items() if key.startswith("dev/")}
    if dev:
        capped = task.get("max_eval_examples")
        lines += ["", f"## Dev scores at the end of training (step {last.get('step')})", "",
                  "| metric | value |", "|---|---|", *(f"| {key} | {value:.4f} |" for key, value in dev.items())]
        if capped:
            lines += ["", f"On at most {capped:,} dev examples (task.max_eval_examples)."]
    lines += ["", "## Use", "", "With transformers:", "", "```python",
              pipeline_code(".", spec.pair, spec.regression).rstrip("\n"), "```", "",
              "crild's own files sit beside the model: `config.resolved.yaml` (the run's configuration, with its "
              "local paths), `train_results.json`, `content_hashes.json` and `crild_stage.json`; leave out the first "
              "when the paths are private. `crild export` makes ONNX and INT8 copies with their own cards.", ""]
    return "\n".join(lines)
