"""A sweep in a study's report: one setting (the consistency weight, the mixup alpha, ...)
varied across methods. Per task and setting, a table and a plot of the held-out score and the
train-dev gap against the swept value, each point compared with the sweep's reference method
on the same seeds, and the consistency term's share of the ILD loss, which says how much the
term could have changed at all."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pipeline.study.findings import Check


def term_share(rec: dict, term: str = "consistency", phase: str = "ild") -> float | None:
    """Mean over the logged steps of the term's weighted value over the phase's loss."""
    losses = rec.get("losses") or {}
    part = dict(losses.get(f"{phase}/train/{term}_weighted", []))
    total = dict(losses.get(f"{phase}/train/loss", []))
    shares = [part[s] / total[s] for s in part if s in total and total[s] > 0]
    return float(np.mean(shares)) if shares else None


def _paired(groups: dict, method: str, reference: str, value) -> Check | None:
    """method minus reference, paired by seed (the verdict is not used: both directions count)."""
    ref = {r["cell"].seed: value(r) for r in groups.get(reference, [])}
    pairs = [(value(r), ref.get(r["cell"].seed)) for r in groups.get(method, [])]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    if not pairs or method == reference:
        return None
    return Check("", method, reference, "", float(np.mean([a for a, _ in pairs])),
                 float(np.mean([b for _, b in pairs])), [a - b for a, b in pairs])


def _values(sweep, groups: dict, split: str, metric: str) -> list[dict]:
    def test(r):
        return r["scores"].get(split, {}).get(metric)

    def gap(r):
        return r["gap_end"]

    out = []
    for point in sweep.points:
        recs = groups.get(point.method, [])
        shares = [s for s in (term_share(r) for r in recs) if s is not None]
        out.append({"x": point.x, "method": point.method, "seeds": len(recs),
                    "test": [test(r) for r in recs if test(r) is not None],
                    "gap": [gap(r) for r in recs if gap(r) is not None],
                    "consistency_share": float(np.mean(shares)) if shares else None,
                    "vs_reference": {"test": _paired(groups, point.method, sweep.reference, test),
                                     "gap": _paired(groups, point.method, sweep.reference, gap)}})
    return out


def _se(values: list) -> float:
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")


def _diff_cell(check: Check | None) -> str:
    """The paired difference x100 ± s.e., bold beyond two standard errors either way."""
    if check is None:
        return "–"
    text = f"{check.diff * 100:+.2f} ± {check.se * 100:.2f}" if not math.isinf(check.se) else f"{check.diff * 100:+.2f}"
    return f"**{text}**" if abs(check.diff) > 2 * check.se else text


def sweep_section(out: Path, sweep, task: str, setting: str, groups: dict, split: str, metric: str) -> list[str]:
    """The sweep's table and plot for one task and setting (Markdown lines)."""
    rows = _values(sweep, groups, split, metric)
    if not any(r["seeds"] for r in rows):
        return []
    lines = [f"### Sweep: {sweep.x}", "",
             f"Mean ± standard error over seeds (x100). The last two columns are paired by seed against "
             f"`{sweep.reference}`; **bold**: more than two standard errors from zero. *Share* is the consistency "
             f"term's weighted value over the ILD loss, averaged over the logged steps.", "",
             f"| {sweep.x} | method | seeds | {split} {metric} | train-dev gap | share | {split} vs reference "
             f"| gap vs reference |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        share = "–" if r["consistency_share"] is None else f"{r['consistency_share'] * 100:.1f}%"
        lines.append(f"| {r['x']:g} | {r['method']} | {r['seeds']} | {_mean_se(r['test'])} | {_mean_se(r['gap'])} | "
                     f"{share} | {_diff_cell(r['vs_reference']['test'])} | {_diff_cell(r['vs_reference']['gap'])} |")
    lines.append("")
    png = out / f"sweep_{sweep.name}_{task}_{setting}.png".replace("/", "-")
    _plot(png, sweep, rows, f"{task}, {setting}", f"{split} {metric}")
    if png.is_file():
        lines += [f"![{sweep.x}]({png.name})", ""]
    return lines


def _mean_se(values: list) -> str:
    if not values:
        return "–"
    se = _se(values)
    return f"{np.mean(values) * 100:.2f}" + ("" if math.isnan(se) else f" ± {se * 100:.2f}")


def sweep_json(sweep, groups: dict, split: str, metric: str) -> list[dict]:
    def check(c):
        return None if c is None else {"diff": c.diff, "se": None if math.isinf(c.se) else c.se, "n": len(c.diffs)}
    return [{**{k: v for k, v in r.items() if k != "vs_reference"},
             "vs_reference": {k: check(c) for k, c in r["vs_reference"].items()}}
            for r in _values(sweep, groups, split, metric)]


def _plot(path: Path, sweep, rows: list[dict], where: str, score: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["test"]]
    if not rows:
        return
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), dpi=80)
    for ax, key, label in ((axes[0], "test", score), (axes[1], "gap", "train - dev gap")):
        pts = [(r["x"], np.mean(r[key]) * 100, _se(r[key]) * 100) for r in rows if r[key]]
        xs, ys, es = zip(*sorted(pts))
        ax.errorbar(xs, ys, yerr=[0 if math.isnan(e) else e for e in es], marker="o", capsize=3)
        if sweep.log_x:
            ax.set_xscale("symlog", linthresh=min([x for x in xs if x > 0] or [1.0]))
        ax.set_xlabel(sweep.x)
        ax.set_ylabel(f"{label} (x100)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{sweep.x}: {where} (mean ± s.e. over seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
