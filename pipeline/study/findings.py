"""The paper's findings a study checks, each on differences paired by seed (a seed's
methods share its teacher and training data): per task and setting, and pooled over all.
*held* means the mean paired difference favours the paper by more than two standard errors."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# The paper's findings this study can check: (statement, better method, worse method, quantity).
# Quantities: "test" (held-out score, higher is better), "gap" (train-dev gap; the claim is
# that `better` has the larger one), "less_gap" (the claim is that `better` has the smaller
# one), "flat" (a smaller drop under weight noise is better). A finding whose methods the
# study does not run is skipped.
FINDINGS = [
    ("ILD on the small target set overfits more than logit KD (larger train-dev gap)", "tinybert", "kd", "gap"),
    ("Last-layer ILD generalises better than uniform layer-to-layer ILD", "l-ild", "tinybert", "test"),
    ("Last-layer ILD generalises better than many-to-many (EMD) ILD", "l-ild", "emd-ild", "test"),
    ("Last-layer ILD sits in a flatter minimum than uniform ILD", "l-ild", "tinybert", "flat"),
    ("CR-ILD beats last-layer ILD", "cr-ild", "l-ild", "test"),
    ("The consistency term helps (CR-ILD vs CR-ILD without it)", "cr-ild", "cr-ild-no-consistency", "test"),
    ("CR-ILD beats prediction-layer KD alone", "cr-ild", "kd", "test"),
    ("CR-ILD beats PKD", "cr-ild", "pkd", "test"),
    ("CR-ILD beats MiniLMv2-style ILD", "cr-ild", "minilmv2", "test"),
    ("ILD on supplementary inputs first overfits less (L-ILD: smaller train-dev gap)", "l-ild-supp", "l-ild",
     "less_gap"),
    ("ILD on supplementary inputs first overfits less (CR-ILD: smaller train-dev gap)", "cr-ild-supp", "cr-ild",
     "less_gap"),
    ("ILD on supplementary inputs first generalises better (L-ILD)", "l-ild-supp", "l-ild", "test"),
    ("ILD on supplementary inputs first generalises better (CR-ILD)", "cr-ild-supp", "cr-ild", "test"),
]
LOWER_IS_BETTER = ("flat", "less_gap")


def flat_drop(rec: dict) -> float | None:
    """Clean score minus the mean score at the largest perturbation (smaller: flatter)."""
    f = rec.get("flatness")
    if not f:
        return None
    scales = sorted(f, key=float)
    return float(np.mean(f[scales[0]]) - np.mean(f[scales[-1]]))


def quantity(rec: dict, what: str, split: str, metric: str):
    if what == "test":
        return rec["scores"].get(split, {}).get(metric)
    if what in ("gap", "less_gap"):
        return rec["gap_end"]
    return flat_drop(rec)


@dataclass
class Check:
    """One finding checked on a set of runs: the better and worse method's mean, and their
    paired differences (same task, setting and seed: same teacher and same training data)."""
    statement: str
    better: str
    worse: str
    what: str
    mean_better: float
    mean_worse: float
    diffs: list

    @property
    def diff(self) -> float:
        return float(np.mean(self.diffs))

    @property
    def se(self) -> float:
        n = len(self.diffs)
        return float(np.std(self.diffs, ddof=1) / math.sqrt(n)) if n > 1 else float("inf")

    @property
    def verdict(self) -> str:
        if self.diff > 0 and self.diff > 2 * self.se:
            return "held"
        return "same direction, within seed noise" if self.diff > 0 else "did not hold"


VERDICT_RULE = ("*held*: the mean paired difference (same seed: same teacher and data) favours the paper "
                "and is more than two standard errors from zero; *same direction*: it favours the paper by "
                "less; *did not hold*: it does not favour the paper.")


def check_finding(groups_by_key: dict, statement: str, better: str, worse: str, what: str, split: str,
                  metric_of: dict) -> Check | None:
    """``groups_by_key``: (task, setting) -> method -> records. None when no seed has both."""
    a, b, diffs = [], [], []
    for (task, _), groups in groups_by_key.items():
        worse_by_seed = {r["cell"].seed: r for r in groups.get(worse, [])}
        for rec in groups.get(better, []):
            other = worse_by_seed.get(rec["cell"].seed)
            qa = quantity(rec, what, split, metric_of[task])
            qb = quantity(other, what, split, metric_of[task]) if other else None
            if qa is None or qb is None:
                continue
            a.append(qa)
            b.append(qb)
            diffs.append(qb - qa if what in LOWER_IS_BETTER else qa - qb)
    if not diffs:
        return None
    return Check(statement, better, worse, what, float(np.mean(a)), float(np.mean(b)), diffs)


def study_findings(spec) -> list[tuple]:
    """The comparisons a study checks: its own ``findings``, else the paper's."""
    if spec.findings is None:
        return FINDINGS
    return [(f.statement, f.better, f.worse, f.quantity) for f in spec.findings]


def pooled_checks(records: dict, held_split: str, metric_of: dict, findings: list = FINDINGS) -> list[Check]:
    return [c for c in (check_finding(records, *f, held_split, metric_of) for f in findings) if c]


def check_json(check: Check) -> dict:
    return {"statement": check.statement, "better": check.better, "worse": check.worse, "quantity": check.what,
            "verdict": check.verdict, "diff": check.diff, "se": None if math.isinf(check.se) else check.se,
            "n": len(check.diffs)}
