"""The options of ``crild study``, apart from the study's code so that ``crild --help``
builds its parser without importing the launcher and torch."""
from __future__ import annotations

import argparse
import os

from pipeline.schema.arguments import at_least

DEFAULT_STUDY = "jobs/studies/offline.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study_file", nargs="?", metavar="STUDY", help=f"study file (YAML; or --study FILE; "
                                                                        f"default {DEFAULT_STUDY})")
    parser.add_argument("--study", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--collect-only", action="store_true", help="run nothing; report what is complete")
    parser.add_argument("--max-runs", type=at_least(0), default=None, help="run at most this many missing cells, then report")
    parser.add_argument("--cached-scores", action="store_true",
                        help="score nothing: report the recorded runs, list the rest")
    parser.add_argument("--only", action="append", default=[], metavar="PREFIX",
                        help="run only cells whose label starts with PREFIX (task, task/setting, "
                             "task/setting/seedN; repeatable), e.g. to share a study between machines; "
                             "the report still covers the whole study")
    parser.add_argument("--jobs", type=at_least(1), default=1,
                        help="cells run (and scored) at once, never two of one seed; they share the cores")


def chosen_study(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``args.study``: the study file given as the first argument or as ``--study FILE``
    (once), else the offline study."""
    if args.study_file is not None and "=" in args.study_file and not os.path.exists(args.study_file):
        parser.error(f"unrecognized arguments: {args.study_file}")  # a study takes no overrides: its file holds them
    if args.study_file is not None and args.study is not None:
        parser.error(f"the study file is given twice ({args.study_file} and --study {args.study}); give it once")
    args.study = args.study_file or args.study or DEFAULT_STUDY
