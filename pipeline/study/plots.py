"""The report's plots (matplotlib, PNG): the train-dev gap over training, the flatness
probe and the loss components, one colour per method in every plot."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pipeline.study.records import is_loss_tag


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


def gap_plot(path: Path, title: str, groups: dict, colors: dict) -> None:
    grid = np.linspace(0, 1, 21)
    series = {}
    for method, recs in groups.items():
        curves = [np.interp(grid, [x for x, _ in r["gap_curve"]], [y for _, y in r["gap_curve"]])
                  for r in recs if len(r["gap_curve"]) > 1]
        if curves:
            series[method] = (grid, np.mean(curves, axis=0) * 100, np.std(curves, axis=0) * 100)
    if series:
        _plot_lines(path, title, "fraction of prediction-layer training", "train - dev accuracy (points)", series, colors)


def flatness_plot(path: Path, title: str, groups: dict, colors: dict) -> None:
    series = {}
    for method, recs in groups.items():
        curves = [r["flatness"] for r in recs if r.get("flatness")]
        if curves:
            scales = sorted(curves[0], key=float)
            ys = [np.mean([np.mean(c[s]) for c in curves]) * 100 for s in scales]
            series[method] = ([float(s) for s in scales], ys, None)
    if series:
        _plot_lines(path, title, "relative weight noise sigma", "dev accuracy (%)", series, colors)


def loss_plot(path: Path, title: str, groups: dict, colors: dict) -> None:
    """Each loss component per method, first seed (several seeds' curves overlap); the
    ``_weighted`` copies (the same curve times its weight) are left to TensorBoard."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
