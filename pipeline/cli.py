"""The ``crild`` command: run a whole pipeline or one stage, submit it to Slurm, validate or
explain a configuration, run a comparison study, or prepare the offline data. The stage
subcommands come from the stage registry (``pipeline/stages.py``)."""
from __future__ import annotations

import argparse
import os
import signal
import sys

from pipeline.errors import UserError, cli_entry
from pipeline.schema.arguments import OneLineParser
from pipeline.stage_cli import parse_with_overrides, subcommand_parser
from pipeline.stages import STAGES, in_running_order


def _add_config(parser: argparse.ArgumentParser, optional: str = "") -> None:
    """The run configuration, as the first positional argument or, as the stage scripts take
    it, ``--config FILE``: the same file either way (checked in :func:`_one_config`)."""
    parser.add_argument("config", nargs="?", help=f"run configuration (YAML; or --config FILE){optional}")
    parser.add_argument("--config", dest="config_option", metavar="FILE", help=argparse.SUPPRESS)
    parser.set_defaults(config_required=not optional)
    if not optional:  # argparse would show the positional as optional: [config]
        parser.usage = "%(prog)s [options] config [section.key=value ...]"


def _one_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``args.config`` from ``--config FILE`` or the positional file, given once; a
    ``key=value`` in the file's place (no such file) is the first override."""
    if not hasattr(args, "config_option"):
        return
    sub = subcommand_parser(parser, args)
    if args.config is not None and "=" in args.config and not os.path.exists(args.config):
        args.overrides, args.config = [args.config, *args.overrides], None  # argparse filled the file with an override
    if args.config_option is not None:
        if args.config is not None:
            sub.error(f"the configuration is given twice ({args.config} and --config {args.config_option}); give it once")
        args.config = args.config_option
    if args.config is None and args.config_required:
        sub.error("the following arguments are required: config")


def version_line() -> str:
    """crild's version and those of the libraries whose versions change its results, for a
    bug report (read from their installed metadata: nothing is imported)."""
    import platform
    from importlib import metadata

    from pipeline import __version__

    def installed(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    libraries = ", ".join(f"{name} {installed(name)}" for name in ("torch", "deepspeed", "transformers", "onnxruntime"))
    return f"crild {__version__} (Python {platform.python_version()}; {libraries})"


class _Version(argparse.Action):
    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="print crild's version and its libraries', and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_line())
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="crild", description="Compress encoder models by CR-ILD distillation.")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the configured stages in order, skipping complete ones")
    _add_config(p)
    p.add_argument("overrides", nargs="*", default=[], metavar="section.key=value")
    p.add_argument("--force", action="store_true", help="redo the stages from their start, even where their output is complete")
    p.add_argument("--only", action="append", metavar="STAGE", help="run only this stage (repeatable)")

    p = sub.add_parser("submit", help="submit one Slurm job per stage, chained with afterok dependencies")
    _add_config(p)
    p.add_argument("overrides", nargs="*", default=[], metavar="section.key=value")
    p.add_argument("--no-wait", action="store_true", help="return after submitting instead of following the jobs")
    p.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                   help="extra sbatch argument for every job, e.g. --sbatch-arg=--partition=gpu")

    for name, stage in STAGES.items():
        p = sub.add_parser(name, help=stage.help + " (in this process; use the deepspeed launcher for ranks)")
        _add_config(p)
        p.add_argument("overrides", nargs="*", default=[], metavar="section.key=value")

    p = sub.add_parser("status", help="each stage of a run: complete, running, interrupted, stale or missing")
    _add_config(p)
    p.add_argument("overrides", nargs="*", default=[], metavar="section.key=value")
    p.add_argument("--verify", action="store_true", help="also check complete outputs against their content hashes "
                                                          "(exit code 1 where one is damaged)")

    p = sub.add_parser("config", help="validate a configuration; print it with every default filled in, and what "
                                      "each distillation phase trains")
    _add_config(p, "; optional with --explain")
    p.add_argument("overrides", nargs="*", default=[], metavar="section.key=value")
    p.add_argument("--explain", action="store_true", help="print every key with its type, default and help")

    from pipeline.study.arguments import add_arguments

    p = sub.add_parser("study", help="run (or collect) a comparison study and write its report")
    add_arguments(p)

    p = sub.add_parser("prepare-data", help="build the offline tasks (SNLI, Rotten Tomatoes) from installed packages")
    p.add_argument("--force", action="store_true", help="rebuild even when prepared")
    return parser


