"""The command line every stage script takes: ``--config FILE`` and ``section.key=value``
overrides, under any launcher (plain python, deepspeed, torchrun, srun). A user error is one
line and exit code 2."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Optional

from pipeline.config import RunConfig, load_config
from pipeline.errors import cli_entry
from pipeline.outputs.lock import run_lock
from pipeline.runtime.distributed import shutdown_distributed


def stage_argparser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="run configuration (YAML)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="override configuration values, e.g. stages.teacher.epochs=1")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def stage_main(run: Callable[[RunConfig], int], description: str, argv: Optional[list[str]] = None) -> None:
    """Entry point of ``python|deepspeed pipeline/stageN_*.py --config FILE [overrides]``."""

    @cli_entry
    def main() -> None:
        args = stage_argparser(description).parse_args(argv)
        if args.local_rank is not None:
            os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
        cfg = load_config(args.config, args.overrides)
        try:
            with run_lock(cfg.output_dir):
                code = run(cfg)
        finally:  # every exit, an error's too: no gloo thread may outlive the interpreter
            shutdown_distributed()
        sys.exit(code)

    main()
