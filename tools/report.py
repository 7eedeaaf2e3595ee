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
    parser.add_argument("--max-runs", type=int, default=None, help="run at most this many missing cells, then report")
    args = parser.parse_args(argv)

    from pipeline.models import quiet_libraries
    from pipeline.study import cell_config, cell_done, cells, load_study, read_scalars, run_cell, score_model
    from pipeline.study_report import cell_record, write_report
    from pipeline.tasks import get_task

    quiet_libraries()
    spec = load_study(args.study)
    all_cells = cells(spec)  # task, setting, seed, method: one setting's seeds complete first
    failed, ran, started = [], 0, time.time()
    intact: set = set()  # (folder, fingerprint) verified in this invocation: hash each output once
    for cell in all_cells:
        if args.collect_only or (args.max_runs is not None and ran >= args.max_runs):
            break
        if cell_done(spec, cell, intact):
            continue
        print(f"report: running {cell.label}", flush=True)
        t0 = time.time()
        code = run_cell(spec, cell, cell.run_dir / "logs")
        ran += 1
        if code != 0:
            failed.append(f"{cell.label}: exit code {code}, log {cell.run_dir / 'logs' / (cell.method + '.log')}")
            print(f"report: {cell.label} failed with exit code {code}", flush=True)
        else:
            print(f"report: {cell.label} done in {time.time() - t0:.0f} s", flush=True)

    records = defaultdict(lambda: defaultdict(list))
    teachers, missing, metric_of, seen_teacher = defaultdict(list), [], {}, set()
    for cell in all_cells:
        metric_of[cell.task] = get_task(cell.task).main_metric
        if not cell_done(spec, cell, intact):
            if not any(cell.label in f for f in failed):
                missing.append(cell.label)
            continue
        cfg = cell_config(spec, cell)
        scores = cell.run_dir / "report_scores"
        scored = score_model(spec, cfg, cell.student, scores / f"{cell.method}.json")
        scalars = read_scalars(cell.run_dir / "tensorboard" / cell.student.name)
        records[(cell.task, cell.setting)][cell.method].append(cell_record(cell, scored, scalars,
                                                                           metric_of[cell.task]))
        teacher = cell.run_dir / "teacher"
        if teacher not in seen_teacher and (teacher / "model.safetensors").is_file():
            seen_teacher.add(teacher)
            t = score_model(spec, cfg, teacher, scores / "teacher.json", probe=False)
            teachers[(cell.task, cell.setting)].append(t["scores"])

    import torch

    header = [f"Written by `python tools/report.py --study {args.study}` on {time.strftime('%Y-%m-%d')}; "
              f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
              f"{', CUDA' if torch.cuda.is_available() else ', CPU only'}.",
              f"Base configuration: `{_shown(spec.base)}`; tasks {', '.join(spec.tasks)}; settings "
              f"{', '.join(f'{k} ({v})' for k, v in spec.settings.items())}; seeds {spec.seeds}."]
    path = write_report(spec, records, teachers, missing, failed, header, metric_of)
    print(f"report: wrote {path} ({time.time() - started:.0f} s; {len(missing)} missing, {len(failed)} failed)")
    return 1 if failed else 0


if __name__ == "__main__":
    @cli_entry
    def _entry() -> None:
        try:
            sys.exit(main())
        except KeyboardInterrupt:
            raise UserError("interrupted; rerun the same command to continue the study") from None

    _entry()
