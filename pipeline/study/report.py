"""The study's report, written from its records: per task and setting a table of mean and
std over seeds (best dev labelled optimistic, last checkpoint, held-out split), the plots,
and the checks of the paper's findings, per group and pooled; Markdown, the same page as
HTML, and summary.json. A partial study says what is missing."""
from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from pipeline.evaluation.results import one_class_predicted
from pipeline.outputs.atomic import replace_text
from pipeline.study.cells import cells
from pipeline.study.findings import (
    VERDICT_RULE,
    Check,
    check_finding,
    check_json,
    flat_drop,
    pooled_checks,
    study_findings,
)
from pipeline.study.plots import flatness_plot, gap_plot, loss_plot, method_colors
from pipeline.study.spec import TEACHER, StudySpec
from pipeline.study.sweeps import sweep_json, sweep_section


def _mean_std(values) -> tuple[float, float, int]:
    v = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return float("nan"), float("nan"), 0
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v)


def _fmt(values, scale: float = 100.0) -> str:
    m, s, n = _mean_std(values)
    return "–" if n == 0 else f"{m * scale:.2f} ± {s * scale:.2f}"


def _check_line(check: Check, split: str, metric: str) -> str:
    unit = {"test": f"{split} {metric}", "gap": "train-dev gap", "less_gap": "train-dev gap",
            "flat": "score drop at the largest perturbation"}[check.what]
    se = "n/a" if math.isinf(check.se) else f"{check.se * 100:.2f}"
    return (f"- **{check.verdict}**: {check.statement}. {check.better} {check.mean_better * 100:.2f} vs "
            f"{check.worse} {check.mean_worse * 100:.2f} ({unit}, x100; paired difference {check.diff * 100:+.2f}, "
            f"standard error {se}, {len(check.diffs)} seeds)")


DATE = re.compile(r" on \d{4}-\d{2}-\d{2}; ")  # in the header's "Written by ... on <date>; <machine>" line


def dated_as_before(path: Path, text: str) -> str:
    """``text`` with the date of the report already at ``path`` where nothing else differs:
    a study rerun or collected again with nothing new leaves its committed report as it was,
    not a diff of one date."""
    try:
        before = path.read_text()
    except (OSError, UnicodeDecodeError):
        return text
    old = DATE.search(before)
    if old and DATE.sub(old.group(0), text, count=1) == before:
        return before
    return text


