"""Flatness probe: held-out score of a model whose weights carry Gaussian noise of growing
relative scale. A flat minimum keeps its score under larger perturbations (the paper's
argument for last-layer ILD); a sharp one collapses early.

Each parameter tensor W gets W + sigma * rms(W) * N(0, 1), so sigma is relative to the
tensor's own scale (embeddings and LayerNorm gains alike); draws are seeded.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch


@torch.no_grad()
def perturbed_scores(model: torch.nn.Module, score: Callable[[], float], scales: list[float], draws: int,
                     seed: int) -> dict[float, list[float]]:
    """``score()`` (e.g. dev accuracy of ``model``) for each scale and draw; the weights are
    restored afterwards. Scale 0 is scored once."""
    originals = {name: p.detach().clone() for name, p in model.named_parameters()}
    out: dict[float, list[float]] = {}
    try:
        for sigma in scales:
            if sigma == 0:
                out[sigma] = [float(score())]
                continue
            out[sigma] = []
            for d in range(draws):
                # drawn from (seed, sigma, draw): the same noise whatever other scales are probed
                key = [seed, int(round(sigma * 1e6)), d]
                gen = torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))
                for name, p in model.named_parameters():
                    w = originals[name]
                    rms = w.float().pow(2).mean().sqrt()
                    noise = torch.randn(w.shape, generator=gen, dtype=torch.float32)
                    p.copy_((w.float() + sigma * rms * noise).to(p.dtype))
                out[sigma].append(float(score()))
    finally:
        for name, p in model.named_parameters():
            p.copy_(originals[name])
    return out
