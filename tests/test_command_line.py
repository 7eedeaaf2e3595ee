"""Overrides may follow options, as users write them, on the crild command and the stage
scripts alike; anything else left over stays argparse's usage error, in one line that names
the subcommand's help, as every other error is one line."""
import shlex

import pytest
import yaml
from helpers import REPO, tiny_run_config

from pipeline.cli import main, parse_command
from pipeline.config import load_config
from pipeline.launch.local import done_line
from pipeline.stage_cli import parse_with_overrides, stage_argparser, stage_main


def test_overrides_after_options_keep_their_order():
    args = parse_command(["run", "x.yaml", "seed=1", "--only", "evaluate", "seed=2", "--force"])
    assert (args.config, args.overrides, args.only, args.force) == ("x.yaml", ["seed=1", "seed=2"], ["evaluate"], True)
    args = parse_with_overrides(stage_argparser("distill"), ["--config", "x.yaml", "a.b=1", "--stage", "baseline",
                                                             "c.d=2"])
    assert (args.overrides, args.stage) == (["a.b=1", "c.d=2"], "baseline")


def test_a_runs_last_line_names_its_status_command_with_the_overrides(tmp_path, tiny_bert, sentiment_dir, capsys):
    """``crild run run.yaml output_dir=...`` ends by naming ``crild status`` for that run: with
    its overrides, quoted as a shell reads them. Without them the command pasted read the
    file's own output_dir and said every stage was missing."""
    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
    raw["pipeline"] = ["teacher"]
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    elsewhere = tmp_path / "the other run"
    overrides = [f"output_dir={elsewhere}", "stages.teacher.epochs=2"]
    line = done_line(load_config(config, overrides), ["teacher"], str(config), overrides)
    assert line.startswith(f"crild: done: {elsewhere}: teacher/; crild status ") and line.endswith(" lists every stage")
    command = shlex.split(line.split("; ", 1)[1].removesuffix(" lists every stage"))
    assert command == ["crild", "status", str(config), *overrides]
    main(command[1:])
    assert capsys.readouterr().out.splitlines()[0] == f"{elsewhere}: not in use"


def test_version_names_crild_and_the_libraries_its_results_depend_on(capsys):
    import platform
    from importlib import metadata

    from pipeline import __version__

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == (
        f"crild {__version__} (Python {platform.python_version()}; torch {metadata.version('torch')}, deepspeed "
        f"{metadata.version('deepspeed')}, transformers {metadata.version('transformers')}, onnxruntime "
        f"{metadata.version('onnxruntime')})\n")


def test_a_study_file_is_the_first_argument_or_dash_dash_study():
    assert parse_command(["study"]).study == "jobs/studies/offline.yaml"
    for argv in (["study", "s.yaml", "--collect-only"], ["study", "--study", "s.yaml"], ["study", "--study=s.yaml"]):
        assert parse_command(argv).study == "s.yaml"


@pytest.mark.parametrize("command", ["run", "submit", "status", "config", "evaluate", "baseline"])
def test_the_configuration_is_the_first_argument_or_dash_dash_config_as_the_stage_scripts_take_it(command):
    """``crild run --config x.yaml`` reads as ``crild run x.yaml``, as users of the stage
    scripts (``--config FILE``) write it; a ``key=value`` before or after it is an override."""
    plain = parse_command([command, "x.yaml", "seed=1", "task.name=sst2"])
    for argv in ([command, "--config", "x.yaml", "seed=1", "task.name=sst2"],
                 [command, "seed=1", "--config", "x.yaml", "task.name=sst2"],
                 [command, "seed=1", "task.name=sst2", "--config=x.yaml"]):
        args = parse_command(argv)
        assert (args.config, args.overrides) == (plain.config, plain.overrides) == ("x.yaml", ["seed=1", "task.name=sst2"])


@pytest.mark.parametrize("argv, stray", [(["run", "x.yaml", "--only", "evaluate", "teacher"], "teacher"),
                                         (["run", "x.yaml", "--bogus"], "--bogus"),
                                         (["study", "--collect-only", "seed=1"], "seed=1")])
