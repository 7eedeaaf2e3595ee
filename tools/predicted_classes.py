"""How often each model of a study group predicts each class on the held-out splits, beside
the best one-class prediction: the check that tells a student which learnt little from one
which learnt nothing but a label (under class imbalance, several score exactly the share of
the majority class).

    python tools/predicted_classes.py --group rotten_tomatoes/imbalance-10
    python tools/predicted_classes.py --study jobs/studies/offline.yaml --group snli/imbalance-10

It scores every complete model folder of the group that is here (each seed's teacher and
every method's student), with the study's own scoring settings, and checks that its weights
are the ones its committed record was made from. It writes
``<report_dir>/predicted_classes_<task>_<setting>.json`` and prints a table. The study's
report reads that file for the group's records of the same weights (a reference row and the
models that predict one class, teachers too).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.errors import UserError, cli_entry  # noqa: E402


def _models(spec, group: str):
    """(name, seed, folder, record) for every complete model folder of ``group``."""
    from pipeline.study.cells import cells
    from pipeline.study.records import load_record, model_folder, weights_digest
    from pipeline.study.spec import TEACHER

    task, _, setting = group.partition("/")
    chosen = [c for c in cells(spec) if (c.task, c.setting) == (task, setting)]
    if not chosen:
        raise UserError(f"--group {group}: no such task/setting in {spec.source}")
    seen = set()
    for cell in chosen:
        for teacher in (True, False):
            folder = model_folder(cell, teacher)
            if folder in seen or weights_digest(folder) is None:
                continue
            seen.add(folder)
            yield (TEACHER if teacher else cell.method), cell, folder, load_record(spec, cell, teacher)


@cli_entry
def main(argv: list[str] | None = None) -> None:
    from pipeline.evaluation.results import one_class_predicted
    from pipeline.models.loading import quiet_libraries
    from pipeline.outputs.atomic import replace_text
    from pipeline.schema.arguments import OneLineParser
    from pipeline.study.cells import cell_config
    from pipeline.study.records import predicted_classes_path, weights_digest
    from pipeline.study.scoring import score_folder
    from pipeline.study.spec import load_study

    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="jobs/studies/offline.yaml", help="study file (YAML)")
    parser.add_argument("--group", required=True, metavar="TASK/SETTING", help="e.g. rotten_tomatoes/imbalance-10")
    args = parser.parse_args(argv)
    quiet_libraries()
    spec = load_study(args.study)
    rows, one_class = [], None
    for name, cell, folder, record in _models(spec, args.group):
        digest = weights_digest(folder)
        if record is not None and record["weights_sha256"] != digest:
            raise UserError(f"{folder}: its weights are not those of its record; rerun the study first")
        scored = score_folder(spec, cell_config(spec, cell), folder, probe=False)
        one_class = scored["one_class"]
        rows.append({"model": name, "seed": cell.seed, "weights_sha256": digest, "scores": scored["scores"],
                     "predicted": scored["predicted"]})
        print(f"{name} seed {cell.seed}: " + "; ".join(
            f"{split} " + ", ".join(f"{label} {n}" for label, n in counts.items())
            for split, counts in scored["predicted"].items()), flush=True)
    if not rows:
        raise UserError(f"--group {args.group}: no complete model folder under {spec.output_dir}")
    task, _, setting = args.group.partition("/")
    out = predicted_classes_path(spec, task, setting)
    replace_text(out, json.dumps({"group": args.group, "study": args.study, "one_class": one_class, "models": rows},
                                 indent=1) + "\n")
    one = sum(1 for r in rows if any(one_class_predicted(c) for c in r["predicted"].values()))
    print(f"{one} of {len(rows)} models predict one class for every example of a split; wrote {out}")


if __name__ == "__main__":
    main()
