"""The consistency regulariser of CR-ILD: the student's last-layer output on the mixed
input must agree with the lambda-weighted outputs it gives on the two clean inputs,

    L_CR = w(t) * [lambda * D(S(E~), sg S(E)) + (1 - lambda) * D(S(E~), sg S(E)[partner])]

where sg is a stop-gradient target (a clean pass of the student itself, with dropout as in
the reference code or without it, or of an EMA copy of it), D the Q/K/V relation KL or the hidden-state MSE, and w(t) ramps linearly from 0 to
w_ic over the phase.
"""
from __future__ import annotations

import copy

import torch

from pipeline.distill import losses
from pipeline.distill.hooked import HookedModel
from pipeline.distill.mixup import MixedView

KINDS = {"relation": frozenset({"q", "k", "v"}), "hidden": frozenset({"hidden"})}  # what each distance reads


def ramp(progress: float) -> float:
    """Linear ramp of the consistency weight from 0 to 1 over the phase."""
    return min(max(progress, 0.0), 1.0)


def consistency_distance(mixed: dict, clean: dict, view: MixedView, mask: torch.Tensor, heads: int,
                         distance: str) -> torch.Tensor:
    """lambda * D(mixed, clean) + (1 - lambda) * D(mixed, clean[partner]) on one layer's
    captures; ``mask`` is the clean batch's attention mask."""
    total = 0.0
    for weight, idx in ((view.lam, None), (1.0 - view.lam, view.partner)):
        target_mask = mask if idx is None else mask[idx]
        if distance == "relation":
            for kind in ("q", "k", "v"):
                target = clean[kind] if idx is None else clean[kind][idx]
                total = total + weight * losses.masked_kl(
                    losses.scaled_dot(target, target, heads), losses.scaled_dot(mixed[kind], mixed[kind], heads),
                    target_mask, view.mask, target_mask)
        else:
            target = clean["hidden"] if idx is None else clean["hidden"][idx]
            total = total + weight * losses.hidden_mse(target, mixed["hidden"], target_mask)
    return total


class Consistency:
    """The term as one phase applies it: weight schedule, target pass and distance."""

    def __init__(self, cfg, weight: float, layer: int, heads: int, student: HookedModel, total_micro_steps: int):
        """``cfg``: ``stages.distill.consistency``; ``weight``: w_ic; ``layer``: the student
        layer compared (1-based); ``student``: the hooked student, which captures it."""
        self.weight, self.layer, self.heads, self.distance = weight, layer, heads, cfg.distance
        self.total = total_micro_steps
        self.ema, self.ema_step, self.ema_decay = None, 0, cfg.ema_decay
        self.target = student
        self.without_dropout = cfg.target == "clean_no_dropout"
        if cfg.target == "ema":
            self.ema = copy.deepcopy(student.model).eval().requires_grad_(False)
            self.target = HookedModel(self.ema, {layer}, set(KINDS[cfg.distance]))

    def weight_at(self, micro_step: int) -> float:
        return self.weight * ramp(micro_step / max(self.total, 1))

    def update_ema(self, engine, student: torch.nn.Module) -> None:
        """Move the EMA copy towards the student once per optimizer step."""
        if self.ema is None or engine.global_steps == self.ema_step:
            return
        self.ema_step = engine.global_steps
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), student.parameters()):
                e.mul_(self.ema_decay).add_(p.detach().to(e.dtype), alpha=1.0 - self.ema_decay)

    def value(self, mixed_caps: dict, inputs: dict, view: MixedView, padded=None) -> torch.Tensor:
        """D between the student's mixed-view captures and the stop-gradient clean target;
        ``padded``: whether the clean batch has padding, as the host knows it."""
        model = self.target.model
        training = model.training
        if self.without_dropout:
            model.eval()
        try:
            with torch.no_grad():
                _, clean = self.target.run(inputs, padded=padded)  # the clean pass, own masks
        finally:
            model.train(training)
        return consistency_distance(mixed_caps[self.layer], clean[self.layer], view, inputs["attention_mask"],
                                    self.heads, self.distance)

    # ------------------------------------------------------------------ checkpointed state
    def save(self, tag_dir) -> None:
        """The EMA copy (the same on every rank), beside the engine's checkpoint."""
        if self.ema is not None and torch.distributed.get_rank() == 0:
            from safetensors.torch import save_file

            state = {k: v.detach().contiguous() for k, v in self.ema.state_dict().items()}
            state["__ema_step__"] = torch.tensor([self.ema_step])
            save_file(state, str(tag_dir / "ema.safetensors"))

    def load(self, tag_dir) -> None:
        if self.ema is not None and (tag_dir / "ema.safetensors").is_file():
            from safetensors.torch import load_file

            state = load_file(str(tag_dir / "ema.safetensors"))
            self.ema_step = int(state.pop("__ema_step__")[0])
            self.ema.load_state_dict(state)
