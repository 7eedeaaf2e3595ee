"""A model with distillation hooks: the layers a phase reads captured during a normal
forward (attention keeps its SDPA kernel) and the embedding mixer of the mixup view."""
from __future__ import annotations

from typing import Optional

import torch

from pipeline.distill.mixup import EmbeddingMixer, MixedView
from pipeline.models.attention_masks import ready_inputs
from pipeline.models.capture import EmbeddingCapture, LayerCapture
from pipeline.models.families import family_of


class HookedModel:
    """``layers`` are 1-based (0: the embedding output, captured for "hidden" only);
    ``kinds`` of "q", "k", "v", "hidden"."""

    def __init__(self, model: torch.nn.Module, layers: set[int], kinds: set[str]):
        self.model = model
        self.token_types = family_of(model).token_types
        self.mixer = EmbeddingMixer(model)
        body = sorted(i for i in layers if i > 0)
        self.capture = LayerCapture(model, [i - 1 for i in body], tuple(sorted(kinds))) if body and kinds else None
        self.embedding = EmbeddingCapture(model) if 0 in layers and "hidden" in kinds else None

    def run(self, inputs: dict, view: Optional[MixedView] = None,
            padded: Optional[bool] = None) -> tuple[torch.Tensor, dict]:
        """Logits and captures ({layer: {kind: tensor}}) of one forward, on the mixed view
        of ``inputs`` when one is given. ``padded``: whether the attention mask of ``inputs``
        masks anything, as the host knows it (None: unknown)."""
        if self.capture is not None:
            self.capture.clear()
        if not self.token_types:
            inputs = {k: v for k, v in inputs.items() if k != "token_type_ids"}
        self.mixer.view = view
        try:
            logits = self.model(**ready_inputs(self.model, inputs, padded)).logits
        finally:
            self.mixer.view = None
        caps = {i + 1: dict(v) for i, v in (self.capture.outputs.items() if self.capture else [])}
        if self.embedding is not None:
            caps[0] = {"hidden": self.embedding.value}
        return logits, caps
