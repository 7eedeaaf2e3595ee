"""Capture chosen layers' Q, K, V projections and hidden states during a normal forward,
with forward hooks: attention keeps its fast SDPA kernel and no attention maps or
all-layer outputs are materialised."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from pipeline.errors import UserError


@dataclass(frozen=True)
class LayerPaths:
    layers: str  # attribute path of the layer list, from the base encoder
    query: str  # attribute paths inside one layer
    key: str
    value: str


_BERT_LIKE = LayerPaths("encoder.layer", "attention.self.query", "attention.self.key", "attention.self.value")
LAYER_PATHS = {
    "bert": _BERT_LIKE, "roberta": _BERT_LIKE, "xlm-roberta": _BERT_LIKE, "camembert": _BERT_LIKE,
    "electra": _BERT_LIKE, "ernie": _BERT_LIKE,
    "distilbert": LayerPaths("transformer.layer", "attention.q_lin", "attention.k_lin", "attention.v_lin"),
}
KINDS = ("q", "k", "v", "hidden")


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def encoder_layers(model) -> torch.nn.ModuleList:
    paths = LAYER_PATHS.get(model.config.model_type)
    if paths is None:
        raise UserError(f"model type '{model.config.model_type}' is not supported for layer capture "
                        f"(supported: {', '.join(LAYER_PATHS)})")
    return _get(getattr(model, model.base_model_prefix, model), paths.layers)


class LayerCapture:
    """Forward hooks on ``layers`` (negative indices count from the top) recording the
    kinds asked for: "q", "k", "v" (projection outputs, shape (batch, seq, hidden), before
    the split into heads) and "hidden" (the layer's output hidden states).

        with LayerCapture(model, layers=[-1], kinds=("q", "k", "v")) as cap:
            model(**inputs)
        q = cap.outputs[5]["q"]
    """

    def __init__(self, model, layers: list[int], kinds: tuple[str, ...] = KINDS):
        bad = [k for k in kinds if k not in KINDS]
        if bad:
            raise ValueError(f"unknown capture kind(s) {bad}; expected {KINDS}")
        self.model = model
        self.paths = LAYER_PATHS.get(model.config.model_type)
        all_layers = encoder_layers(model)
        n = len(all_layers)
        self.layers = []
        for i in layers:
            if not -n <= i < n:
                raise UserError(f"layer {i} does not exist in a {n}-layer {model.config.model_type} encoder")
            self.layers.append(i % n)
        self.kinds = tuple(kinds)
        self.outputs: dict[int, dict[str, torch.Tensor]] = {}
        self._handles = []
        for i in self.layers:
            layer = all_layers[i]
            for kind, attr in (("q", self.paths.query), ("k", self.paths.key), ("v", self.paths.value)):
                if kind in self.kinds:
                    self._handles.append(_get(layer, attr).register_forward_hook(self._hook(i, kind)))
            if "hidden" in self.kinds:
                self._handles.append(layer.register_forward_hook(self._hook(i, "hidden")))

    def _hook(self, layer: int, kind: str):
        def hook(module, args, output):
            if isinstance(output, (tuple, list)):
                output = output[0]
            self.outputs.setdefault(layer, {})[kind] = output

        return hook

    def clear(self) -> None:
        self.outputs = {}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "LayerCapture":
        self.clear()
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


class EmbeddingCapture:
    """Captures the input of the first encoder layer (the embedding output, after any mixing)."""

    def __init__(self, model: torch.nn.Module):
        self.value: Optional[torch.Tensor] = None
        self.handle = encoder_layers(model)[0].register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.value = args[0] if args else kwargs.get("hidden_states")
