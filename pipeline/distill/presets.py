"""The paper's methods as presets, and the phases and layer mappings they resolve to.

A preset names the phases to run and the weighted terms of each; the configuration can
re-weight any term (weight 0 removes it) or add registered ones:

    stages:
      distill:
        preset: cr-ild
        ild_terms: {hidden_mse: 0.5}     # add a term to the ILD phases
        consistency: {weight: 0.2}
"""
from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class Phase:
    """One distillation phase as the configuration resolves it."""

    name: str  # one of PHASES
    terms: dict  # term -> weight (> 0)
    mixup: bool
    consistency: float  # w_ic (0: off)

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
    plans = []
    for phase in phases:
        ild = phase != "kd"
        terms = dict(preset.ild if ild else preset.kd)
        terms.update(distill_cfg.ild_terms if ild else distill_cfg.kd_terms)
        terms = {k: float(v) for k, v in terms.items() if v != 0}
        plans.append(Phase(phase, terms, mixup and ild, consistency if (mixup and ild) else 0.0))
    return plans
