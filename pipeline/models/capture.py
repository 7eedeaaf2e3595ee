"""Capture chosen layers' Q, K, V and hidden states during a normal forward, with forward
hooks: attention keeps its fast kernel and no attention maps or all-layer outputs are
materialised. Where the family's Q/K/V come from one fused projection, its output is split
in three; where Q and K get a rotary embedding inside the attention, the captured Q and K
are rotated the same way (the relations and attention maps a student learns are then those
of the attention the teacher actually computes)."""
from __future__ import annotations

import sys
from typing import Optional

import torch

from pipeline.errors import UserError
from pipeline.models.families import encoder_layers, family_of, get_path

KINDS = ("q", "k", "v", "hidden")


class LayerCapture:
    """Forward hooks on ``layers`` (negative indices count from the top) recording the
    kinds asked for: "q", "k", "v" (projection outputs, shape (batch, seq, hidden), before
    the split into heads; Q and K after any rotary embedding) and "hidden" (the layer's
    output hidden states).

        with LayerCapture(model, layers=[-1], kinds=("q", "k", "v")) as cap:
            model(**inputs)
        q = cap.outputs[5]["q"]
    """

    def __init__(self, model, layers: list[int], kinds: tuple[str, ...] = KINDS):
        bad = [k for k in kinds if k not in KINDS]
        if bad:
            raise ValueError(f"unknown capture kind(s) {bad}; expected {KINDS}")
        self.model = model
        self.family = family_of(model)
        kernel = getattr(model.config, "_attn_implementation", "") or ""
        if kernel.startswith("flash"):
            raise UserError(f"{model.config.model_type}: attention kernel '{kernel}' unpads the batch into packed "
                            f"tokens, which the layer captures do not read; crild loads it with "
                            f"'{self.family.attention}'")
        all_layers = encoder_layers(model)
        n = len(all_layers)
        self.layers = []
        for i in layers:
            if not -n <= i < n:
                raise UserError(f"layer {i} does not exist in a {n}-layer {model.config.model_type} encoder")
            self.layers.append(i % n)
        self.kinds = tuple(kinds)
        self.heads = model.config.num_attention_heads
        self.outputs: dict[int, dict[str, torch.Tensor]] = {}
        self._rotary: dict[int, tuple] = {}  # layer -> (cos, sin) of the forward under way
        self._seen: dict[int, set] = {}  # layer -> kinds captured since the layer's forward began
        self._handles = []
        for i in self.layers:
            self._hook_layer(i, all_layers[i])

    def _hook_layer(self, i: int, layer) -> None:
        qkv = [k for k in ("q", "k", "v") if k in self.kinds]
        family = self.family
        # a projection can run again inside the layer (DeBERTa projects its relative position
        # embeddings with the same query/key layers): the first call of each forward is the tokens'
        self._handles.append(layer.register_forward_pre_hook(self._layer_start(i)))
        if qkv and family.fused:
            self._handles.append(get_path(layer, family.query).register_forward_hook(self._fused_hook(i)))
        elif qkv:
            for kind, attr in (("q", family.query), ("k", family.key), ("v", family.value)):
                if kind in self.kinds:
                    self._handles.append(get_path(layer, attr).register_forward_hook(self._hook(i, kind)))
        if qkv and family.rotary:
            attention = get_path(layer, family.rotary)
            self._apply_rotary = sys.modules[type(attention).__module__].apply_rotary_pos_emb
            self._handles.append(attention.register_forward_pre_hook(self._rotary_hook(i), with_kwargs=True))
        if "hidden" in self.kinds:
            self._handles.append(layer.register_forward_hook(self._hook(i, "hidden")))

    def _layer_start(self, layer: int):
        def hook(module, args):
            self._seen[layer] = set()

        return hook

    def _hook(self, layer: int, kind: str):
        def hook(module, args, output):
            if isinstance(output, (tuple, list)):
                output = output[0]
            self._store(layer, kind, output)

        return hook

    def _fused_hook(self, layer: int):
        def hook(module, args, output):
            q, k, v = output.chunk(3, dim=-1)
            if self.family.rotary:
                q, k = self._rotate(layer, q, k)
            for kind, part in (("q", q), ("k", k), ("v", v)):
                if kind in self.kinds:
                    self._store(layer, kind, part)

        return hook

    def _rotary_hook(self, layer: int):
        def hook(module, args, kwargs):
            self._rotary[layer] = kwargs.get("position_embeddings")

        return hook

    def _store(self, layer: int, kind: str, value: torch.Tensor) -> None:
        seen = self._seen.setdefault(layer, set())
        if kind in seen:
            return
        seen.add(kind)
        self.outputs.setdefault(layer, {})[kind] = value

    def _rotate(self, layer: int, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Q and K as the attention uses them: split into heads, rotated, merged back."""
        cos, sin = self._rotary[layer]
        b, t, h = q.shape

        def heads(x):
            return x.reshape(b, t, self.heads, h // self.heads).transpose(1, 2)

        q_rot, k_rot = self._apply_rotary(heads(q), heads(k), cos, sin)
        return q_rot.transpose(1, 2).reshape(b, t, h), k_rot.transpose(1, 2).reshape(b, t, h)

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
