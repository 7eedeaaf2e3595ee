"""The registry of distillation loss terms: what each term reads, which models it fits,
and its revision. It imports no torch, so configuration checks and the command line stay
quick; a term's function (``Term.fn``) is loaded from ``pipeline/distill/term_math.py``,
where it has the term's name, when a step first calls it."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Term:
    name: str  # also the name of its function in term_math
    kinds: frozenset  # captured kinds it reads ("q", "k", "v", "hidden")
    needs_teacher_logits: bool = False
    needs_labels: bool = False
    embeddings: bool = False  # also maps the embedding output (layer 0) under `uniform` and `all`
    same_heads: bool = False  # needs equal attention-head counts
    projects: bool = False  # compares student hidden states with the teacher's: a projection per layer
    revision: int = 0  # bumped when the term's default math changes: outputs made before are stale
    settings: frozenset = frozenset()  # the stages.distill settings it alone reads (a phase without it ignores them)

    @property
    def fn(self) -> Callable[..., dict]:
        """The term's function: TermInputs -> its named parts, whose sum is its value."""
        return getattr(importlib.import_module("pipeline.distill.term_math"), self.name)

    @property
    def token_aligned(self) -> bool:
        """Reads teacher layers position by position, so teacher and student must tokenize
        alike (PKD's [CLS] too: the teacher runs on the student's tokens)."""
        return bool(self.kinds)


TERMS: dict[str, Term] = {t.name: t for t in [
    Term("qkv_relation", frozenset({"q", "k", "v"})),
    Term("value_relation", frozenset({"v"})),
    Term("attention_kl", frozenset({"q", "k"}), same_heads=True),
    Term("attention_mse", frozenset({"q", "k"}), same_heads=True),
    Term("hidden_mse", frozenset({"hidden"}), embeddings=True, projects=True),
    Term("pkd", frozenset({"hidden"}), projects=True, revision=1,  # 1: mean over the features
         settings=frozenset({"pkd_features"})),
    Term("emd_attention", frozenset({"q", "k"}), same_heads=True),
    Term("emd_hidden", frozenset({"hidden"}), embeddings=True, projects=True),
    Term("logit_kd", frozenset(), needs_teacher_logits=True, settings=frozenset({"temperature"})),
    Term("ce", frozenset(), needs_labels=True),
]}


def unread_settings(terms) -> dict[str, str]:
    """The term settings of ``stages.distill`` that no term of ``terms`` reads, each with the
    term that would: dropped from a phase's fingerprint, and named when the user set them."""
    read = {s for t in terms for s in TERMS[t].settings}
    return {s: term.name for term in TERMS.values() for s in sorted(term.settings) if s not in read}
