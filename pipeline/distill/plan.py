"""A distillation stage's plan in words: each phase's loss, mixup and consistency, the
layers its terms match and the data it reads. The stage logs a phase's line as the phase
starts; ``crild config`` prints the whole plan under the configuration, so that what a
preset resolves to is seen before anything trains, with the keys set that no phase reads."""
from __future__ import annotations

from pipeline.distill.layers import layer_layout
from pipeline.distill.presets import PHASES, Phase, needs_teacher, resolve_phases
from pipeline.distill.terms import TERMS, unread_settings

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


LAYER_KEYS = ("layer_map", "layer_pairs", "layer_reduction", "relation_heads")
TEACHER_KEYS = ("teacher_model", "teacher_deepspeed_config", "teacher_precision")


def unused_settings(distill_cfg) -> list[str]:
    """The keys set in ``stages.distill`` (not left to their defaults) that none of the phases
    its preset and settings resolve to reads, each with why: a phase's training section or
    terms where that phase does not run, a term's setting where no phase has the term, mixup's
    and consistency's keys where no phase mixes or has the term, the layer keys where no term
    reads layers, the teacher's keys where nothing reads the teacher.
    Said, not refused: a study shares one base configuration across presets, where a key one
    preset reads another ignores. Conservative: a key some phase may read is not listed."""
    phases = resolve_phases(distill_cfg)
    names = [p.name for p in phases]
    terms = {t for p in phases for t in p.terms}
    given = distill_cfg.model_fields_set
    runs = f"runs {', '.join(names)}"
    unused = [(k, runs) for k in PHASES if k in given and k not in names]
    if "ild_terms" in given and not any(p.is_ild for p in phases):
        unused.append(("ild_terms", f"{runs}, no ILD phase"))
    if "kd_terms" in given and "kd" not in names:
        unused.append(("kd_terms", runs))
    unused += [(k, f"no phase has the {name} term") for k, name in unread_settings(terms).items() if k in given]
    # a section's switch (mixup.enabled, consistency.weight) is read even where it turns the section off
    if not any(p.mixup for p in phases):
        unused += [(f"mixup.{k}", "no phase mixes") for k in sorted(distill_cfg.mixup.model_fields_set - {"enabled"})]
    if not any(p.consistency for p in phases):
        unused += [(f"consistency.{k}", "no phase has the consistency term")
                   for k in sorted(distill_cfg.consistency.model_fields_set - {"weight"})]
    if not any(TERMS[t].kinds for t in terms) and not any(p.consistency for p in phases):
        unused += [(k, "no term reads layers") for k in LAYER_KEYS if k in given]
    if "supplementary_mode" in given and not distill_cfg.supplementary:
        unused.append(("supplementary_mode", "no supplementary datasets"))
    if not needs_teacher(distill_cfg, phases):
        unused += [(k, "nothing reads the teacher") for k in TEACHER_KEYS if k in given]
    return [f"{key} ({why})" for key, why in unused]


def unused_line(stage_cfg) -> str | None:
    """One line naming ``unused_settings`` of the distill stage's configuration
    (``stage_config``), or None when every key set is read. None for the baseline: its
    section is the distillation's merged with its own, and keys it inherits are not the
    user's to answer for there."""
    if stage_cfg.stage not in (None, "distill"):
        return None
    distill_cfg = stage_cfg.stages.distill
    unused = unused_settings(distill_cfg)
    return (f"stages.distill: set but unused under preset {distill_cfg.preset}: {'; '.join(unused)}"
            if unused else None)


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
