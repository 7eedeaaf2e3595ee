"""The study's report: per task and setting, a table of mean and std over seeds (best-dev
labelled optimistic, last checkpoint, held-out split), the train-dev gap over training, the
loss components read back from TensorBoard, the flatness probe, and automatic checks of the
paper's findings. Markdown plus small PNGs, written from the study's records
(``pipeline/study_records.py``); a partial study says what is missing."""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.study import StudySpec

# The paper's findings this study can check: (statement, better method, worse method, quantity)
FINDINGS = [
    ("ILD on the small target set overfits more than logit KD (larger train-dev gap)", "tinybert", "kd", "gap"),
    ("Last-layer ILD generalises better than uniform layer-to-layer ILD", "l-ild", "tinybert", "test"),
    ("Last-layer ILD sits in a flatter minimum than uniform ILD", "l-ild", "tinybert", "flat"),
    ("CR-ILD beats last-layer ILD", "cr-ild", "l-ild", "test"),
    ("The consistency term helps (CR-ILD vs CR-ILD without it)", "cr-ild", "cr-ild-no-consistency", "test"),
    ("CR-ILD beats prediction-layer KD alone", "cr-ild", "kd", "test"),
    ("CR-ILD beats PKD", "cr-ild", "pkd", "test"),
    ("CR-ILD beats MiniLMv2-style ILD", "cr-ild", "minilmv2", "test"),
]


def _mean_std(values) -> tuple[float, float, int]:
    v = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return float("nan"), float("nan"), 0
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v)


def _fmt(values, scale: float = 100.0) -> str:
    m, s, n = _mean_std(values)
    return "–" if n == 0 else f"{m * scale:.2f} ± {s * scale:.2f}"


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
    if what == "gap":
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
            diffs.append(qb - qa if what == "flat" else qa - qb)  # flat: a smaller drop is better
    if not diffs:
        return None
    return Check(statement, better, worse, what, float(np.mean(a)), float(np.mean(b)), diffs)


def _check_line(check: Check, split: str, metric: str) -> str:
    unit = {"test": f"{split} {metric}", "gap": "train-dev gap",
            "flat": "score drop at the largest perturbation"}[check.what]
    se = "n/a" if math.isinf(check.se) else f"{check.se * 100:.2f}"
    return (f"- **{check.verdict}**: {check.statement}. {check.better} {check.mean_better * 100:.2f} vs "
            f"{check.worse} {check.mean_worse * 100:.2f} ({unit}, x100; paired difference {check.diff * 100:+.2f}, "
            f"standard error {se}, {len(check.diffs)} seeds)")


def method_colors(methods: list) -> dict:
    """One colour per method, the same in every plot of the report."""
    return {m: f"C{i % 10}" for i, m in enumerate(methods)}


def _plot_lines(path: Path, title: str, xlabel: str, ylabel: str, series: dict, colors: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=80)
    for label, (xs, ys, err) in series.items():
        line, = ax.plot(xs, ys, label=label, marker="o" if len(xs) < 12 else None, markersize=3,
                        color=colors.get(label))
        if err is not None:
            ax.fill_between(xs, np.asarray(ys) - err, np.asarray(ys) + err, alpha=0.15, color=line.get_color())
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _gap_plot(path: Path, title: str, groups: dict, colors: dict) -> None:
    grid = np.linspace(0, 1, 21)
    series = {}
    for method, recs in groups.items():
        curves = [np.interp(grid, [x for x, _ in r["gap_curve"]], [y for _, y in r["gap_curve"]])
                  for r in recs if len(r["gap_curve"]) > 1]
        if curves:
            series[method] = (grid, np.mean(curves, axis=0) * 100, np.std(curves, axis=0) * 100)
    if series:
        _plot_lines(path, title, "fraction of prediction-layer training", "train - dev accuracy (points)", series, colors)


def _flatness_plot(path: Path, title: str, groups: dict, colors: dict) -> None:
    series = {}
    for method, recs in groups.items():
        curves = [r["flatness"] for r in recs if r.get("flatness")]
        if curves:
            scales = sorted(curves[0], key=float)
            ys = [np.mean([np.mean(c[s]) for c in curves]) * 100 for s in scales]
            series[method] = ([float(s) for s in scales], ys, None)
    if series:
        _plot_lines(path, title, "relative weight noise sigma", "dev accuracy (%)", series, colors)


