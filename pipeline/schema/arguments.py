"""The command line's share of the input checks, for crild's commands, its stage scripts
and the tools under ``tools/``: argparse's usage errors as one line (exit 2), and argument
types that bound a number where it is read, so that ``--steps 0`` or ``--heads 5`` against
``--hidden 768`` is that line, not a traceback once the models are built."""
from __future__ import annotations

import argparse


class OneLineParser(argparse.ArgumentParser):
    """argparse's parser, its usage errors one line as crild's other errors are: what is wrong
    and where the usage is, not the usage itself printed above it. Subcommands' parsers are
    of the same class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def at_least(low: int):
    """An argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value
    return parse


def heads_divide(parser: argparse.ArgumentParser, hidden: int, heads: int) -> None:
    """A usage error unless ``heads`` attention heads divide the hidden size ``hidden``."""
    if hidden % heads:
        parser.error(f"--heads {heads} does not divide --hidden {hidden}; expected a head count that divides the "
                     f"hidden size (768 has 12)")
