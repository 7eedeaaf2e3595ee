"""``compile: true``: torch.compile each encoder layer of a model, in place.

Layer by layer rather than the whole model, so that what varies from step to step outside
the layers (the mixup view the embedding hook reads, the caches of the capture hooks) never
becomes a guard that forces a recompile; the capture hooks on Q, K, V and the layer output
are traced into the compiled layers. ``dynamic=True``: batches padded to their own longest
sequence do not recompile per length. Dynamo is told to guard on module hooks (by
default it does not look at them), so a capture hook added or removed after the compile,
as each distillation phase does, recompiles instead of silently running the old graph.
State-dict keys are unchanged, so checkpoints and
saved models are the same with or without it."""
from __future__ import annotations

import torch

from pipeline.errors import UserError
from pipeline.models.families import encoder_layers


def check_compilable(ds_cfg: dict | None, where: str = "compile") -> None:
    """ZeRO-3 is refused: its parameter gathering runs in hooks that torch.compile would trace."""
    if (ds_cfg or {}).get("zero_optimization", {}).get("stage", 0) == 3:
        raise UserError(f"{where}: true is not supported with ZeRO-3; use ZeRO 0-2, or set compile: false")


def compile_layers(model: torch.nn.Module, ds_cfg: dict | None = None, where: str = "compile") -> torch.nn.Module:
    """Compile ``model``'s encoder layers (see ``check_compilable``)."""
    check_compilable(ds_cfg, where)
    torch._dynamo.config.skip_nnmodule_hook_guards = False
    for layer in encoder_layers(model):
        layer.compile(dynamic=True)
    return model