def _loss_plot(path: Path, title: str, groups: dict, colors: dict) -> None:
    """Each loss component per method, first seed (several seeds' curves overlap); the
    ``_weighted`` copies (the same curve times its weight) are left to TensorBoard."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.study_records import is_loss_tag

    tags = sorted({t for recs in groups.values() for r in recs[:1] for t in r["losses"]
                   if is_loss_tag(t) and not t.endswith("_weighted")})
    if not tags:
        return
    cols = 3
    rows = math.ceil(len(tags) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(9, 2.4 * rows), dpi=70, squeeze=False)
    for ax, tag in zip(axes.flat, tags):
        for method, recs in groups.items():
            pts = recs[0]["losses"].get(tag)  # the first seed: curves of several seeds overlap
            if pts:
                ax.plot([s for s, _ in pts], [v for _, v in pts], label=method, linewidth=1, color=colors.get(method))
        ax.set_title(tag, fontsize=8)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tags):]:
        ax.axis("off")
    handles = {}
    for ax in axes.flat:  # every method that has a curve anywhere, in one legend
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    order = [m for m in colors if m in handles]
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.4 / (2.4 * rows), 1, 1))  # room for the legend below
    fig.legend([handles[m] for m in order], order, loc="lower center", ncol=min(len(order), 8), fontsize=7,
               frameon=False)
    fig.savefig(path)
    plt.close(fig)


def write_report(spec: StudySpec, records: dict, teachers: dict, missing: list[str], failed: list[str],
                 header: list[str], metric_of: dict) -> Path:
    """``records``: (task, setting) -> method -> [record per seed]; ``teachers``: (task, setting)
    -> [teacher scores per seed]."""
    out = Path(spec.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = len(spec.tasks) * len(spec.settings) * len(spec.seeds) * len(spec.methods)
    done = sum(len(v) for g in records.values() for v in g.values())
    lines = ["# Distillation methods compared in the paper's overfitting settings", "", *header, "",
             f"**{done} of {total} runs complete.**" + ("" if done == total else " This report is partial."), ""]
    if missing:
        lines += ["Missing (not run yet, or interrupted; rerun the same command to continue):", ""]
        lines += _missing_lines(missing, len(spec.seeds) * len(spec.methods)) + [""]
    if failed:
        lines += ["Failed (see each log):", ""] + [f"- {m}" for m in failed] + [""]
    held_split = next((s for s in spec.eval_splits if s != "dev"), "dev")
    per_group: dict[str, list[Check]] = {}
    colors = method_colors(spec.methods)
    for (task, setting), groups in records.items():
        metric = metric_of[task]
        slug = f"{task}_{setting}".replace("/", "-")
        lines += [f"## {task}, {setting}", "",
                  f"Mean ± std over seeds of {metric} (x100). *Best dev* is the best of the periodic dev "
                  f"evaluations, the reference code's optimistic pick; *last* is the final student; "
                  f"*{held_split}* is held out and scored once, on the last checkpoint. The gap is train minus "
                  f"dev {metric} at the end of prediction-layer training; *flat drop* is dev {metric} lost at "
                  f"the largest weight perturbation (smaller is flatter).", "",
                  f"| method | seeds | best dev (optimistic) | dev, last | {held_split}, last | train-dev gap, end "
                  f"| flat drop |", "|---|---|---|---|---|---|---|"]
        tch = teachers.get((task, setting), [])
        if tch:
            lines.append(f"| teacher | {len(tch)} | – | {_fmt([t.get('dev', {}).get(metric) for t in tch])} | "
                         f"{_fmt([t.get(held_split, {}).get(metric) for t in tch])} | – | – |")
        for method in spec.methods:
            recs = groups.get(method, [])
            if not recs:
                lines.append(f"| {method} | 0 | – | – | – | – | – |")
                continue
            lines.append(
                f"| {method} | {len(recs)} | {_fmt([r['best_dev'] for r in recs])} | "
                f"{_fmt([r['scores'].get('dev', {}).get(metric) for r in recs])} | "
                f"{_fmt([r['scores'].get(held_split, {}).get(metric) for r in recs])} | "
                f"{_fmt([r['gap_end'] for r in recs])} | {_fmt([flat_drop(r) for r in recs])} |")
        lines.append("")
        for kind, fn, caption in (("gap", _gap_plot, "Train-dev gap over prediction-layer training"),
                                  ("flatness", _flatness_plot, "Flatness probe"),
                                  ("losses", _loss_plot, "Loss components (first seed)")):
            png = out / f"{kind}_{slug}.png"
            fn(png, f"{caption}: {task}, {setting}", groups, colors)
            if png.is_file():
                lines += [f"![{caption}]({png.name})", ""]
        checks = [c for c in (check_finding({(task, setting): groups}, *f, held_split, metric_of)
                              for f in FINDINGS) if c]
        if checks:
            lines += ["Checks of the paper's findings:", "", *[_check_line(c, held_split, metric) for c in checks], "",
                      *([VERDICT_RULE, ""] if len(records) < 2 else [])]  # else it heads the overview
        per_group[f"{task}/{setting}"] = checks
    pooled = _pooled(records, held_split, metric_of)
    overview = _overview(per_group, pooled)
    at = lines.index("") + 1 + len(header) + 1  # after the title and header, before the counts
    lines[at:at] = overview
    summary = _summary(records, teachers, metric_of, held_split)
    summary["findings"] = {group: [_check_json(c) for c in checks] for group, checks in per_group.items()}
    if pooled:
        summary["findings"]["pooled"] = [_check_json(c) for c in pooled]
    _write_atomic(out / "summary.json", json.dumps(summary, indent=1))
    markdown_text = "\n".join(lines) + "\n"
    _write_atomic(out / "README.md", markdown_text)
    _write_atomic(out / "index.html", render_html(markdown_text, title=lines[0].lstrip("# ")))
    return out / "README.md"


_HTML_STYLE = """body { font-family: system-ui, sans-serif; max-width: 70em; margin: 2em auto; padding: 0 1em;
       line-height: 1.45; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f3f3f3; }
