"""The ``crild`` command: run a whole pipeline, or one stage, or prepare the offline data."""
from __future__ import annotations

import argparse
import sys

from pipeline.errors import cli_entry

STAGE_MODULES = {"teacher": "pipeline.stage1_teacher", "evaluate": "pipeline.stage4_evaluate"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crild", description="Compress BERT-family models by CR-ILD distillation.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the configured stages in order, skipping complete ones")
    p.add_argument("config", help="run configuration (YAML)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    p.add_argument("--force", action="store_true", help="redo stages even when their output is complete")

    for name, help_ in (("teacher", "stage 1: fine-tune the teacher"),
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
        from pipeline.runner import run_pipeline

        sys.exit(run_pipeline(cfg, args.config, args.overrides, force=args.force))
    import importlib

    sys.exit(importlib.import_module(STAGE_MODULES[args.command]).run(cfg))


if __name__ == "__main__":
    main()
