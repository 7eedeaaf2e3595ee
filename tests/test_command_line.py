"""Overrides may follow options, as users write them, on the crild command and the stage
scripts alike; anything else left over stays argparse's usage error, in one line that names
the subcommand's help, as every other error is one line."""
import pytest

from pipeline.cli import _parser
from pipeline.stage_cli import parse_with_overrides, stage_argparser


def test_overrides_after_options_keep_their_order():
    args = parse_with_overrides(_parser(), ["run", "x.yaml", "seed=1", "--only", "evaluate", "seed=2", "--force"])
    assert (args.config, args.overrides, args.only, args.force) == ("x.yaml", ["seed=1", "seed=2"], ["evaluate"], True)
    args = parse_with_overrides(stage_argparser("distill"), ["--config", "x.yaml", "a.b=1", "--stage", "baseline",
                                                             "c.d=2"])
    assert (args.overrides, args.stage) == (["a.b=1", "c.d=2"], "baseline")


@pytest.mark.parametrize("argv, stray", [(["run", "x.yaml", "--only", "evaluate", "teacher"], "teacher"),
                                         (["run", "x.yaml", "--bogus"], "--bogus"),
                                         (["study", "--collect-only", "seed=1"], "seed=1")])
def test_what_is_not_an_override_is_a_usage_error(argv, stray, capsys):
    with pytest.raises(SystemExit) as done:
        parse_with_overrides(_parser(), argv)
    assert done.value.code == 2
    sub = f"crild {argv[0]}"
    assert capsys.readouterr().err == f"{sub}: error: unrecognized arguments: {stray}; see {sub} --help\n"


@pytest.mark.parametrize("argv, message", [
    ([], "crild: error: the following arguments are required: COMMAND; see crild --help"),
    (["run"], "crild run: error: the following arguments are required: config; see crild run --help"),
    (["bogus"], "crild: error: argument COMMAND: invalid choice: 'bogus'"),
    (["status", "x.yaml", "--verfy"], "crild status: error: unrecognized arguments: --verfy; see crild status --help"),
])
def test_a_usage_error_is_one_line_naming_the_help_to_read(argv, message, capsys):
    with pytest.raises(SystemExit) as done:
        parse_with_overrides(_parser(), argv)
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1 and err.startswith(message), err
    with pytest.raises(SystemExit):
        parse_with_overrides(stage_argparser("teacher"), ["x.yaml"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ": error: the following arguments are required: --config; see " in err, err
