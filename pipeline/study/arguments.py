"""The options of ``crild study``, apart from the study's code so that ``crild --help``
builds its parser without importing the launcher and torch."""
from __future__ import annotations

import argparse

from pipeline.schema.arguments import at_least


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", default="jobs/studies/offline.yaml", help="study file (YAML)")
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
