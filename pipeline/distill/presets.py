"""The paper's methods as presets, and the phases and layer mappings they resolve to.

A preset names the phases to run and the weighted terms of each; the configuration can
re-weight any term (weight 0 removes it) or add registered ones:

    stages:
      distill:
        preset: cr-ild
        ild_terms: {hidden_mse: 0.5}     # add a term to the ILD phases
        consistency: {weight: 0.2}

Each baseline follows the conventions of the code that produced the paper's numbers (where
the original paper's formula and its code disagree, the code wins; the other convention
stays an option): PKD takes the mean over the [CLS] features (``pkd_features: sum`` for the
PKD paper's formula); TinyBERT sums its layer terms (``layer_reduction: mean`` to average
them) and compares attention distributions by KL, as the reference code's TinyBERT mode
does (``ild_terms: {attention_kl: 0, attention_mse: 1}`` for the TinyBERT paper's score
MSE); EMD-ILD is BERT-EMD's many-to-many map with separate attention and hidden weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.distill.terms import TERMS, unread_settings

PHASES = ("ild_supplementary", "ild", "kd")


@dataclass(frozen=True)
class Preset:
    phases: tuple
    ild: dict = field(default_factory=dict)
    kd: dict = field(default_factory=lambda: {"logit_kd": 1.0})
    layer_map: str = "last"
    mixup: bool = False
    consistency: float = 0.0
    needs_teacher: bool = True
    layer_reduction: str = "mean"  # how layer terms combine their layer pairs: "mean" or "sum"
    revision: int = 0  # bumped when the preset's defaults change: outputs made before are stale


PRESETS: dict[str, Preset] = {
    "kd": Preset(("kd",)),
    "pkd": Preset(("kd",), kd={"logit_kd": 0.5, "ce": 0.5, "pkd": 100.0}, layer_map="uniform"),
    # the reference code's TinyBERT ("AH"): attention KL and hidden MSE (embeddings too), summed over layers
    "tinybert": Preset(("ild", "kd"), ild={"attention_kl": 1.0, "hidden_mse": 1.0}, layer_map="uniform",
                       layer_reduction="sum", revision=1),
    # BERT-EMD: every student layer against every teacher layer, weighted by earth mover's distance
    "emd-ild": Preset(("ild", "kd"), ild={"emd_attention": 1.0, "emd_hidden": 1.0}, layer_map="all",
                      layer_reduction="sum"),
    "minilm": Preset(("ild", "kd"), ild={"attention_kl": 1.0, "value_relation": 1.0}),
    # MiniLMv2 transfers Q/K/V relations of an upper-middle teacher layer (21 of 24 in its paper)
    "minilmv2": Preset(("ild", "kd"), ild={"qkv_relation": 1.0}, layer_map="upper_middle"),
    "l-ild": Preset(("ild", "kd"), ild={"qkv_relation": 1.0}),
    "cr-ild": Preset(("ild", "kd"), ild={"qkv_relation": 1.0}, mixup=True, consistency=0.1),
    "cr-ild-no-consistency": Preset(("ild", "kd"), ild={"qkv_relation": 1.0}, mixup=True, consistency=0.0),
    "finetune": Preset(("kd",), kd={"ce": 1.0}, needs_teacher=False),  # the no-teacher baseline
}


@dataclass(frozen=True)
class Phase:
    """One distillation phase as the configuration resolves it."""

    name: str  # one of PHASES
    terms: dict  # term -> weight (> 0)
    mixup: bool
    consistency: float  # w_ic (0: off)
    layer_reduction: str = "mean"  # how layer terms combine their layer pairs

    @property
    def is_ild(self) -> bool:
        return self.name != "kd"


def resolve_phases(distill_cfg) -> list[Phase]:
    """The phases ``stages.distill`` runs, in order, with their terms and weights."""
    preset = PRESETS[distill_cfg.preset]
    phases = list(distill_cfg.phases) if distill_cfg.phases is not None else list(preset.phases)
    if distill_cfg.phases is None and distill_cfg.supplementary and distill_cfg.supplementary_mode == "before" \
            and "ild" in phases:
        phases.insert(phases.index("ild"), "ild_supplementary")
    mixup = preset.mixup if distill_cfg.mixup.enabled is None else distill_cfg.mixup.enabled
    consistency = preset.consistency if distill_cfg.consistency.weight is None else distill_cfg.consistency.weight
    reduction = distill_cfg.layer_reduction or preset.layer_reduction
    plans = []
    for phase in phases:
        ild = phase != "kd"
        terms = dict(preset.ild if ild else preset.kd)
        terms.update(distill_cfg.ild_terms if ild else distill_cfg.kd_terms)
        terms = {k: float(v) for k, v in terms.items() if v != 0}
        plans.append(Phase(phase, terms, mixup and ild, consistency if (mixup and ild) else 0.0, reduction))
    return plans


def needs_teacher(distill_cfg, phases) -> bool:
    """Whether any of ``phases`` (``resolve_phases``) reads the teacher."""
    return PRESETS[distill_cfg.preset].needs_teacher or reads_teacher_logits(phases) or any(
        TERMS[t].kinds for p in phases for t in p.terms)


def reads_teacher_logits(phases) -> bool:
    """Whether a term of ``phases`` reads the teacher's predictions, so that its classifier
    must be trained (intermediate layers alone can come from a backbone)."""
    return any(TERMS[t].needs_teacher_logits for p in phases for t in p.terms)


def phases_up_to(distill_cfg, phase: str | None) -> list[str]:
    """The names of the phases ``distill_cfg`` runs, up to and with ``phase`` (None: all)."""
    names = [p.name for p in resolve_phases(distill_cfg)]
    return names if phase is None else names[:names.index(phase) + 1]


def phase_settings(distill_cfg, settings: dict, phase: str) -> dict:
    """``settings`` (of ``stages.distill``, as ``settings_dict`` gives them) as the phases up
    to ``phase`` read them, for that phase's fingerprint and checkpoints: without the training
    sections and terms of the phases after it, without a setting that only a term none of
    them has reads (the KD temperature), and with the phases and augmented phases listed as
    far as it. Everything else stays, whether those phases read it or not."""
    phases = {p.name: p for p in resolve_phases(distill_cfg)}
    upto = phases_up_to(distill_cfg, phase)
    later = [p for p in PHASES if p not in upto]
    terms = {t for p in upto for t in phases[p].terms}
    unread = unread_settings(terms)
    out = {k: v for k, v in settings.items() if k not in later and k not in unread}
    if "kd" in later:
        out.pop("kd_terms", None)
    return {**out, "phases": upto, "augmented_phases": [p for p in distill_cfg.augmented_phases if p in upto]}


def revisions(distill_cfg) -> dict:
    """The revisions of the preset and of the terms ``distill_cfg`` runs, where not 0: part
    of the stage's fingerprint, so that a change of a preset's or a term's defaults makes
    the outputs made before it stale and leaves all others valid."""
    out = {}
    if PRESETS[distill_cfg.preset].revision:
        out["preset"] = PRESETS[distill_cfg.preset].revision
    terms = {name: TERMS[name].revision for phase in resolve_phases(distill_cfg) for name in phase.terms
             if TERMS[name].revision}
    if terms:
        out["terms"] = terms
    return out
