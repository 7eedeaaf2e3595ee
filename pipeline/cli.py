"""The ``crild`` command: run a whole pipeline, or one stage, or prepare the offline data."""
from __future__ import annotations

import argparse
import sys

from pipeline.errors import UserError, cli_entry

STAGE_MODULES = {"teacher": "pipeline.stage1_teacher", "augment": "pipeline.stage2_augment",
                 "distill": "pipeline.stage3_distill", "evaluate": "pipeline.stage4_evaluate"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crild", description="Compress BERT-family models by CR-ILD distillation.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the configured stages in order, skipping complete ones")
    p.add_argument("config", help="run configuration (YAML)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    p.add_argument("--force", action="store_true", help="redo stages even when their output is complete")
    p.add_argument("--only", action="append", metavar="STAGE", help="run only this stage (repeatable)")

    p = sub.add_parser("submit", help="submit one Slurm job per stage, chained with afterok dependencies")
    p.add_argument("config", help="run configuration (YAML)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    p.add_argument("--no-wait", action="store_true", help="return after submitting instead of following the jobs")
    p.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                   help="extra sbatch argument for every job, e.g. --sbatch-arg=--partition=gpu")

    for name, help_ in (("teacher", "stage 1: fine-tune the teacher"),
                        ("augment", "stage 2: TinyBERT-style augmented data"),
                        ("distill", "stage 3: distil the teacher into the student"),
                        ("evaluate", "stage 4: evaluate model folders on dev/test")):
        p = sub.add_parser(name, help=help_ + " (in this process; use the deepspeed launcher for ranks)")
        p.add_argument("config")
        p.add_argument("overrides", nargs="*", metavar="section.key=value")

    p = sub.add_parser("config", help="validate a configuration and print it with every default filled in")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")

    p = sub.add_parser("prepare-data", help="build the offline tasks (SNLI, Rotten Tomatoes) from installed packages")
    p.add_argument("--force", action="store_true", help="rebuild even when prepared")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "prepare-data":
        from pipeline.offline_data import prepare_all

        for name, path in prepare_all(force=args.force).items():
            print(f"{name}: {path}")
        return
    from pipeline.config import dump_yaml, load_config

    cfg = load_config(args.config, args.overrides)
    if args.command == "config":
        print(dump_yaml(cfg), end="")
        return
    if args.command == "run":
        from pipeline.runner import STAGES, run_pipeline

        for stage in args.only or []:
            if stage not in STAGES:
                raise UserError(f"--only {stage}: unknown stage (known: {', '.join(STAGES)})")
        sys.exit(run_pipeline(cfg, args.config, args.overrides, force=args.force, only=args.only))
    if args.command == "submit":
        from pipeline.slurm_submit import submit

        sys.exit(submit(cfg, args.config, args.overrides, wait=not args.no_wait, extra_sbatch=args.sbatch_arg))
    import importlib

    sys.exit(importlib.import_module(STAGE_MODULES[args.command]).run(cfg))


if __name__ == "__main__":
    main()
