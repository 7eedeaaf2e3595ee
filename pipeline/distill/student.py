"""The student as the DeepSpeed engine trains it: the classifier plus learned projections
(student width -> teacher width) for hidden-state terms, and how it is initialised."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from pipeline.models.loading import build_classifier
from pipeline.training.checkpointing import full_numel


class DistillModule(torch.nn.Module):
    """What the engine trains. Its forward is the student's."""

    def __init__(self, student: torch.nn.Module, projected_layers: list[int], teacher_width: int):
        super().__init__()
        self.student = student
        width = student.config.hidden_size
        self.projections = torch.nn.ModuleDict(
            {str(i): torch.nn.Linear(width, teacher_width) for i in projected_layers} if width != teacher_width else {})

    @property
    def config(self):
        """The student's transformers config (what the module is, to the rest of crild)."""
        return self.student.config

    def forward(self, **inputs):
        return self.student(**inputs)

    def project(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        proj = self.projections[str(layer)] if str(layer) in self.projections else None
        return hidden if proj is None else proj(hidden.to(proj.weight.dtype))


def build_student(cfg, spec, previous: Optional[Path]):
    """The previous phase's student, or a new one as ``student.init`` says: the bottom
    ``num_layers`` layers of ``backbone`` (truncated), a random one of ``random_init``'s
    shape, or ``backbone`` as it is (folder)."""
    if previous is not None:
        return build_classifier(str(previous), spec, "student")
    s = cfg.student
    kwargs = {"max_length": cfg.task.max_length}
    if s.init == "truncated":
        return build_classifier(s.backbone, spec, "student", num_layers=s.num_layers, **kwargs)
    if s.init == "random":
        return build_classifier(s.backbone, spec, "student", random_init=s.random_init, **kwargs)
    return build_classifier(s.backbone, spec, "student", **kwargs)


def size_note(student: torch.nn.Module, teacher: Optional[torch.nn.Module]) -> Optional[str]:
    """A note when the student is not smaller than its teacher (a swapped pair of models, or a
    ``random_init`` shape larger than meant): distillation runs as asked, and says so once."""
    if teacher is None:
        return None
    s, t = full_numel(student.parameters()), full_numel(teacher.parameters())  # whole under ZeRO-3 too
    if s < t:
        return None
    layers = f"{student.config.num_hidden_layers} against {teacher.config.num_hidden_layers} layers"
    return (f"note: the student has {s / 1e6:.2f}M parameters, {s / t:.2f}x its teacher's {t / 1e6:.2f}M ({layers}, "
            f"hidden {student.config.hidden_size} against {teacher.config.hidden_size}); a student is meant to be "
            f"smaller (student.init, student.num_layers, student.random_init)")
