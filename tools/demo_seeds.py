"""The demo over several seeds: does the distilled student beat the no-teacher student on
the held-out test split by more than two standard errors, and how long does one run take?

    python tools/demo_seeds.py                     # seeds 42 43 44: run each, then summarise
    python tools/demo_seeds.py --collect-only      # summarise the runs already made

Each seed is a whole ``crild run jobs/demo.yaml seed=N`` (teacher included) in its own
folder (seed 42 in ``runs/demo``, the demo's own), timed. Its ``eval/results.json`` and wall
time are copied under ``reports/demo/seed<N>/``, and ``reports/demo/README.md`` (with
``summary.json``) gives every seed's scores and the differences paired by seed, with seed
42's deployment table. Run it on an otherwise idle machine: the wall times are part of the
result.
"""
from __future__ import annotations

import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG = "jobs/demo.yaml"
MODELS = (("teacher", "teacher"), ("student", "student (CR-ILD)"), ("student_finetuned", "no-teacher baseline"))


def run_folder(seed: int) -> Path:
    return REPO / ("runs/demo" if seed == 42 else f"runs/demo_seed{seed}")


def run_seed(seed: int, out: Path) -> None:
    start = time.monotonic()
    cmd = [sys.executable, "-m", "pipeline.cli", "run", CONFIG, f"seed={seed}",
           f"output_dir={run_folder(seed).relative_to(REPO)}"]
    subprocess.run(cmd, cwd=REPO, check=True)
    (out / f"seed{seed}").mkdir(parents=True, exist_ok=True)
    (out / f"seed{seed}" / "wall_s.json").write_text(json.dumps({"wall_s": round(time.monotonic() - start)}))


def collect(seed: int, out: Path) -> dict:
    folder = out / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    results = run_folder(seed) / "eval" / "results.json"
    if not results.is_file():
        sys.exit(f"demo_seeds: error: {results} is missing; run the seed first (without --collect-only)")
    shutil.copyfile(results, folder / "results.json")
    models = json.loads(results.read_text())["models"]
    wall = folder / "wall_s.json"
    return {"seed": seed, "wall_s": json.loads(wall.read_text())["wall_s"] if wall.is_file() else None,
            **{name: {split: models[name]["splits"][split]["accuracy"] for split in ("dev", "test")}
               for name, _ in MODELS}}


def paired(rows: list[dict], split: str) -> dict:
    diffs = [100 * (r["student"][split] - r["student_finetuned"][split]) for r in rows]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else None
    return {"diffs": diffs, "mean": statistics.mean(diffs), "se": se,
            "held": se is not None and statistics.mean(diffs) > 2 * se}


def summarise(rows: list[dict], out: Path) -> None:
    tests = {split: paired(rows, split) for split in ("dev", "test")}
    lines = ["# The demo over seeds", "", f"`python tools/demo_seeds.py --seeds {' '.join(str(r['seed']) for r in rows)}`"
             f": `crild run {CONFIG} seed=N`, each seed a whole run (teacher included). Accuracy x100 on the "
             "held-out splits (1,281 sentences each).", "",
             "| seed | " + " | ".join(f"{label} dev | {label} test" for _, label in MODELS) + " | wall (s) |",
             "|---" * (2 * len(MODELS) + 2) + "|"]
    for r in rows:
        cells = " | ".join(f"{100 * r[name]['dev']:.2f} | {100 * r[name]['test']:.2f}" for name, _ in MODELS)
        lines.append(f"| {r['seed']} | {cells} | {r['wall_s'] if r['wall_s'] is not None else '-'} |")
    lines += ["", "Student minus no-teacher baseline, paired by seed (mean ± standard error):", ""]
    for split, t in tests.items():
        se = f" ± {t['se']:.2f}" if t["se"] is not None else ""
        verdict = "more than two standard errors above zero" if t["held"] else "not more than two standard errors"
        lines.append(f"- {split}: {', '.join(f'{d:+.2f}' for d in t['diffs'])}; mean {t['mean']:+.2f}{se} "
                     f"({verdict})")
    latency = run_folder(42) / "export" / "latency.md"
    if latency.is_file() and any(r["seed"] == 42 for r in rows):
        shutil.copyfile(latency, out / "latency_seed42.md")
        lines += ["", "Seed 42's deployment table: [latency_seed42.md](latency_seed42.md)."]
    (out / "README.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps({"seeds": rows, "paired": tests}, indent=1))
    print("\n".join(lines))


def main() -> None:
    from pipeline.errors import not_a_folder
    from pipeline.schema.arguments import OneLineParser, at_least

    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=at_least(0), nargs="+", default=[42, 43, 44])
    parser.add_argument("--collect-only", action="store_true", help="run nothing; summarise the runs made")
    parser.add_argument("--out", default="reports/demo", help="where the summary goes (relative: to the clone)")
    args = parser.parse_args()
    out = REPO / args.out
    problem = not_a_folder(out)  # before the runs, not in a traceback after them
    if problem:
        parser.error(f"argument --out: '{out}' {problem}")
    if not args.collect_only:
        for seed in args.seeds:
            run_seed(seed, out)
    summarise([collect(seed, out) for seed in args.seeds], out)


if __name__ == "__main__":
    from pipeline.errors import cli_entry

    cli_entry(main)()  # a user error, a full disk or a refused path: one line, exit 2
