"""Registered distillation loss terms, layer mappings and the paper's presets.

A preset names the phases to run and the weighted terms of each; YAML can re-weight any
term (weight 0 removes it) or add registered ones:

    stages:
      distill:
        preset: cr-ild
        ild_terms: {hidden_mse: 0.5}     # add a term to the ILD phases
        consistency: {weight: 0.2}
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Callable

import torch

from pipeline import losses
from pipeline.errors import UserError

PHASES = ("ild_supplementary", "ild", "kd")


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


@dataclass(frozen=True)
class Preset:
    phases: tuple
    ild: dict = field(default_factory=dict)
    kd: dict = field(default_factory=lambda: {"logit_kd": 1.0})
    layer_map: str = "last"
    mixup: bool = False
    consistency: float = 0.0
    needs_teacher: bool = True


PRESETS: dict[str, Preset] = {
    "kd": Preset(("kd",)),
    "pkd": Preset(("kd",), kd={"logit_kd": 0.5, "ce": 0.5, "pkd": 100.0}, layer_map="uniform"),
    "tinybert": Preset(("ild", "kd"), ild={"attention_mse": 1.0, "hidden_mse": 1.0}, layer_map="uniform"),
    "minilm": Preset(("ild", "kd"), ild={"attention_kl": 1.0, "value_relation": 1.0}),
    # MiniLMv2 transfers Q/K/V relations of an upper-middle teacher layer (21 of 24 in its paper)
    "minilmv2": Preset(("ild", "kd"), ild={"qkv_relation": 1.0}, layer_map="upper_middle"),
    "l-ild": Preset(("ild", "kd"), ild={"qkv_relation": 1.0}),
    "cr-ild": Preset(("ild", "kd"), ild={"qkv_relation": 1.0}, mixup=True, consistency=0.1),
    "cr-ild-no-consistency": Preset(("ild", "kd"), ild={"qkv_relation": 1.0}, mixup=True, consistency=0.0),
    "finetune": Preset(("kd",), kd={"ce": 1.0}, needs_teacher=False),  # the no-teacher baseline
}


def _suggest(name: str, names) -> str:
    near = difflib.get_close_matches(str(name), list(names), n=1, cutoff=0.4)
    return f"; did you mean '{near[0]}'?" if near else f" (known: {', '.join(names)})"


@dataclass(frozen=True)
class PhasePlan:
    name: str
    terms: dict  # term -> weight (> 0)
    mixup: bool
    consistency: float  # w_ic (0: off)

    @property
    def is_ild(self) -> bool:
        return self.name != "kd"


def resolve_phases(dcfg) -> list[PhasePlan]:
    preset = PRESETS[dcfg.preset]
    phases = list(dcfg.phases) if dcfg.phases is not None else list(preset.phases)
    if dcfg.phases is None and dcfg.supplementary and dcfg.supplementary_mode == "before" and "ild" in phases:
        phases.insert(phases.index("ild"), "ild_supplementary")
    mixup = preset.mixup if dcfg.mixup.enabled is None else dcfg.mixup.enabled
    consistency = preset.consistency if dcfg.consistency.weight is None else dcfg.consistency.weight
    plans = []
    for phase in phases:
        ild = phase != "kd"
        terms = dict(preset.ild if ild else preset.kd)
        terms.update(dcfg.ild_terms if ild else dcfg.kd_terms)
        terms = {k: float(v) for k, v in terms.items() if v != 0}
        plans.append(PhasePlan(phase, terms, mixup and ild, consistency if (mixup and ild) else 0.0))
    return plans


def layer_pairs(dcfg, n_student: int, n_teacher: int, embeddings: bool, preset_map: str) -> list[tuple[int, int]]:
    """1-based (student layer, teacher layer) pairs; (0, 0) maps the embedding outputs."""
    how = dcfg.layer_map or preset_map
    if how == "last":
        return [(n_student, n_teacher)]
    if how == "upper_middle":  # teacher layer floor(7n/8): 21 of 24, 10 of 12, 5 of 6
        return [(n_student, max(1, n_teacher * 7 // 8))]
    if how == "uniform":
        pairs = [(i, i * n_teacher // n_student) for i in range(1, n_student + 1)]
        return ([(0, 0)] if embeddings else []) + pairs
    pairs = [tuple(p) for p in dcfg.layer_pairs]
    for s, t in pairs:
        if not (0 <= s <= n_student and 0 <= t <= n_teacher):
            raise UserError(f"stages.distill.layer_pairs: pair [{s}, {t}] is outside the student's {n_student} "
                            f"and the teacher's {n_teacher} layers")
    return pairs


def check_distill_config(dcfg, cfg, src: str) -> None:
    """Static checks of stages.distill (model-dependent checks happen when models load)."""
    from pipeline.tasks import TASKS

    if dcfg.preset not in PRESETS:
        raise UserError(f"{src}: stages.distill.preset: unknown preset '{dcfg.preset}'{_suggest(dcfg.preset, PRESETS)}")
    for key in ("ild_terms", "kd_terms"):
        for name, weight in getattr(dcfg, key).items():
            if name not in TERMS:
                raise UserError(f"{src}: stages.distill.{key}: unknown term '{name}'{_suggest(name, TERMS)}")
            if weight < 0:
                raise UserError(f"{src}: stages.distill.{key}.{name}: expected a weight >= 0, got {weight}")
    for phase in dcfg.phases or []:
        if phase not in PHASES:
            raise UserError(f"{src}: stages.distill.phases: unknown phase '{phase}'{_suggest(phase, PHASES)}")
    if dcfg.layer_map is not None and dcfg.layer_map not in ("last", "upper_middle", "uniform", "pairs"):
        raise UserError(f"{src}: stages.distill.layer_map: expected last, upper_middle, uniform or pairs, "
                        f"got '{dcfg.layer_map}'")
    if dcfg.layer_map == "pairs" and (not dcfg.layer_pairs or any(len(p) != 2 for p in dcfg.layer_pairs)):
        raise UserError(f"{src}: stages.distill.layer_pairs: expected a list of [student, teacher] pairs")
    if dcfg.consistency.target not in ("clean", "ema"):
        raise UserError(f"{src}: stages.distill.consistency.target: expected clean or ema, "
                        f"got '{dcfg.consistency.target}'")
    if dcfg.consistency.distance not in ("relation", "hidden"):
        raise UserError(f"{src}: stages.distill.consistency.distance: expected relation or hidden, "
                        f"got '{dcfg.consistency.distance}'")
    if dcfg.supplementary_mode not in ("before", "mixed"):
        raise UserError(f"{src}: stages.distill.supplementary_mode: expected before or mixed, "
                        f"got '{dcfg.supplementary_mode}'")
    for phase in dcfg.augmented_phases:
        if phase not in PHASES:
            raise UserError(f"{src}: stages.distill.augmented_phases: unknown phase '{phase}'{_suggest(phase, PHASES)}")
    if dcfg.mixup.alpha <= 0:
        raise UserError(f"{src}: stages.distill.mixup.alpha: expected a positive number, got {dcfg.mixup.alpha}")
    if dcfg.relation_heads is not None and dcfg.relation_heads < 1:
        raise UserError(f"{src}: stages.distill.relation_heads: expected a positive integer")
    if dcfg.temperature <= 0:
        raise UserError(f"{src}: stages.distill.temperature: expected a positive number, got {dcfg.temperature}")
    for i, sup in enumerate(dcfg.supplementary):
        if sup.task.name not in TASKS:
            raise UserError(f"{src}: stages.distill.supplementary[{i}].task.name: unknown task "
                            f"'{sup.task.name}'{_suggest(sup.task.name, TASKS)}")
        if sup.ratio <= 0:
            raise UserError(f"{src}: stages.distill.supplementary[{i}].ratio: expected a positive number")
    for plan in resolve_phases(dcfg):
        if not plan.terms and plan.consistency == 0:
            raise UserError(f"{src}: stages.distill: phase '{plan.name}' of preset '{dcfg.preset}' has no loss terms")
