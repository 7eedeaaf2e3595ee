"""The registered distillation loss terms: each reads the captured layers and logits of
one step (``TermInputs``) and returns its named parts, whose sum is the term's value. The
math is in ``pipeline/distill/losses.py``; a term says what it needs captured."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from pipeline.distill import losses


@dataclass
class TermInputs:
    """Everything a term may read. Captures are keyed by 1-based layer index (0: the
    embedding output, for hidden states) and kind ("q", "k", "v", "hidden")."""

    teacher_logits: torch.Tensor | None
    student_logits: torch.Tensor | None
    teacher_caps: dict
    student_caps: dict
    mask: torch.Tensor
    labels: torch.Tensor | None
    pairs: list  # [(student_layer, teacher_layer)], 1-based
    teacher_heads: int
    student_heads: int
    relation_heads: int
    temperature: float
    regression: bool
    project: Callable[[int, torch.Tensor], torch.Tensor]  # student layer, hidden -> teacher width


@dataclass(frozen=True)
class Term:
    name: str
    fn: Callable[[TermInputs], dict]  # returns named parts; the term's value is their sum
    kinds: frozenset  # captured kinds it reads ("q", "k", "v", "hidden")
    needs_teacher_logits: bool = False
    needs_labels: bool = False
    embeddings: bool = False  # also maps the embedding output (layer 0) under `uniform`
    same_heads: bool = False  # needs equal attention-head counts

    @property
    def token_aligned(self) -> bool:
        """Reads teacher layers position by position, so teacher and student must tokenize
        alike (PKD's [CLS] too: the teacher runs on the student's tokens)."""
        return bool(self.kinds)


def _mean_over_pairs(x: TermInputs, per_pair: Callable[[int, int], dict], embeddings: bool = False) -> dict:
    """Mean over the mapped layer pairs; the embedding pair (0, 0) counts only for
    hidden-state terms (attention and relations exist in Transformer layers only)."""
    pairs = [p for p in x.pairs if embeddings or p[0] > 0]
    parts: dict = {}
    for s, t in pairs:
        for k, v in per_pair(s, t).items():
            parts[k] = parts.get(k, 0.0) + v / len(pairs)
    return parts


def _qkv_relation(x: TermInputs) -> dict:
    return _mean_over_pairs(x, lambda s, t: {
        kind: losses.relation_kl(x.teacher_caps[t][kind], x.student_caps[s][kind], x.relation_heads, x.mask)
        for kind in ("q", "k", "v")})


def _value_relation(x: TermInputs) -> dict:
    return _mean_over_pairs(x, lambda s, t: {"v": losses.relation_kl(
        x.teacher_caps[t]["v"], x.student_caps[s]["v"], x.relation_heads, x.mask)})


def _attention_kl(x: TermInputs) -> dict:
    return _mean_over_pairs(x, lambda s, t: {"attn": losses.attention_kl(
        x.teacher_caps[t]["q"], x.teacher_caps[t]["k"], x.student_caps[s]["q"], x.student_caps[s]["k"],
        x.teacher_heads, x.student_heads, x.mask)})


def _attention_mse(x: TermInputs) -> dict:
    return _mean_over_pairs(x, lambda s, t: {"attn": losses.attention_score_mse(
        x.teacher_caps[t]["q"], x.teacher_caps[t]["k"], x.student_caps[s]["q"], x.student_caps[s]["k"],
        x.teacher_heads, x.student_heads, x.mask)})


def _hidden_mse(x: TermInputs) -> dict:
    return _mean_over_pairs(x, lambda s, t: {"hidden": losses.hidden_mse(
        x.teacher_caps[t]["hidden"], x.project(s, x.student_caps[s]["hidden"]), x.mask)}, embeddings=True)


def _pkd(x: TermInputs) -> dict:
    return _mean_over_pairs(x, lambda s, t: {"cls": losses.normalized_cls_mse(
        x.teacher_caps[t]["hidden"], x.project(s, x.student_caps[s]["hidden"]))})


def _logit_kd(x: TermInputs) -> dict:
    return {"kd": losses.logit_kd(x.student_logits, x.teacher_logits, x.temperature, x.regression)}


def _ce(x: TermInputs) -> dict:
    return {"ce": losses.task_loss(x.student_logits, x.labels, x.regression)}


TERMS: dict[str, Term] = {t.name: t for t in [
    Term("qkv_relation", _qkv_relation, frozenset({"q", "k", "v"})),
    Term("value_relation", _value_relation, frozenset({"v"})),
    Term("attention_kl", _attention_kl, frozenset({"q", "k"}), same_heads=True),
    Term("attention_mse", _attention_mse, frozenset({"q", "k"}), same_heads=True),
    Term("hidden_mse", _hidden_mse, frozenset({"hidden"}), embeddings=True),
    Term("pkd", _pkd, frozenset({"hidden"})),
    Term("logit_kd", _logit_kd, frozenset(), needs_teacher_logits=True),
    Term("ce", _ce, frozenset(), needs_labels=True),
]}