def test_what_is_not_an_override_is_a_usage_error(argv, stray, capsys):
    with pytest.raises(SystemExit) as done:
        parse_command(argv)
    assert done.value.code == 2
    sub = f"crild {argv[0]}"
    assert capsys.readouterr().err == f"{sub}: error: unrecognized arguments: {stray}; see {sub} --help\n"


@pytest.mark.parametrize("argv, message", [
    ([], "crild: error: the following arguments are required: COMMAND; see crild --help"),
    (["run"], "crild run: error: the following arguments are required: config; see crild run --help"),
    (["bogus"], "crild: error: argument COMMAND: invalid choice: 'bogus'"),
    (["evaluate", "seed=1"], "crild evaluate: error: the following arguments are required: config; see crild evaluate"),
    (["study", "a.yaml", "--study", "b.yaml"],
     "crild study: error: the study file is given twice (a.yaml and --study b.yaml); give it once; see crild study"),
    (["run", "a.yaml", "--config", "b.yaml"],
     "crild run: error: the configuration is given twice (a.yaml and --config b.yaml); give it once; see crild run"),
    (["status", "x.yaml", "--verfy"], "crild status: error: unrecognized arguments: --verfy; see crild status --help"),
])
def test_a_usage_error_is_one_line_naming_the_help_to_read(argv, message, capsys):
    with pytest.raises(SystemExit) as done:
        parse_command(argv)
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1 and err.startswith(message), err
    usage = stage_argparser("distill").format_usage()  # --config, checked after parsing, is shown as required
    assert usage.startswith("usage: ") and " --config FILE [--stage {distill,baseline}] [section.key=value ...]" \
        in usage, usage
    for given, hint in (([], ""), (["x.yaml"], " (give the configuration as --config x.yaml)")):
        with pytest.raises(SystemExit) as done:  # a stage script: the file given without --config is named
            stage_main(lambda cfg: 0, "teacher", given)
        err = capsys.readouterr().err
        assert done.value.code == 2 and err.count("\n") == 1 and err.endswith(
            f": error: the following arguments are required: --config{hint}; see {err.partition(':')[0]} --help\n"), err


def tool_main(name: str):
    """``main`` of ``tools/<name>.py``, loaded as a module (its ``__main__`` block not run)."""
    import runpy

    return runpy.run_path(str(REPO / "tools" / f"{name}.py"), run_name=f"tools_{name}")["main"]


@pytest.mark.parametrize("tool, argv, message", [
    ("bench_distill", ["--heads", "5"], "--heads 5 does not divide --hidden 768; expected a head count that divides"),
    ("bench_distill", ["--steps", "0"], "argument --steps: expected an integer >= 1, got '0'"),
    ("bench_distill", ["--steps", "1", "--steps", "2"], "--steps is given twice (--steps 1 and --steps 2); give it once"),
    ("bench_distill", ["--max-length", "2"], "argument --max-length: expected an integer >= 3, got '2'"),
    ("bench_memory", ["--hidden", "100"], "--heads 12 does not divide --hidden 100"),
    ("bench_memory", ["--ranks", "0"], "argument --ranks: expected an integer >= 1, got '0'"),
    ("bench_augment", ["--copies", "-1"], "argument --copies: expected an integer >= 1, got '-1'"),
    ("bench_families", ["--steps", "many"], "argument --steps: expected an integer >= 1, got 'many'"),
    ("bench_families", ["--warmup", "-1"], "argument --warmup: expected an integer >= 0, got '-1'"),
    # where the results cannot be written: said before the run, not in a traceback after it
    ("bench_families", ["--json", str(REPO / "README.md" / "x.json")],
     f"argument --json: '{REPO}/README.md/x.json' cannot be written: its folder '{REPO}/README.md' is a file, not a "
     f"folder"),
    ("bench_distill", ["--profile", str(REPO / "tools")], f"argument --profile: '{REPO}/tools' is a folder; expected "
                                                           f"a file to write"),
    ("demo_seeds", ["--out", str(REPO / "README.md" / "seeds")],
     f"argument --out: '{REPO}/README.md/seeds' is under '{REPO}/README.md', a file"),
    ("count_host_syncs", ["--lengths", "16", "0"], "argument --lengths: expected an integer >= 3, got '0'"),
    ("demo_seeds", ["--seeds", "-1"], "argument --seeds: expected an integer >= 0, got '-1'"),
    ("predicted_classes", [], "the following arguments are required: --group")])
