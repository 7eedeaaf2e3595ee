"""A transformers sequence classifier as an ONNX folder: ``model.onnx`` with dynamic batch
and sequence axes (inputs input_ids, attention_mask and, where the family takes them and the
tokenizer gives them, token_type_ids; output logits), the tokenizer and config.json beside it.

torch.onnx.export's TorchScript exporter is used: Optimum's exporter (optimum-onnx 0.1)
requires transformers < 4.58 and does not install next to crild's transformers 5, and the
dynamo exporter of torch 2.13 fails on these models' dynamic shapes (both checked).
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch

from pipeline.errors import UserError
from pipeline.models.families import family_of
from pipeline.models.loading import save_tokenizer

ONNX_FILE = "model.onnx"
DATA_SUFFIX = ".data"  # model.onnx.data: the weights of a graph over protobuf's 2 GiB, beside it
COPIED = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
          "vocab.json", "merges.txt", "spm.model", "sentencepiece.bpe.model")


def input_names(model, tokenizer) -> list[str]:
    """The graph's inputs: what the folder's tokenizer gives when called as it is, so that a
    server feeds ``tokenizer(texts)`` to the session unchanged. RoBERTa's and XLM-R's
    tokenizers give no token types, and their models then use type 0, which is what crild
    trained them with; the parity check on the held-out split confirms it for each export."""
    types = family_of(model).token_types and "token_type_ids" in tokenizer.model_input_names
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if types else [])


class _Logits(torch.nn.Module):
    """The classifier as a function of positional tensors, returning its logits."""

    def __init__(self, model, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors):
        return self.model(**dict(zip(self.names, tensors))).logits


def export_classifier(model, tokenizer, source: Path, out: Path, opset: int, max_length: int | None = None) -> None:
    """Write ``model`` (eval mode, fp32, CPU) into ``out`` as ONNX, with ``source``'s
    tokenizer (cutting texts at ``max_length``, the length the export is scored at) and config
    files. The model is traced with transformers' eager attention:
    SDPA's traced decomposition adds shape arithmetic and a NaN guard to every layer (a quarter
    more nodes), and its graphs of the demo's models gave 5-13% less throughput at batch 32 in
    ONNX Runtime (reports/demo/export_attention.md). Exporting changes state
    inside a transformers model (its attention kernel, and its eager outputs after a
    TorchScript trace differ slightly): pass a model used for nothing else."""
    names = input_names(model, tokenizer)
    model.set_attn_implementation("eager")
    example = tokenizer(["a short example .", "a longer example sentence for the trace ."], padding=True,
                        return_tensors="pt", return_token_type_ids=True)
    out.mkdir(parents=True, exist_ok=True)
    axes = {name: {0: "batch", 1: "sequence"} for name in names} | {"logits": {0: "batch"}}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's own deprecation and tracer notes
            torch.onnx.export(_Logits(model.float().cpu().eval(), names), tuple(example[n] for n in names),
                              str(out / ONNX_FILE), input_names=names, output_names=["logits"], dynamic_axes=axes,
                              opset_version=opset, dynamo=False)
    except (RuntimeError, torch.onnx.errors.OnnxExporterError) as err:  # an architecture the exporter cannot trace
        raise UserError(f"stages.export: '{source}' ({model.config.model_type}) does not export to ONNX "
                        f"({str(err).splitlines()[0]})") from None
    gather_external_data(out / ONNX_FILE)
    for name in COPIED:
        if (Path(source) / name).is_file():
            shutil.copy2(Path(source) / name, out / name)
    label_graph_outputs(out / "config.json", model.config)
    save_tokenizer(tokenizer, model.config, out, max_length)


def label_graph_outputs(config_file: Path, config) -> None:
    """The copied config.json names the graph's outputs as ``config`` (the model as crild read
    it) does: a classifier whose outputs crild put in the task's order, or whose placeholder
    names (LABEL_0) it read as the task's labels, is exported in that order, and the copy of
    its folder's config would name each output after another class for whoever serves it."""
    if not config_file.is_file() or not getattr(config, "id2label", None):
        return
    settings = json.loads(config_file.read_text())
    id2label = {str(k): v for k, v in config.id2label.items()}
    if settings.get("id2label") != id2label:
        settings["id2label"], settings["label2id"] = id2label, {v: int(k) for k, v in id2label.items()}
        config_file.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")


def external_data_files(model_file: Path) -> set[str]:
    """The files beside ``model_file`` that hold its weights (none for a graph under 2 GiB)."""
    import onnx

    graph = onnx.load(str(model_file), load_external_data=False).graph
    return {entry.value for tensor in graph.initializer if tensor.data_location == onnx.TensorProto.EXTERNAL
            for entry in tensor.external_data if entry.key == "location"}


def gather_external_data(model_file: Path) -> None:
    """A graph over protobuf's 2 GiB (an XLM-R-large teacher) is written by the exporter with
    every weight in a file of its own beside it, hundreds of them, which a copy of the folder
    can lose one of; they become one file, ``model.onnx.data``, which ONNX Runtime reads from
    beside ``model.onnx`` by itself."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    files = external_data_files(model_file)
    if not files:
        return
    model = onnx.load(str(model_file), load_external_data=False)
    load_external_data_for_model(model, str(model_file.parent))
    onnx.save_model(model, str(model_file), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=model_file.name + DATA_SUFFIX)
    for name in files - {model_file.name + DATA_SUFFIX}:
        (model_file.parent / name).unlink()