def write_report(spec: StudySpec, records: dict, teachers: dict, missing: list[str], failed: list[str],
                 header: list[str], metric_of: dict) -> Path:
    """``records``: (task, setting) -> method -> [record per seed]; ``teachers``: (task, setting)
    -> [teacher record per seed]."""
    out = Path(spec.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = len(cells(spec))
    done = sum(len(v) for g in records.values() for v in g.values())
    findings = study_findings(spec)
    lines = [f"# {spec.title}", "", *header, "",
             f"**{done} of {total} runs complete.**" + ("" if done == total else " This report is partial."), ""]
    if missing:
        per_group_total = defaultdict(int)
        for cell in cells(spec):
            per_group_total[f"{cell.task}/{cell.setting}"] += 1
        lines += ["Missing (not run yet, or interrupted; rerun the same command to continue):", "",
                  *_missing_lines(missing, per_group_total), ""]
    if failed:
        lines += ["Failed (see each log):", ""] + [f"- {m}" for m in failed] + [""]
    lines += _variant_lines(spec)
    held_split = next((s for s in spec.eval_splits if s != "dev"), "dev")
    per_group: dict[str, list[Check]] = {}
    for (task, setting), groups in records.items():
        checks = [c for c in (check_finding({(task, setting): groups}, *f, held_split, metric_of)
                              for f in findings) if c]
        lines += _group_section(spec, out, task, setting, groups, teachers.get((task, setting), []), held_split,
                                metric_of[task])
        if checks:
            lines += ["Checks of the findings:" if spec.findings else "Checks of the paper's findings:", "",
                      *[_check_line(c, held_split, metric_of[task]) for c in checks], "",
                      *([VERDICT_RULE, ""] if len(records) < 2 else [])]  # else it heads the overview
        per_group[f"{task}/{setting}"] = checks
    pooled = pooled_checks(records, held_split, metric_of, findings)
    at = lines.index("") + 1 + len(header) + 1  # after the title and header, before the counts
    lines[at:at] = _overview(per_group, pooled)
    summary = _summary(records, teachers, metric_of, held_split)
    summary["findings"] = {group: [check_json(c) for c in checks] for group, checks in per_group.items()}
    if pooled:
        summary["findings"]["pooled"] = [check_json(c) for c in pooled]
    if spec.sweeps:
        summary["sweeps"] = {f"{task}/{setting}": {sw.name: sweep_json(sw, groups, held_split, metric_of[task])
                                                   for sw in spec.sweeps}
                             for (task, setting), groups in records.items()}
    replace_text(out / "summary.json", json.dumps(summary, indent=1))
    markdown_text = dated_as_before(out / "README.md", "\n".join(lines) + "\n")
    replace_text(out / "README.md", markdown_text)
    replace_text(out / "index.html", render_html(markdown_text, title=lines[0].lstrip("# ")))
    return out / "README.md"


def _group_section(spec: StudySpec, out: Path, task: str, setting: str, groups: dict, teachers: list,
                   held_split: str, metric: str) -> list[str]:
    """One task and setting: the table over methods, the plots and the sweeps."""
    slug = f"{task}_{setting}".replace("/", "-")
    lines = [f"## {task}, {setting}", "",
             f"Mean ± std over seeds of {metric} (x100). *Best dev* is the best of the periodic dev "
             f"evaluations, the reference code's optimistic pick; *last* is the final student; "
             f"*{held_split}* is held out and scored once, on the last checkpoint. The gap is train minus "
             f"dev {metric} at the end of prediction-layer training; *flat drop* is dev {metric} lost at "
             f"the largest weight perturbation (smaller is flatter).", "",
             f"| method | seeds | best dev (optimistic) | dev, last | {held_split}, last | train-dev gap, end "
             f"| flat drop |", "|---|---|---|---|---|---|---|"]
    if teachers:
        lines.append(f"| teacher | {len(teachers)} | – | {_fmt([t['scores'].get('dev', {}).get(metric) for t in teachers])} | "
                     f"{_fmt([t['scores'].get(held_split, {}).get(metric) for t in teachers])} | – | – |")
    for method in (m for m in spec.methods if spec.runs_in(m, setting)):
        recs = groups.get(method, [])
        if not recs:
            lines.append(f"| {method} | 0 | – | – | – | – | – |")
            continue
        lines.append(
            f"| {method} | {len(recs)} | {_fmt([r['best_dev'] for r in recs])} | "
            f"{_fmt([r['scores'].get('dev', {}).get(metric) for r in recs])} | "
            f"{_fmt([r['scores'].get(held_split, {}).get(metric) for r in recs])} | "
            f"{_fmt([r['gap_end'] for r in recs])} | {_fmt([flat_drop(r) for r in recs])} |")
    row, notes = _one_class_lines({TEACHER: teachers, **groups}, held_split, metric)
    lines += [*row, "", *notes]
    colors = method_colors(spec.methods)
    for kind, fn, caption in (("gap", gap_plot, "Train-dev gap over prediction-layer training"),
                              ("flatness", flatness_plot, "Flatness probe"),
                              ("losses", loss_plot, "Loss components (first seed)")):
        png = out / f"{kind}_{slug}.png"
        fn(png, f"{caption}: {task}, {setting}", groups, colors)
        if png.is_file():
            lines += [f"![{caption}]({png.name})", ""]
    for sweep in spec.sweeps:
        lines += sweep_section(out, sweep, task, setting, groups, held_split, metric)
    return lines


def _one_class(groups: dict, split: str) -> tuple[dict, list[tuple[str, str, list[int]]]]:
    """The best one-class prediction's scores per split (the same for every record of a group:
    the splits do not depend on the seed), and (method, label, seeds) for each method (the
    teachers as "teacher") whose models predict one class for every ``split`` example on those
    seeds. Empty for records scored before they said what each model predicts."""
    reference = next((r["one_class"] for recs in groups.values() for r in recs if r.get("one_class")), {})
    constant = []
    for method, recs in groups.items():
        by_label: dict[str, list[int]] = defaultdict(list)
        for r in recs:
            label = one_class_predicted(r.get("predicted", {}).get(split, {}))
            if label is not None:
                by_label[label].append(r["cell"].seed)
        constant += [(method, label, sorted(seeds)) for label, seeds in by_label.items()]
    return reference, constant


def _one_class_lines(groups: dict, held_split: str, metric: str) -> tuple[list[str], list[str]]:
    """The table's reference row (the best constant prediction) and the lines that name each
    model predicting one class for every held-out example; nothing for records scored
    before they said what each model predicts."""
    reference, constant = _one_class(groups, held_split)
    if not reference:
        return [], []
    labels = {reference[split]["label"] for split in reference}
    name = (f"'{labels.pop()}'" if len(labels) == 1 else
            ", ".join(f"'{reference[split]['label']}' {split}" for split in reference))
    dev, held = (reference.get(split, {}).get(metric) for split in ("dev", held_split))
    row = [f"| one class ({name}) | – | – | {'–' if dev is None else f'{dev * 100:.2f}'} | "
           f"{'–' if held is None else f'{held * 100:.2f}'} | – | – |"]
    notes = [f"*One class* is the best constant prediction, for reference. Models that predict one class "
             f"for every {held_split} example, and so have learnt no more than a label:"
             + ("" if constant else " none."), ""]
    notes += [f"- {method}: '{label}', seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
              for method, label, seeds in constant]
    return row, notes + ([""] if constant else [])


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


def _flow(overrides: dict) -> str:
    return ", ".join(f"`{key}: {value if isinstance(value, str) else json.dumps(value)}`"
                     for key, value in overrides.items())


def _variant_lines(spec: StudySpec) -> list[str]:
    """What each variant is: its description, preset, settings and overrides (per task too),
    so that the report says what was run without the study file beside it."""
    if not spec.variants:
        return []
    out = ["Methods that vary a preset:", ""]
    for name, v in spec.variants.items():
        where = f", in {', '.join(v.settings)} only" if v.settings is not None else ""
        out.append(f"- **{name}**: {v.description + ' ' if v.description else ''}(preset `{v.preset}`{where})"
                   + (f"; {_flow(v.overrides)}" if v.overrides else ""))
        out += [f"  - {task}: {_flow(over)}" for task, over in v.tasks.items() if over]
    return out + [""]


def _missing_lines(missing: list[str], per_group: dict) -> list[str]:
    """One line per task/setting that has not started, the cells themselves otherwise."""
    groups: dict[str, list[str]] = defaultdict(list)
    for label in missing:
        task, setting, rest = label.split("/", 2)
        groups[f"{task}/{setting}"].append(rest)
    out = []
    for group, rests in groups.items():
        if len(rests) == per_group.get(group):
            out.append(f"- {group}: all {per_group[group]} runs")
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
        reference, constant = _one_class({TEACHER: teachers.get((task, setting), []), **groups}, held_split)
        if reference:
            out[f"{task}/{setting}"]["one_class"] = {
                "reference": reference,
                "predicts_one_class": [{"method": method, "label": label, "seeds": seeds}
                                       for method, label, seeds in constant]}
    return dict(out)


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
