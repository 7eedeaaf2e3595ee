"""The math of the registered distillation terms (``pipeline/distill/terms.py``): each
function is named after its term, reads the captured layers and logits of one step
(``TermInputs``) and returns its named parts, whose sum is the term's value. The tensor
functions are in ``pipeline/distill/losses.py``.

Layer terms combine their layer pairs by ``layer_reduction``: the mean (MiniLM, CR-ILD) or
the sum (TinyBERT's code, BERT-EMD's). The EMD terms weight every pair of the many-to-many
map by an optimal transport plan (``pipeline/distill/emd.py``) and keep layer weights
across steps in ``state``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from pipeline.distill import emd, losses


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
    layer_reduction: str = "mean"  # over layer pairs: "mean" or "sum"
    pkd_features: str = "mean"  # PKD over the features: "mean" (the authors' code) or "sum" (its formula)
    state: dict = field(default_factory=dict)  # term name -> its state across steps (JSON-able; checkpointed)
    shared: Callable[[torch.Tensor], torch.Tensor] = lambda t: t  # a detached tensor -> its mean over ranks


def _over_pairs(x: TermInputs, per_pair: Callable[[int, int], dict], embeddings: bool = False) -> dict:
    """Mean or sum (``layer_reduction``) over the mapped layer pairs; the embedding pair
    (0, 0) counts only for hidden-state terms (attention and relations exist in Transformer
    layers only)."""
    pairs = [p for p in x.pairs if embeddings or p[0] > 0]
    scale = 1.0 / len(pairs) if x.layer_reduction == "mean" else 1.0
    parts: dict = {}
    for s, t in pairs:
        for k, v in per_pair(s, t).items():
            parts[k] = parts.get(k, 0.0) + v * scale
    return parts


def qkv_relation(x: TermInputs) -> dict:
    return _over_pairs(x, lambda s, t: {
        kind: losses.relation_kl(x.teacher_caps[t][kind], x.student_caps[s][kind], x.relation_heads, x.mask)
        for kind in ("q", "k", "v")})


def value_relation(x: TermInputs) -> dict:
    return _over_pairs(x, lambda s, t: {"v": losses.relation_kl(
        x.teacher_caps[t]["v"], x.student_caps[s]["v"], x.relation_heads, x.mask)})


def attention_kl(x: TermInputs) -> dict:
    return _over_pairs(x, lambda s, t: {"attn": losses.attention_kl(
        x.teacher_caps[t]["q"], x.teacher_caps[t]["k"], x.student_caps[s]["q"], x.student_caps[s]["k"],
        x.teacher_heads, x.student_heads, x.mask)})


def attention_mse(x: TermInputs) -> dict:
    return _over_pairs(x, lambda s, t: {"attn": losses.attention_score_mse(
        x.teacher_caps[t]["q"], x.teacher_caps[t]["k"], x.student_caps[s]["q"], x.student_caps[s]["k"],
        x.teacher_heads, x.student_heads, x.mask)})


def hidden_mse(x: TermInputs) -> dict:
    return _over_pairs(x, lambda s, t: {"hidden": losses.hidden_mse(
        x.teacher_caps[t]["hidden"], x.project(s, x.student_caps[s]["hidden"]), x.mask)}, embeddings=True)


def pkd(x: TermInputs) -> dict:
    return _over_pairs(x, lambda s, t: {"cls": losses.normalized_cls_mse(
        x.teacher_caps[t]["hidden"], x.project(s, x.student_caps[s]["hidden"]), x.pkd_features)})


def _layers_of(pairs) -> tuple[list, list]:
    """The student's and the teacher's Transformer layers in the map (the EMD terms' rows
    and columns)."""
    return sorted({s for s, _ in pairs if s > 0}), sorted({t for _, t in pairs if t > 0})


def state_scalars(state: dict, pairs) -> dict:
    """The terms' state as named numbers for TensorBoard: each EMD term's weight of every
    student and teacher layer (``emd_hidden/weight/teacher4``), which shows the layers each
    mapping settles on."""
    students, teachers = _layers_of(pairs)
    out = {}
    for name, weights in state.items():
        for side, layers in (("student", students), ("teacher", teachers)):
            out.update({f"{name}/weight/{side}{layer}": w for layer, w in zip(layers, weights.get(side) or [])})
    return out


def _emd(x: TermInputs, name: str, distance: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
    students, teachers = _layers_of(x.pairs)
    cost = torch.stack([torch.stack([distance(s, t) for t in teachers]) for s in students])
    return emd.emd_loss(cost, x.state.setdefault(name, {}), x.shared)


def emd_attention(x: TermInputs) -> dict:
    """BERT-EMD on attention scores: the masked score MSE of every student-teacher layer
    pair, weighted by the transport plan."""
    def scores(caps, layers, heads):
        return {n: losses.scaled_dot(caps[n]["q"], caps[n]["k"], heads) for n in layers}
    students, teachers = _layers_of(x.pairs)
    s_scores = scores(x.student_caps, students, x.student_heads)
    t_scores = scores(x.teacher_caps, teachers, x.teacher_heads)
    return {"attn": _emd(x, "emd_attention", lambda s, t: losses.score_mse(t_scores[t], s_scores[s], x.mask))}


def emd_hidden(x: TermInputs) -> dict:
    """BERT-EMD on hidden states: the MSE of every pair of Transformer layers, weighted by
    the transport plan, plus the embedding outputs' MSE when the map has (0, 0)."""
    projected = {s: x.project(s, x.student_caps[s]["hidden"]) for s in {s for s, _ in x.pairs}}
    parts = {"hidden": _emd(x, "emd_hidden", lambda s, t: losses.hidden_mse(
        x.teacher_caps[t]["hidden"], projected[s], x.mask))}
    if (0, 0) in x.pairs:
        parts["embeddings"] = losses.hidden_mse(x.teacher_caps[0]["hidden"], projected[0], x.mask)
    return parts


def logit_kd(x: TermInputs) -> dict:
    return {"kd": losses.logit_kd(x.student_logits, x.teacher_logits, x.temperature, x.regression)}


def ce(x: TermInputs) -> dict:
    return {"ce": losses.task_loss(x.student_logits, x.labels, x.regression)}
