"""One distillation step of a phase: the mixup view, the teacher and student passes with
their layers captured, the weighted terms and the consistency regulariser.

The step returns (total, components): every term unweighted and weighted, the parts of
multi-part terms, the consistency weight w(t) and lambda, ready for TensorBoard (the
TextBrewer convention).
"""
from __future__ import annotations

import json
from typing import Optional

import torch

from pipeline.data.tasks import task_spec
from pipeline.distill.consistency import KINDS as CONSISTENCY_KINDS
from pipeline.distill.consistency import Consistency
from pipeline.distill.hooked import HookedModel
from pipeline.distill.layers import LayerLayout
from pipeline.distill.mixup import mixed_view
from pipeline.distill.presets import Phase
from pipeline.distill.student import DistillModule
from pipeline.distill.term_math import TermInputs, state_scalars
from pipeline.distill.terms import TERMS
from pipeline.evaluation.predict import model_inputs
from pipeline.models.attention_masks import has_padding
from pipeline.outputs.atomic import write_json
from pipeline.runtime.distributed import is_main_process, mean_across_ranks

TERM_STATE = "term_state.json"


class DistillObjective:
    """The loss of one phase, built from the run configuration and the phase. Call as
    ``loss_fn(engine, batch, micro_step)``."""

    def __init__(self, cfg, phase: Phase, module: DistillModule, teacher: Optional[torch.nn.Module],
                 layout: LayerLayout, device: torch.device, total_micro_steps: int,
                 teacher_logits: Optional[torch.Tensor] = None):
        """``teacher_logits``: the teacher's logits on every training row (the KD cache); the
        teacher then runs only where a term reads its layers. The cache is moved to ``device``
        once (a few MB even for augmented data): a step then only indexes it there, where a
        copy of its rows from host memory each step would wait for the device."""
        d = cfg.stages.distill
        self.phase, self.module, self.layout = phase, module, layout
        self.temperature, self.alpha, self.seed = d.temperature, d.mixup.alpha, cfg.seed
        self.regression = task_spec(cfg.task).regression
        self.device = device
        self.cached_logits = teacher_logits.to(device) if teacher_logits is not None else None
        terms = [TERMS[name] for name in phase.terms]
        self.term_fns = {t.name: t.fn for t in terms}
        kinds = set().union(*(t.kinds for t in terms)) if terms else set()
        student_layers = {s for s, _ in layout.pairs} if kinds else set()
        student_kinds = set(kinds)
        if phase.consistency > 0:
            student_kinds |= CONSISTENCY_KINDS[d.consistency.distance]
            student_layers.add(max(s for s, _ in layout.pairs) if layout.pairs
                               else module.student.config.num_hidden_layers)
        self.student = HookedModel(module.student, student_layers, student_kinds)
        self.need_teacher_logits = any(t.needs_teacher_logits for t in terms)
        self.need_teacher_forward = teacher is not None and (bool(kinds) or
                                                             (self.need_teacher_logits and teacher_logits is None))
        self.teacher = HookedModel(teacher, {t for _, t in layout.pairs} if kinds else set(), kinds) \
            if teacher is not None else None
        self.teacher_heads = teacher.config.num_attention_heads if teacher is not None else 0
        self.consistency = Consistency(d.consistency, phase.consistency, max(student_layers), layout.relation_heads,
                                       self.student, total_micro_steps) if phase.consistency > 0 else None
        self.teacher_forwards = 0  # examples the teacher has processed (tests check the KD cache)
        self.pkd_features = d.pkd_features
        self.term_state: dict = {}  # the terms' state across steps (EMD's layer weights), the same on every rank

    def save_extra(self, tag_dir) -> None:
        """State outside the engine that a checkpoint keeps: the consistency's EMA copy and
        the terms' state."""
        if self.consistency is not None:
            self.consistency.save(tag_dir)
        if self.term_state and is_main_process():
            write_json(tag_dir / TERM_STATE, self.term_state)

    def load_extra(self, tag_dir) -> None:
        if self.consistency is not None:
            self.consistency.load(tag_dir)
        if (tag_dir / TERM_STATE).is_file():
            self.term_state = json.loads((tag_dir / TERM_STATE).read_text())

    def _teacher_logits(self, view_inputs: dict, view, padded, batch: dict, rows: int):
        if self.need_teacher_forward:
            with torch.no_grad():
                logits, caps = self.teacher.run(view_inputs, view, padded)
            self.teacher_forwards += rows
            return logits, caps
        if self.need_teacher_logits:
            return self.cached_logits[batch["index"].to(self.device, non_blocking=True)], {}
        return None, {}

    def __call__(self, engine, batch: dict, micro_step: int):
        if self.consistency is not None:
            self.consistency.update_ema(engine, self.module.student)
        inputs = model_inputs(batch, self.device)
        mask = inputs["attention_mask"]
        padded = has_padding(batch["attention_mask"])  # the host's copy: no synchronisation
        view = mixed_view(self.seed, micro_step, self.alpha, mask, batch["attention_mask"]) if self.phase.mixup else None
        view_inputs = dict(inputs, attention_mask=view.mask if view is not None else mask)
        view_padded = view.padded if view is not None else padded

        teacher_logits, teacher_caps = self._teacher_logits(view_inputs, view, view_padded, batch, int(mask.shape[0]))
        student_logits, student_caps = self.student.run(view_inputs, view, view_padded)
        x = TermInputs(teacher_logits=teacher_logits, student_logits=student_logits, teacher_caps=teacher_caps,
                       student_caps=student_caps, mask=view_inputs["attention_mask"],
                       labels=batch["labels"].to(self.device, non_blocking=True), pairs=self.layout.pairs,
                       teacher_heads=self.teacher_heads, student_heads=self.module.student.config.num_attention_heads,
                       relation_heads=self.layout.relation_heads, temperature=self.temperature,
                       regression=self.regression, project=self.module.project,
                       layer_reduction=self.phase.layer_reduction, pkd_features=self.pkd_features,
                       state=self.term_state, shared=mean_across_ranks)
        total = torch.zeros((), device=self.device)
        components: dict = {}
        for name, weight in self.phase.terms.items():
            parts = self.term_fns[name](x)
            value = sum(parts.values())
            if len(parts) > 1:
                components.update({f"{name}/{k}": v.detach() for k, v in parts.items()})
            components[name] = value.detach()
            components[f"{name}_weighted"] = weight * value.detach()
            total = total + weight * value
        components.update({k: torch.tensor(v) for k, v in state_scalars(self.term_state, self.layout.pairs).items()})
        if self.consistency is not None:
            w = self.consistency.weight_at(micro_step)
            cons = self.consistency.value(student_caps, inputs, view, padded)
            components["consistency"] = cons.detach()
            components["consistency_weighted"] = w * cons.detach()
            components["consistency_weight"] = torch.tensor(w)
            total = total + w * cons
        if view is not None:
            components["lambda"] = torch.tensor(view.lam)
        return total, components
