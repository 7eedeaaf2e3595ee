"""Does the export compute what the PyTorch model computes? On a held-out split: the largest
logit difference and the share of examples given the same prediction."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from pipeline.errors import UserError
from pipeline.evaluation.metrics import predictions_from_logits


@dataclass(frozen=True)
class Parity:
    split: str
    examples: int
    max_logit_diff: float
    agreement: Optional[float]  # share of examples with the same prediction; None for a regression's scores

    def as_dict(self) -> dict:
        return asdict(self)

    def said(self) -> str:
        """The figures for a log line: the largest difference, and where there are classes,
        how many predictions agree (a regression's one score has no class to agree on)."""
        same = "" if self.agreement is None else f", same prediction on {self.agreement:.2%}"
        return f"largest logit difference {self.max_logit_diff:.2g}{same}"


def parity(split: str, reference: np.ndarray, exported: np.ndarray, regression: bool) -> Parity:
    """The export's logits against PyTorch's; a regression is judged by the difference alone
    (before, its agreement was an argmax over one column, 100% whatever the scores)."""
    agreement = None if regression else float(
        (predictions_from_logits(reference, False) == predictions_from_logits(exported, False)).mean())
    return Parity(split, len(reference), float(np.abs(reference - exported).max()), agreement)


def check(name: str, result: Parity, max_logit_diff: float, min_agreement: float) -> None:
    """One line when the export falls outside the tolerances (stages.export.tolerance)."""
    disagrees = result.agreement is not None and result.agreement < min_agreement
    if result.max_logit_diff > max_logit_diff or disagrees:
        same = "" if result.agreement is None else \
            f", same prediction on {result.agreement:.2%} (required {min_agreement:.2%})"
        raise UserError(f"stages.export.tolerance: the ONNX export of {name} differs from PyTorch on "
                        f"{result.split} ({result.examples} examples): largest logit difference "
                        f"{result.max_logit_diff:.3g} (allowed {max_logit_diff:.3g}){same}; nothing was written")


def int8_shortfall(name: str, fp32_score, int8_score, metric: str, split: str, max_drop) -> str | None:
    """Why the INT8 copy of ``name`` is not kept (its ``metric`` on ``split`` more than
    ``max_drop`` below the fp32 model's), or None. Dynamic quantization suits most encoders
    and ruins a few; the copy is judged by the score a user would deploy it for, and a split
    without labels (no scores) cannot judge it."""
    if max_drop is None or not all(isinstance(s, (int, float)) for s in (fp32_score, int8_score)):
        return None
    drop = fp32_score - int8_score
    if drop <= max_drop + 1e-12:
        return None
    return (f"note: export: {name}-int8 was not kept: its {metric} on {split} is {int8_score:.4f}, {drop:.4f} below "
            f"the fp32 model's {fp32_score:.4f} (stages.export.int8_max_drop is {max_drop:g}); serve {name}, or set "
            f"int8_max_drop higher (null: always keep) to keep it")