td:not(:first-child) { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; }
code { background: #f3f3f3; padding: 0 0.2em; }"""


def render_html(markdown_text: str, title: str) -> str:
    """The report as one HTML page (tables styled, plots inline by relative path), for a browser."""
    import html
    import markdown  # the report extra (tensorboard brings it too)

    body = markdown.markdown(markdown_text, extensions=["tables"])
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>\n{_HTML_STYLE}\n</style>\n</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _missing_lines(missing: list[str], per_group: int) -> list[str]:
    """One line per task/setting that has not started, the cells themselves otherwise."""
    groups: dict[str, list[str]] = defaultdict(list)
    for label in missing:
        task, setting, rest = label.split("/", 2)
        groups[f"{task}/{setting}"].append(rest)
    out = []
    for group, rests in groups.items():
        if len(rests) == per_group:
            out.append(f"- {group}: all {per_group} runs")
        else:
            out += [f"- {group}/{r}" for r in rests]
    return out


def _summary(records: dict, teachers: dict, metric_of: dict, held_split: str) -> dict:
    out = defaultdict(dict)
    for (task, setting), groups in records.items():
        metric = metric_of[task]
        for method, recs in groups.items():
            out[f"{task}/{setting}"][method] = {
                "seeds": [r["cell"].seed for r in recs],
                "best_dev": [r["best_dev"] for r in recs],
                "dev_last": [r["scores"].get("dev", {}).get(metric) for r in recs],
                f"{held_split}_last": [r["scores"].get(held_split, {}).get(metric) for r in recs],
                "gap_end": [r["gap_end"] for r in recs], "flat_drop": [flat_drop(r) for r in recs]}
    return dict(out)


def _pooled(records: dict, held_split: str, metric_of: dict) -> list[Check]:
    return [c for c in (check_finding(records, *f, held_split, metric_of) for f in FINDINGS) if c]


def _check_json(check: Check) -> dict:
    return {"statement": check.statement, "better": check.better, "worse": check.worse, "quantity": check.what,
            "verdict": check.verdict, "diff": check.diff, "se": None if math.isinf(check.se) else check.se,
            "n": len(check.diffs)}


def _overview(per_group: dict, pooled: list[Check]) -> list[str]:
    """The findings over every task and setting at once (paired by seed), and per group."""
    if len(per_group) < 2 or not pooled:
        return []
    short = {"held": "held", "same direction, within seed noise": "same dir.", "did not hold": "no"}
    groups = list(per_group)
    lines = ["## The paper's findings, all tasks and settings together", "", VERDICT_RULE, "",
             "| finding | " + " | ".join(groups) + " | all (paired diff. ± s.e., x100) |",
             "|---|" + "---|" * (len(groups) + 1)]
    for check in pooled:
        cells = []
        for group in groups:
            mine = next((c for c in per_group[group] if c.statement == check.statement), None)
            cells.append(f"{short[mine.verdict]} ({mine.diff * 100:+.1f})" if mine else "–")
        lines.append(f"| {check.statement} | " + " | ".join(cells) +
                     f" | **{check.verdict}** ({check.diff * 100:+.2f} ± {check.se * 100:.2f}, "
                     f"{len(check.diffs)} seeds) |")
    return lines + [""]