def _config(args) -> None:
    from pipeline.config import RunConfig, load_config
    from pipeline.schema.explain import explain
    from pipeline.schema.hashing import dump_yaml

    if args.explain and not args.config:
        print(explain(RunConfig), end="")
        return
    if not args.config:
        raise UserError("crild config: give a configuration file (or --explain)")
    cfg = load_config(args.config, args.overrides)
    from pipeline.launch.local import check_inputs, stages_to_run
    from pipeline.launch.preflight import check_stages

    # what crild run and crild submit check before their first stage, so that a file that
    # passes here is not refused there (devices are the training machine's business)
    check_inputs(cfg, cfg.pipeline)
    check_stages(cfg, stages_to_run(cfg, cfg.pipeline, known_intact=set()), cfg.num_ranks, device_checks=False)
    if args.explain:
        print(explain(RunConfig), end="")
        return
    print(dump_yaml(cfg), end="")
    print("".join(f"# {line}\n" for line in distillation_plan(cfg)), end="")


def distillation_plan(cfg) -> list[str]:
    """What the distill and baseline stages of ``cfg``'s pipeline train, phase by phase, as
    their presets and settings resolve them (``crild config`` prints it as YAML comments)."""
    from pipeline.config import stage_config
    from pipeline.distill.plan import plan_lines, unused_line
    from pipeline.launch.preflight import distillation_models

    lines = []
    for name in ("distill", "baseline"):
        if name in cfg.pipeline:
            stage_cfg = stage_config(cfg, name)
            lines += plan_lines(stage_cfg.stages.distill, f"stages.{name}", *distillation_models(stage_cfg))
            unused = unused_line(stage_cfg)
            lines += [f"  {unused}"] if unused else []
    return lines


def parse_command(argv: list[str] | None) -> argparse.Namespace:
    """The ``crild`` command line: overrides anywhere after the subcommand, the run
    configuration as a file or ``--config FILE`` (a study file as a file or ``--study
    FILE``); a usage error is argparse's exit 2."""
    parser = _parser()
    args = parse_with_overrides(parser, argv)
    _one_config(parser, args)
    if args.command == "study":
        from pipeline.study.arguments import chosen_study

        chosen_study(subcommand_parser(parser, args), args)
    return args


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = parse_command(argv)
    if args.command == "prepare-data":
        from pipeline.data.offline import prepare_all

        for name, path in prepare_all(force=args.force).items():
            print(f"{name}: {path}")
        return
    if args.command == "config":
        return _config(args)
    if args.command == "study":
        from pipeline.models.loading import quiet_libraries
        from pipeline.study.command import run_study

        quiet_libraries()
        # a time limit's SIGTERM stops the running cells too (they checkpoint and resume next time)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        sys.exit(run_study(args))
    from pipeline.config import load_config

    if args.command == "run":
        for stage in args.only or []:
            if stage not in STAGES:
                raise UserError(f"--only {stage}: unknown stage (known: {', '.join(STAGES)})")
        cfg = load_config(args.config, args.overrides)
        from pipeline.launch.local import run_pipeline  # torch: after the configuration's checks

        only = in_running_order(args.only) if args.only else None
        sys.exit(run_pipeline(cfg, args.config, args.overrides, force=args.force, only=only))
    if args.command == "status":
        from pipeline.launch.status import status_report

        lines, damaged = status_report(load_config(args.config, args.overrides), verify=args.verify)
        print("\n".join(lines))
        if damaged:
            sys.exit(1)
        return
    if args.command == "submit":
        cfg = load_config(args.config, args.overrides)
        from pipeline.launch.submit import submit  # torch: after the configuration's checks

        sys.exit(submit(cfg, args.config, args.overrides, wait=not args.no_wait, extra_sbatch=args.sbatch_arg))
    from pipeline.stage_cli import run_stage

    sys.exit(run_stage(args.command, args.config, args.overrides, f"crild {args.command}"))


if __name__ == "__main__":
    main()
