"""One distillation step: the mixup view, teacher and student passes with captured layers,
the weighted terms and the consistency regulariser of CR-ILD.

The step returns (total, components) where components holds every term unweighted and
weighted, the consistency weight w(t) and lambda, ready for TensorBoard.
"""
from __future__ import annotations

import copy
from typing import Optional

import numpy as np
import torch

from pipeline import losses
from pipeline.capture import LayerCapture, encoder_layers
from pipeline.evaluation import model_inputs
from pipeline.models import encoder_of
from pipeline.objectives import TERMS, PhasePlan, TermInputs


class DistillModule(torch.nn.Module):
    """What the DeepSpeed engine trains: the student plus learned projections (student
    width -> teacher width) for hidden-state terms. Its forward is the student's."""

    def __init__(self, student: torch.nn.Module, projected_layers: list[int], teacher_width: int):
        super().__init__()
        self.student = student
        width = student.config.hidden_size
        self.projections = torch.nn.ModuleDict(
            {str(i): torch.nn.Linear(width, teacher_width) for i in projected_layers} if width != teacher_width else {})

    def forward(self, **inputs):
        return self.student(**inputs)

    def project(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        proj = self.projections[str(layer)] if str(layer) in self.projections else None
        return hidden if proj is None else proj(hidden.to(proj.weight.dtype))


class EmbeddingMixer:
    """A forward hook on an encoder's embedding module: while set, replaces its output E by
    lambda * E + (1 - lambda) * E[partner] (the mixup view of CR-ILD)."""

    def __init__(self, model: torch.nn.Module):
        self.lam: Optional[float] = None
        self.partner: Optional[torch.Tensor] = None
        self.handle = encoder_of(model).embeddings.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        if self.lam is None:
            return output
        return self.lam * output + (1.0 - self.lam) * output[self.partner]

    def set(self, lam: Optional[float], partner: Optional[torch.Tensor] = None) -> None:
        self.lam, self.partner = lam, partner


class EmbeddingCapture:
    """Captures the input of the first encoder layer (the embedding output, after mixing)."""

    def __init__(self, model: torch.nn.Module):
        self.value: Optional[torch.Tensor] = None
        self.handle = encoder_layers(model)[0].register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.value = args[0] if args else kwargs.get("hidden_states")


def draw_lambda(seed: int, micro_step: int, alpha: float) -> float:
    """lambda ~ Beta(alpha, alpha), folded to >= 0.5. A function of (seed, step): the same
    on every rank and after a resume."""
    lam = float(np.random.default_rng([seed, 0x4D495855, micro_step]).beta(alpha, alpha))
    return max(lam, 1.0 - lam)


def partner_index(batch_size: int, device) -> torch.Tensor:
    """Each example's mixup partner: the reversed batch (as the reference code pairs them)."""
    return torch.arange(batch_size - 1, -1, -1, device=device)


def ramp(progress: float) -> float:
    """Linear ramp of the consistency weight from 0 to 1 over the phase."""
    return min(max(progress, 0.0), 1.0)


class _Side:
    """Hooks on one model: captured layers (1-based keys) and the embedding mixer."""

    def __init__(self, model: torch.nn.Module, layers: set[int], kinds: set[str]):
        self.model = model
        self.mixer = EmbeddingMixer(model)
        body = sorted(i for i in layers if i > 0)
        self.capture = LayerCapture(model, [i - 1 for i in body], tuple(sorted(kinds))) if body and kinds else None
        self.embedding = EmbeddingCapture(model) if 0 in layers and "hidden" in kinds else None

    def run(self, inputs: dict, lam: Optional[float] = None, partner=None) -> tuple[torch.Tensor, dict]:
        if self.capture is not None:
            self.capture.clear()
        self.mixer.set(lam, partner)
        try:
            logits = self.model(**inputs).logits
        finally:
            self.mixer.set(None)
        caps = {i + 1: dict(v) for i, v in (self.capture.outputs.items() if self.capture else [])}
        if self.embedding is not None:
            caps[0] = {"hidden": self.embedding.value}
        return logits, caps


class DistillObjective:
    """The loss of one phase. Call as ``loss_fn(engine, batch, micro_step)``."""

    def __init__(self, plan: PhasePlan, module: DistillModule, teacher: Optional[torch.nn.Module],
                 pairs: list[tuple[int, int]], relation_heads: int, temperature: float, regression: bool,
                 device: torch.device, seed: int, total_micro_steps: int, alpha: float = 1.0,
                 consistency_target: str = "clean", ema_decay: float = 0.999, consistency_distance: str = "relation",
                 teacher_logits: Optional[torch.Tensor] = None, teacher_dtype: torch.dtype = torch.float32):
        self.plan, self.module, self.teacher = plan, module, teacher
        self.pairs, self.relation_heads, self.temperature = pairs, relation_heads, temperature
        self.regression, self.device, self.seed, self.total = regression, device, seed, total_micro_steps
        self.alpha, self.distance = alpha, consistency_distance
        self.cached_logits = teacher_logits
        self.teacher_dtype = teacher_dtype
        terms = [TERMS[name] for name in plan.terms]
        kinds = set().union(*(t.kinds for t in terms)) if terms else set()
        consistency_kinds = {"q", "k", "v"} if consistency_distance == "relation" else {"hidden"}
        s_layers = {s for s, _ in pairs} if kinds else set()
        student_kinds = set(kinds)
        if plan.consistency > 0:
            student_kinds |= consistency_kinds
            s_layers.add(max(s for s, _ in pairs) if pairs else module.student.config.num_hidden_layers)
        self.consistency_layer = max(s_layers) if s_layers else None
        self.student_side = _Side(module.student, s_layers, student_kinds)
        self.need_teacher_logits = any(t.needs_teacher_logits for t in terms)
        self.need_teacher_forward = teacher is not None and (bool(kinds) or
                                                             (self.need_teacher_logits and teacher_logits is None))
        self.teacher_side = _Side(teacher, {t for _, t in pairs} if kinds else set(), kinds) \
            if teacher is not None else None
        self.teacher_heads = teacher.config.num_attention_heads if teacher is not None else 0
        self.ema = None
        if plan.consistency > 0 and consistency_target == "ema":
            self.ema = copy.deepcopy(module.student).eval().requires_grad_(False)
            self.ema_side = _Side(self.ema, {self.consistency_layer}, consistency_kinds)
            self.ema_decay, self._ema_step = ema_decay, 0
        self.teacher_forwards = 0  # examples the teacher has processed (tests check the KD cache)

    # ------------------------------------------------------------------ checkpointed state
    def save_extra(self, tag_dir) -> None:
        """The EMA copy (the same on every rank), beside the engine's checkpoint."""
        if self.ema is not None and torch.distributed.get_rank() == 0:
            from safetensors.torch import save_file

            state = {k: v.detach().contiguous() for k, v in self.ema.state_dict().items()}
            state["__ema_step__"] = torch.tensor([self._ema_step])
            save_file(state, str(tag_dir / "ema.safetensors"))

    def load_extra(self, tag_dir) -> None:
        if self.ema is not None and (tag_dir / "ema.safetensors").is_file():
            from safetensors.torch import load_file

            state = load_file(str(tag_dir / "ema.safetensors"))
            self._ema_step = int(state.pop("__ema_step__")[0])
            self.ema.load_state_dict(state)

    # ------------------------------------------------------------------ helpers
    def _update_ema(self, engine) -> None:
        if self.ema is None or engine.global_steps == self._ema_step:
            return
        self._ema_step = engine.global_steps
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.module.student.parameters()):
                e.mul_(self.ema_decay).add_(p.detach().to(e.dtype), alpha=1.0 - self.ema_decay)

    def _consistency(self, mixed: dict, clean: dict, lam: float, partner: torch.Tensor, mask_mix, mask) -> torch.Tensor:
        layer = self.consistency_layer
        heads = self.relation_heads
        total = 0.0
        for weight, idx in ((lam, None), (1.0 - lam, partner)):
            target_mask = mask if idx is None else mask[idx]
            if self.distance == "relation":
                for kind in ("q", "k", "v"):
                    target = clean[layer][kind] if idx is None else clean[layer][kind][idx]
                    total = total + weight * losses.masked_kl(
                        losses.scaled_dot(target, target, heads),
                        losses.scaled_dot(mixed[layer][kind], mixed[layer][kind], heads),
                        target_mask, mask_mix, target_mask)
            else:
                target = clean[layer]["hidden"] if idx is None else clean[layer]["hidden"][idx]
                total = total + weight * losses.hidden_mse(target, mixed[layer]["hidden"], target_mask)
        return total

    # ------------------------------------------------------------------ the step
    def __call__(self, engine, batch: dict, micro_step: int):
        self._update_ema(engine)
        inputs = model_inputs(batch, self.device)
        mask = inputs["attention_mask"]
        lam, partner, mask_mix = None, None, mask
        if self.plan.mixup:
            lam = draw_lambda(self.seed, micro_step, self.alpha)
            partner = partner_index(mask.shape[0], mask.device)
            mask_mix = mask | mask[partner]
        view = dict(inputs, attention_mask=mask_mix)

        teacher_logits, teacher_caps = None, {}
        if self.need_teacher_forward:
            with torch.no_grad():
                teacher_logits, teacher_caps = self.teacher_side.run(view, lam, partner)
            self.teacher_forwards += int(mask.shape[0])
        elif self.need_teacher_logits:
            teacher_logits = self.cached_logits[batch["index"]].to(self.device)

        student_logits, student_caps = self.student_side.run(view, lam, partner)
        x = TermInputs(teacher_logits=teacher_logits, student_logits=student_logits, teacher_caps=teacher_caps,
                       student_caps=student_caps, mask=mask_mix, labels=batch["labels"].to(self.device),
                       pairs=self.pairs, teacher_heads=self.teacher_heads,
                       student_heads=self.module.student.config.num_attention_heads,
                       relation_heads=self.relation_heads, temperature=self.temperature,
                       regression=self.regression, project=self.module.project)
        total = torch.zeros((), device=self.device)
        components: dict = {}
        for name, weight in self.plan.terms.items():
            parts = TERMS[name].fn(x)
            value = sum(parts.values())
            if len(parts) > 1:
                components.update({f"{name}/{k}": v.detach() for k, v in parts.items()})
            components[name] = value.detach()
            components[f"{name}_weighted"] = weight * value.detach()
            total = total + weight * value
        if self.plan.consistency > 0:
            w = self.plan.consistency * ramp(micro_step / max(self.total, 1))
            side = self.ema_side if self.ema is not None else self.student_side
            with torch.no_grad():
                _, clean = side.run(inputs)  # the stop-gradient clean pass, own masks
            cons = self._consistency(student_caps, clean, lam, partner, mask_mix, mask)
            components["consistency"] = cons.detach()
            components["consistency_weighted"] = w * cons.detach()
            components["consistency_weight"] = torch.tensor(w)
            total = total + w * cons
        if lam is not None:
            components["lambda"] = torch.tensor(lam)
        return total, components
