"""Which teacher and student layers a phase matches (the layer map), with how many relation
heads, and the checks that the two models can be matched that way."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pipeline.distill.presets import PRESETS, Phase
from pipeline.distill.terms import TERMS
from pipeline.errors import UserError

# (student layers, teacher layers, map the embeddings too) -> 1-based (student layer,
# teacher layer) pairs; (0, 0) maps the embedding outputs.
LAYER_MAPS: dict[str, Callable[[int, int, bool], list[tuple[int, int]]]] = {
    "last": lambda n_s, n_t, emb: [(n_s, n_t)],
    # teacher layer floor(7n/8): 21 of 24, 10 of 12, 5 of 6
    "upper_middle": lambda n_s, n_t, emb: [(n_s, max(1, n_t * 7 // 8))],
    "uniform": lambda n_s, n_t, emb: ([(0, 0)] if emb else []) + [(i, i * n_t // n_s) for i in range(1, n_s + 1)],
    # many-to-many (BERT-EMD): every student layer with every teacher layer
    "all": lambda n_s, n_t, emb: ([(0, 0)] if emb else []) + [(i, j) for i in range(1, n_s + 1)
                                                              for j in range(1, n_t + 1)],
}


def layer_pairs(distill_cfg, n_student: int, n_teacher: int, embeddings: bool) -> list[tuple[int, int]]:
    """The configured mapping (``layer_map``, else the preset's) for these two depths;
    ``pairs`` takes ``layer_pairs`` as given, checked against both depths."""
    how = distill_cfg.layer_map or PRESETS[distill_cfg.preset].layer_map
    if how == "uniform" and n_student > n_teacher:
        raise UserError(f"stages.distill.layer_map: uniform maps the student's {n_student} layers onto distinct "
                        f"teacher layers, and the teacher has {n_teacher}; use a deeper teacher, layer_map last, "
                        f"or layer_map pairs")
    if how in LAYER_MAPS:
        return LAYER_MAPS[how](n_student, n_teacher, embeddings)
    pairs = [tuple(p) for p in distill_cfg.layer_pairs]
    for s, t in pairs:
        if not (0 <= s <= n_student and 0 <= t <= n_teacher):
            raise UserError(f"stages.distill.layer_pairs: pair [{s}, {t}] is outside the student's {n_student} "
                            f"and the teacher's {n_teacher} layers")
    return pairs


@dataclass(frozen=True)
class LayerLayout:
    pairs: list  # [(student layer, teacher layer)], 1-based; empty when no term reads layers
    relation_heads: int  # heads the Q/K/V relations are split into (both sides)


def layer_layout(distill_cfg, phase: Phase, student_config, teacher_config=None) -> LayerLayout:
    """The layers ``phase`` matches between the student and the teacher (configs of the two
    models), checked: head counts where a term needs them equal, relation heads that divide
    both widths."""
    uses_layers = any(TERMS[t].kinds for t in phase.terms) or phase.consistency > 0
    if teacher_config is not None and uses_layers:
        embeddings = any(TERMS[t].embeddings for t in phase.terms)
        pairs = layer_pairs(distill_cfg, student_config.num_hidden_layers, teacher_config.num_hidden_layers,
                            embeddings)
        heads = distill_cfg.relation_heads or teacher_config.num_attention_heads
        _check(teacher_config, student_config, phase.terms, heads)
        _check_pairs(pairs, phase.terms)
        return LayerLayout(pairs, heads)
    if phase.consistency > 0:
        return LayerLayout([], distill_cfg.relation_heads or student_config.num_attention_heads)
    return LayerLayout([], 1)


def _check(teacher, student, terms: dict, relation_heads: int) -> None:
    for name in terms:
        if TERMS[name].same_heads and teacher.num_attention_heads != student.num_attention_heads:
            raise UserError(f"stages.distill: term '{name}' needs equal attention-head counts, teacher has "
                            f"{teacher.num_attention_heads}, student {student.num_attention_heads}")
    for who, config in (("teacher", teacher), ("student", student)):
        if config.hidden_size % relation_heads:
            raise UserError(f"stages.distill.relation_heads: {relation_heads} relation heads do not divide the "
                            f"{who}'s hidden size {config.hidden_size}")


def _check_pairs(pairs: list, terms: dict) -> None:
    """Every layer term gets at least one pair: the embedding pair (0, 0) counts only for
    hidden-state terms, so a map of (0, 0) alone leaves attention and relation terms none."""
    for name in terms:
        term = TERMS[name]
        if term.kinds and not any(s > 0 or term.embeddings for s, _ in pairs):
            raise UserError(f"stages.distill.layer_pairs: term '{name}' reads Transformer layers, and the only "
                            f"pair is the embeddings' [0, 0]; add a pair of layers numbered from 1")
