"""The command line's share of the input checks, for crild's commands, its stage scripts
and the tools under ``tools/``: argparse's usage errors as one line (exit 2), and argument
types that bound a number where it is read, so that ``--steps 0`` or ``--heads 5`` against
``--hidden 768`` is that line, not a traceback once the models are built."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.errors import not_a_folder

_GIVEN = "_options_given"  # on the namespace while it is parsed: dest -> the option as first given


class _StoreOnce(argparse._StoreAction):
    """argparse's ``store``, refusing an option given twice: argparse keeps the last value, so
    ``--config a.yaml --config b.yaml`` ran b.yaml, and ``--steps 10 --steps 100`` ran 100
    steps, without a word. Options meant to repeat are ``append`` actions."""

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string is not None:  # a positional is filled once by argparse itself
            given = getattr(namespace, _GIVEN, None)
            if given is None:
                given = {}
                setattr(namespace, _GIVEN, given)
            typed = f"{option_string} {' '.join(map(str, values)) if isinstance(values, list) else values}"
            if self.dest in given:
                parser.error(f"{option_string} is given twice ({given[self.dest]} and {typed}); give it once")
            given[self.dest] = typed
        super().__call__(parser, namespace, values, option_string)


class OneLineParser(argparse.ArgumentParser):
    """argparse's parser, its usage errors one line as crild's other errors are: what is wrong
    and where the usage is, not the usage itself printed above it; an option that takes a
    value is given once. Subcommands' parsers are of the same class."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)

    def parse_known_args(self, args=None, namespace=None):
        namespace, extra = super().parse_known_args(args, namespace)
        if hasattr(namespace, _GIVEN):
            delattr(namespace, _GIVEN)
        return namespace, extra

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def output_file(text: str) -> str:
    """An argparse type: a file the command will write (``--json``, ``--profile``), refused
    before any work where it cannot be: a folder by that name, or a file on its folder's
    path. A benchmark wrote its results last, and lost them to the traceback."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"'{text}' is a folder; expected a file to write")
    problem = not_a_folder(path.absolute().parent)
    if problem:
        raise argparse.ArgumentTypeError(f"'{text}' cannot be written: its folder '{path.absolute().parent}' {problem}")
    return text


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
