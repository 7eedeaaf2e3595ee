"""The mixup view of CR-ILD: each example's embedding output mixed with its partner's,
E~ = lambda * E + (1 - lambda) * E[partner], teacher and student alike, the attention mask
the union of the two."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from pipeline.models.attention_masks import has_padding
from pipeline.models.families import embedding_module


def draw_lambda(seed: int, micro_step: int, alpha: float) -> float:
    """lambda ~ Beta(alpha, alpha), folded to >= 0.5. A function of (seed, step): the same
    on every rank and after a resume."""
    lam = float(np.random.default_rng([seed, 0x4D495855, micro_step]).beta(alpha, alpha))
    return max(lam, 1.0 - lam)


def partner_index(batch_size: int, device) -> torch.Tensor:
    """Each example's mixup partner: the reversed batch (as the reference code pairs them)."""
    return torch.arange(batch_size - 1, -1, -1, device=device)


@dataclass(frozen=True)
class MixedView:
    lam: float
    partner: torch.Tensor  # (batch,) index of each example's partner
    mask: torch.Tensor  # (batch, seq) union of each example's and its partner's attention masks
    padded: Optional[bool] = None  # whether the union masks anything, from the host's copy (None: unknown)


def mixed_view(seed: int, micro_step: int, alpha: float, mask: torch.Tensor,
               host_mask: Optional[torch.Tensor] = None) -> MixedView:
    """This step's mixup draw for a batch with attention ``mask``; ``host_mask``, the same
    mask in host memory, tells whether the union has padding without asking the device."""
    partner = partner_index(mask.shape[0], mask.device)
    padded = None if host_mask is None else has_padding(host_mask | host_mask[partner_index(len(host_mask), "cpu")])
    return MixedView(draw_lambda(seed, micro_step, alpha), partner, mask | mask[partner], padded)


class EmbeddingMixer:
    """A forward hook on an encoder's embedding module: while a view is set, its output E
    becomes lambda * E + (1 - lambda) * E[partner]."""

    def __init__(self, model: torch.nn.Module):
        self.view: Optional[MixedView] = None
        self.handle = embedding_module(model).register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        if self.view is None:
            return output
        return self.view.lam * output + (1.0 - self.view.lam) * output[self.view.partner]
