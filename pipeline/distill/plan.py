"""A distillation stage's plan in words: each phase's loss, mixup and consistency, the
layers its terms match and the data it reads. The stage logs a phase's line as the phase
starts; ``crild config`` prints the whole plan under the configuration, so that what a
preset resolves to is seen before anything trains."""
from __future__ import annotations

from pipeline.distill.layers import layer_layout
from pipeline.distill.presets import Phase, resolve_phases

# phase_source -> what the plan says the phase reads
SOURCE_WORDS = {"augmented": "the augmented training set (stage augment)",
                "train": "the task's training set",
                "supplementary": "the supplementary tasks' training sets ({})",
                "mixed": "the task's training set mixed with the supplementary tasks' ({})"}


def phase_recipe(phase: Phase, pairs: list) -> str:
    """A phase's loss as a weighted sum of its terms, mixup and the consistency weight where
    they apply, and the layer pairs (student layer <- teacher layer, 0 being the embeddings)
    that its terms read."""
    loss = " + ".join(f"{weight:g} x {term}" for term, weight in phase.terms.items())
    mixup = f"; mixup, consistency weight {phase.consistency:g}" if phase.mixup else ""
    layers = f"; layers {', '.join(f'{s}<-{t}' for s, t in pairs)} (student<-teacher)" if pairs else ""
    return f"loss {loss}{mixup}{layers}"


def phase_source(distill_cfg, phase: str) -> str:
    """What ``phase`` trains on: ``augmented`` (stage 2's output, the originals included),
    ``supplementary`` (the supplementary datasets' inputs), ``mixed`` (the target task's
    training split and those) or ``train`` (the target task's training split)."""
    if phase in distill_cfg.augmented_phases:
        return "augmented"
    if phase == "kd" or not distill_cfg.supplementary:
        return "train"
    if phase == "ild_supplementary":
        return "supplementary"
    return "mixed" if distill_cfg.supplementary_mode == "mixed" else "train"


def plan_lines(distill_cfg, key: str, student_config=None, teacher_config=None) -> list[str]:
    """The phases ``distill_cfg`` (the section at ``key``) runs, a line each, after a line
    naming the preset. Layer pairs are given where both models' configs are (None where an
    earlier stage of the run writes the model)."""
    supplements = ", ".join(s.task.name for s in distill_cfg.supplementary)
    lines = [f"{key}, as preset {distill_cfg.preset} resolves it:"]
    for phase in resolve_phases(distill_cfg):
        known = student_config is not None and teacher_config is not None
        pairs = layer_layout(distill_cfg, phase, student_config, teacher_config).pairs if known else []
        reads = SOURCE_WORDS[phase_source(distill_cfg, phase.name)].format(supplements)
        lines.append(f"  {phase.name}: {phase_recipe(phase, pairs)}; reads {reads}")
    return lines
