"""Attention masks built before the forward, from what the host already knows.

Given a 2D padding mask, transformers' mask helpers first ask whether the batch has any
padding at all (``padding_mask.all()``), to pass no mask and let SDPA use its fastest
kernel. On a GPU that question is a host synchronisation: the CPU waits for every queued
kernel before it can launch the next ones, once per forward (three per CR-ILD step). The
batch was padded on the host, so the answer is known there for free: with no padding the
model gets no mask (what transformers would have chosen), with padding it gets the masks
transformers would have built, made by transformers' own functions without the question.

A family lists the masks its forward takes in ``EncoderFamily.masks``: ``("full",)`` for one
bidirectional mask, ``("full", "sliding")`` for ModernBERT's global and local layers, ``()``
for a family that builds its own from the 2D mask without asking (DeBERTa-v2), which then
keeps it.
"""
from __future__ import annotations

import functools
import inspect
from typing import Optional

import torch

from pipeline.models.families import family_of

BUILDERS = {"full": "create_bidirectional_mask", "sliding": "create_bidirectional_sliding_window_mask"}
LAYER_TYPES = {"full": "full_attention", "sliding": "sliding_attention"}  # the keys of a mask mapping


def has_padding(mask: torch.Tensor) -> Optional[bool]:
    """Whether a 2D attention mask masks any position, when that costs no synchronisation
    (a mask in host memory); None for a mask on an accelerator."""
    return None if mask.device.type != "cpu" else not bool(mask.all())


@functools.lru_cache(maxsize=None)
def _builder(kind: str):
    """transformers' function that builds masks of ``kind`` without asking about padding
    first, or None where this transformers has none (looked up once: this runs per forward)."""
    try:  # transformers 4.53+; imported here, not with this module, as it brings in torch._dynamo (a second)
        from transformers import masking_utils
    except ImportError:  # older: the model builds its masks as before
        return None
    fn = getattr(masking_utils, BUILDERS[kind], None)
    if fn is None or "allow_is_bidirectional_skip" not in inspect.signature(fn).parameters:
        return None
    return fn


def _dtype(model) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def ready_inputs(model, inputs: dict, padded: Optional[bool]) -> dict:
    """``inputs`` for ``model(**inputs)``, their 2D ``attention_mask`` replaced by the masks the
    model's forward would build from it (or left out when nothing is padded). ``padded`` is
    :func:`has_padding` of a host copy of that mask, or None when unknown: the model then
    decides as usual. ``model`` may be the DeepSpeed engine that wraps it."""
    model = getattr(model, "module", model)
    kinds = family_of(model).masks
    builders = [_builder(kind) for kind in kinds]
    mask = inputs.get("attention_mask")
    if padded is None or mask is None or not kinds or None in builders:
        return inputs
    out = {k: v for k, v in inputs.items() if k != "attention_mask"}
    if not padded:  # transformers passes no mask then: SDPA's fastest kernel applies
        return out
    shape = torch.empty((mask.shape[0], mask.shape[1], 0), dtype=_dtype(model), device=mask.device)  # no storage
    built = {kind: fn(config=model.config, inputs_embeds=shape, attention_mask=mask, allow_is_bidirectional_skip=False)
             for kind, fn in zip(kinds, builders)}
    out["attention_mask"] = built["full"] if kinds == ("full",) else {LAYER_TYPES[k]: m for k, m in built.items()}
    return out
