"""The DeepSpeed engine a training stage trains, and the full weights it ends with."""
from __future__ import annotations

from typing import Optional

import torch

from pipeline.runtime.build_locks import op_builds
from pipeline.training.ds_config import zero_stage


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: no decay for biases and LayerNorm weights."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_engine(model: torch.nn.Module, weight_decay: float, ds_cfg: dict):
    """A DeepSpeed engine training ``model`` with the optimizer and schedule of ``ds_cfg``."""
    import deepspeed

    with op_builds():  # FusedAdam and other DeepSpeed ops build on first use
        engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=decay_groups(model, weight_decay),
                                               config=ds_cfg)
    if engine.zero_optimization_stage() == 0 and engine.dp_world_size == 1:
        # one data-parallel rank: the all-reduce would flatten every gradient into buckets and
        # copy them back unchanged (about a tenth of a CPU step at BERT-base widths in a profile)
        engine.enable_backward_allreduce = False
    return engine


def consolidated_state_dict(engine, ds_cfg: dict) -> Optional[dict]:
    """Full weights of an engine's module (gathered under ZeRO-3; None on ranks > 0 there)."""
    if zero_stage(ds_cfg) == 3:
        return engine._zero3_consolidated_16bit_state_dict()
    return engine.module.state_dict()
