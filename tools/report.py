"""Run (or collect) the paper's method comparison and write a Markdown + PNG report.

    python tools/report.py                                  # jobs/studies/offline.yaml
    python tools/report.py --study my_study.yaml --collect-only

Every cell (task x setting x seed x method) is one ``crild run`` of the study's base
configuration: complete cells are skipped, interrupted ones resume from their checkpoints,
so the same command continues a study after a crash or a time limit. ``--collect-only``
writes the report of whatever is complete and lists the rest as missing.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.errors import UserError, cli_entry  # noqa: E402


def _shown(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="jobs/studies/offline.yaml", help="study file (YAML)")
    parser.add_argument("--collect-only", action="store_true", help="run nothing; report what is complete")
    parser.add_argument("--max-runs", type=int, default=None,
                        help="run at most this many missing cells, then report")
    parser.add_argument("--cached-scores", action="store_true",
                        help="score nothing: report the complete runs already scored, list the rest")
    parser.add_argument("--jobs", type=int, default=1,
                        help="cells run (and scored) at once, never two of one seed; they share the cores")
    args = parser.parse_args(argv)

    from pipeline.models import quiet_libraries
    from pipeline.study import cell_done, cells, load_study, read_scalars, run_cells, score_cell, score_cells
    from pipeline.study_report import cell_record, write_report
    from pipeline.tasks import get_task

    quiet_libraries()
    spec = load_study(args.study)
    all_cells = cells(spec)  # task, setting, seed, method: one setting's seeds complete first
    failed, started = [], time.time()
    intact: set = set()  # (folder, fingerprint) verified in this invocation: hash each output once
    todo = [] if args.collect_only else [c for c in all_cells if not cell_done(spec, c, intact)]
    if args.max_runs is not None:
        todo = todo[:args.max_runs]
    for cell, code, seconds in run_cells(spec, todo, args.jobs,
                                         on_start=lambda c: print(f"report: running {c.label}", flush=True)):
        if code != 0:
            failed.append(f"{cell.label}: exit code {code}, log {cell.run_dir / 'logs' / (cell.method + '.log')}")
            print(f"report: {cell.label} failed with exit code {code}", flush=True)
        else:
            print(f"report: {cell.label} done in {seconds:.0f} s", flush=True)

    done = [cell for cell in all_cells if cell_done(spec, cell, intact)]
    first_of_seed = {}  # each seed's teacher is scored once, with the first of its cells
    for cell in done:
        first_of_seed.setdefault(cell.run_dir, cell)
    with_teacher = [c for c in first_of_seed.values() if (c.run_dir / "teacher" / "model.safetensors").is_file()]
    if not args.cached_scores:
        score_cells(spec, [(cell, False) for cell in done] + [(cell, True) for cell in with_teacher], args.jobs)

    records = defaultdict(lambda: defaultdict(list))
    teachers, missing, unscored, metric_of = defaultdict(list), [], [], {}
    for cell in all_cells:
        metric_of[cell.task] = get_task(cell.task).main_metric
        if cell not in done:
            if not any(cell.label in f for f in failed):
                missing.append(cell.label)
            continue
        teacher = score_cell(spec, cell, teacher=True, compute=False) if cell in with_teacher else None
        if teacher:
            teachers[(cell.task, cell.setting)].append(teacher["scores"])
        scored = score_cell(spec, cell, compute=not args.cached_scores)
        if scored is None:
            unscored.append(cell.label)
            continue
        scalars = read_scalars(cell.run_dir / "tensorboard" / cell.student.name)
        records[(cell.task, cell.setting)][cell.method].append(cell_record(cell, scored, scalars,
                                                                           metric_of[cell.task]))

    import torch

    header = [f"Written by `python tools/report.py --study {args.study}` on {time.strftime('%Y-%m-%d')}; "
              f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
              f"{', CUDA' if torch.cuda.is_available() else ', CPU only'}.",
              f"Base configuration: `{_shown(spec.base)}`; tasks {', '.join(spec.tasks)}; settings "
              f"{', '.join(f'{k} ({v})' for k, v in spec.settings.items())}; seeds {spec.seeds}."]
    header += [f"Held-out {task} scores use the first {n:,} examples of each split (`score_max_examples`)."
               for task, n in spec.score_max_examples.items()]
    if unscored:
        header.append(f"{len(unscored)} complete runs are not scored yet (this report was written with "
                      f"`--cached-scores`); they are listed as missing.")
    path = write_report(spec, records, teachers, missing + unscored, failed, header, metric_of)
    print(f"report: wrote {path} ({time.time() - started:.0f} s; {len(missing)} missing, {len(failed)} failed)")
    return 1 if failed else 0


if __name__ == "__main__":
    @cli_entry
    def _entry() -> None:
        import signal

        # a time limit's SIGTERM stops the running cells too (they checkpoint and resume next time)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            sys.exit(main())
        except KeyboardInterrupt:
            raise UserError("interrupted; rerun the same command to continue the study") from None

    _entry()
