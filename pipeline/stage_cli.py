"""The command line every stage script takes: ``--config FILE``, ``section.key=value``
overrides and ``--stage`` where the script runs more than one stage (stage3_distill.py also
runs the no-teacher baseline), under any launcher (plain python, deepspeed, torchrun, srun).
A user error is one line and exit code 2."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Callable, Optional

from pipeline.config import LAUNCHED_ENV, RunConfig, check_launched, load_config, stage_config
from pipeline.errors import cli_entry, watch
from pipeline.outputs.lock import is_main_rank, run_lock
from pipeline.schema.arguments import OneLineParser
from pipeline.stages import STAGES, check_output_folder
from pipeline.stale_outputs import stale_before


def stage_argparser(name: str) -> argparse.ArgumentParser:
    """The parser of stage ``name``'s script; ``--stage`` picks among the stages it runs."""
    same_script = [s.name for s in STAGES.values() if s.script == STAGES[name].script]
    stage = f" [--stage {{{','.join(same_script)}}}]" if len(same_script) > 1 else ""
    parser = OneLineParser(description=STAGES[name].help,  # --config is required, and checked after parsing
                           usage=f"%(prog)s --config FILE{stage} [section.key=value ...]")
    parser.add_argument("--config", metavar="FILE", help="run configuration (YAML; required)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="override configuration values, e.g. stages.teacher.epochs=1")
    parser.add_argument("--stage", choices=same_script, default=name,
                        help=f"the stage to run (default: {name})" if len(same_script) > 1 else argparse.SUPPRESS)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def parse_with_overrides(parser: argparse.ArgumentParser, argv: Optional[list[str]]) -> argparse.Namespace:
    """``parser.parse_args``, with ``section.key=value`` overrides allowed after options too
    (``crild run x.yaml --only evaluate stages.evaluate.splits=[test]``): argparse fills a
    ``nargs='*'`` positional once, so overrides after an option would be unrecognised. Anything
    else left over is still argparse's usage error (exit 2)."""
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or getattr(args, "overrides", None) is None]
    if stray:
        subcommand_parser(parser, args).error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def subcommand_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the subcommand ``args`` chose (``crild run``), whose help the error points
    to; ``parser`` itself where it has none."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(getattr(args, action.dest, None), parser)
    return parser


def run_stage(name: str, config: str, overrides: list[str], how: str,
              run: Optional[Callable[[RunConfig], int]] = None) -> int:
    """Run stage ``name`` in this process: ``run`` (else the stage script's, imported once the
    configuration is checked, so that a bad one is told before torch loads) gets the stage's
    configuration, under the run's lock, and every process group is torn down on any exit, an
    error's too (no gloo thread may outlive the interpreter). The stage scripts and ``crild
    <stage>`` both call it. ``how`` names the command in the note on stale earlier outputs the
    stage reads, given where the stage was started by hand (``crild run`` checks those itself)."""
    run_cfg = load_config(config, overrides)
    check_launched(run_cfg)
    if LAUNCHED_ENV not in os.environ and is_main_rank():
        for note in stale_before(run_cfg, [name], how):
            print(note, flush=True)
    cfg = stage_config(run_cfg, name)
    if run is None:
        run = importlib.import_module(STAGES[name].module).run
    watch(cfg.output_dir)
    try:
        with run_lock(cfg.output_dir):
            check_output_folder(cfg, name)
            return run(cfg)
    finally:  # a stage that set up process groups imported this module; no other has any to tear down
        if (distributed := sys.modules.get("pipeline.runtime.distributed")) is not None:
            distributed.shutdown_distributed()


def stage_main(run: Callable[[RunConfig], int], name: str, argv: Optional[list[str]] = None) -> None:
    """Entry point of ``python|deepspeed pipeline/stageN_*.py --config FILE [overrides]``: the
    script of stage ``name``, whose ``run`` gets the stage's configuration."""

    @cli_entry
    def main() -> None:
        parser = stage_argparser(name)
        args = parse_with_overrides(parser, argv)
        if args.config is None:  # a file given without --config reads as an override: say what to type
            given = next((o for o in args.overrides if "=" not in o), None)
            parser.error("the following arguments are required: --config" +
                         (f" (give the configuration as --config {given})" if given else ""))
        if args.local_rank is not None:
            os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
        sys.exit(run_stage(args.stage, args.config, args.overrides, Path(sys.argv[0]).name, run))

    main()