def test_a_tools_bad_argument_is_one_line_before_any_work(tool, argv, message, capsys, monkeypatch):
    """The benchmarks and tools take the command line's checks too: a head count that does not
    divide the hidden size, or a count of 0, ended in a traceback once the models were built
    (or a division by zero after the run)."""
    monkeypatch.setattr("sys.argv", [f"{tool}.py", *argv])
    with pytest.raises(SystemExit) as done:
        tool_main(tool)()
    assert done.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"{tool}.py: error: {message}") and line.endswith(f"; see {tool}.py --help"), line


@pytest.mark.parametrize("argv, message", [
    ([], "expected --prepare [BUNDLE], --run BUNDLE OUT, --dry-run [--with-model] or --rehearse OUT, got ''"),
    (["--prepre"], "expected --prepare [BUNDLE], --run BUNDLE OUT, --dry-run [--with-model] or --rehearse OUT, "
                   "got '--prepre'"),
    (["--run", "gpu_bundle"], "--run takes BUNDLE OUT, got 1 argument;"),
    (["--run", "{tmp}/no-bundle", "{tmp}/out"], "--run: '{tmp}/no-bundle' is not a bundle --prepare made (no wheels/ in "
                                                "it); run bash tools/gpu_check.sh --prepare {tmp}/no-bundle first"),
    (["--dry-run", "--with-modle"], "--dry-run takes --with-model at most, got '--with-modle'"),
    (["--rehearse"], "--rehearse takes OUT, got 0 arguments")])
def test_the_gpu_checks_bad_arguments_are_one_line_before_any_work(argv, message, tmp_path):
    """The GPU check's script answers as the tools do: it printed its whole header for an
    unknown option, and a bundle that was not there failed in cd with exit 1, on the machine
    whose minutes are counted."""
    import subprocess

    argv, message = [a.format(tmp=tmp_path) for a in argv], message.format(tmp=tmp_path)
    done = subprocess.run(["bash", str(REPO / "tools" / "gpu_check.sh"), *argv], capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == "", done
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"gpu_check.sh: error: {message}") and line.endswith("; see tools/gpu_check.sh --help"), line
    assert not (tmp_path / "out").exists()  # refused before any folder was made


def _single_valued_options(parser):
    """(parser, action) for every option of ``parser`` and its subcommands' that takes one
    value and is not meant to repeat."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from _single_valued_options(sub)
        elif action.option_strings and isinstance(action, argparse._StoreAction):
            yield parser, action


def _every_parser():
    from pipeline.cli import _parser
    from pipeline.stages import STAGES

    yield "crild", _parser()
    for name in STAGES:
        yield name, stage_argparser(name)


def test_every_option_that_takes_a_value_is_refused_when_given_twice(capsys):
    """argparse keeps an option's last value, so ``stage1_teacher.py --config a.yaml --config
    b.yaml`` trained on b.yaml and ``crild study --max-runs 1 --max-runs 9`` ran nine cells,
    without a word. Each such option of crild's command and stage scripts, given twice with
    values argparse accepts, is one line naming both."""
    checked = 0
    for _, parser in _every_parser():
        for owner, action in _single_valued_options(parser):
            first, second = (action.choices[0], action.choices[-1]) if action.choices else ("5", "7")
            option = action.option_strings[-1]
            argv = [*_prefix(parser, owner), option, str(first), option, str(second)]
            with pytest.raises(SystemExit) as done:
                parser.parse_known_args(argv)
            err = capsys.readouterr().err
            assert done.value.code == 2 and err.count("\n") == 1, (argv, err)
            assert f"error: {option} is given twice ({option} {first} and {option} {second}); give it once" in err, err
            checked += 1
    assert checked >= 10  # --config of every command and stage script, --stage, --max-runs, --jobs, --study
    args, _ = stage_argparser("distill").parse_known_args(["--config", "x.yaml", "--stage", "baseline"])
    assert (args.config, args.stage) == ("x.yaml", "baseline") and not hasattr(args, "_options_given")


def _prefix(parser, owner) -> list[str]:
    """The subcommand that reaches ``owner`` from ``parser`` (nothing where it is ``parser``)."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if sub is owner:
                    return [name]
    return []
