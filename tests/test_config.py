"""Configuration: typed validation, helpful errors, overrides."""
import re
from pathlib import Path

import pytest
import yaml
from helpers import REPO
from hypothesis import given
from hypothesis import strategies as st

from pipeline.config import RunConfig, from_dict, load_config, stage_config
from pipeline.errors import UserError
from pipeline.schema.hashing import dump_yaml
from pipeline.stages import STAGES


def write(tmp_path: Path, data) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


def test_defaults_and_nested_values(tmp_path):
    cfg = load_config(write(tmp_path, {"seed": 3, "stages": {"teacher": {"epochs": 5}}}))
    assert isinstance(cfg, RunConfig)
    assert cfg.seed == 3 and cfg.stages.teacher.epochs == 5
    assert cfg.stages.teacher.batch_size == 32  # default filled in
    assert cfg.task.name == "rotten_tomatoes"


def test_misspelled_key_names_key_and_suggestion(tmp_path):
    p = write(tmp_path, {"stages": {"teacher": {"learnig_rate": 1e-4}}})
    with pytest.raises(UserError) as err:
        load_config(p)
    msg = str(err.value)
    assert str(p) in msg and "stages.teacher.learnig_rate" in msg and "did you mean 'learning_rate'" in msg


def test_unknown_top_level_key_without_near_match_lists_valid_keys(tmp_path):
    with pytest.raises(UserError, match="unknown key 'zzz'.*valid keys: output_dir"):
        load_config(write(tmp_path, {"zzz": 1}))


@pytest.mark.parametrize("key,value,expected", [
    (("stages", "teacher", "epochs"), "three", "expected an integer"),
    (("stages", "teacher", "learning_rate"), "fast", "expected a number"),
    (("task", "max_length"), 12.5, "expected an integer"),
    (("stages", "teacher", "group_by_length"), "yes", "expected true or false"),
    (("task",), [1, 2], "expected a mapping"),
])
def test_wrong_type_names_expected_type(tmp_path, key, value, expected):
    raw: dict = {}
    node = raw
    for k in key[:-1]:
        node = node.setdefault(k, {})
    node[key[-1]] = value
    with pytest.raises(UserError) as err:
        load_config(write(tmp_path, raw))
    assert expected in str(err.value) and ".".join(key) in str(err.value)


def test_int_is_accepted_for_float(tmp_path):
    cfg = load_config(write(tmp_path, {"stages": {"teacher": {"learning_rate": 1}}}))
    assert cfg.stages.teacher.learning_rate == 1.0 and isinstance(cfg.stages.teacher.learning_rate, float)


def test_missing_file(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="nope.yaml: config file not found$"):
        load_config("nope.yaml")
    monkeypatch.chdir(tmp_path)  # away from the clone: one of crild's own files is pointed to, not read in its place
    with pytest.raises(UserError) as err:
        load_config("jobs/demo.yaml")
    assert str(err.value) == (f"jobs/demo.yaml: config file not found here; crild's own jobs/demo.yaml is "
                              f"{REPO / 'jobs' / 'demo.yaml'}")


def test_invalid_yaml_names_line(tmp_path):
    with pytest.raises(UserError, match=r"line \d+ is not valid YAML"):
        load_config(write(tmp_path, "seed: 1\nstages: {a: 1\nb: [\n"))


def test_overrides_are_typed_and_validated(tmp_path):
    p = write(tmp_path, {"seed": 1})
    cfg = load_config(p, ["stages.teacher.epochs=7", "task.label_noise=0.3", "task.name=snli"])
    assert cfg.stages.teacher.epochs == 7 and cfg.task.label_noise == 0.3 and cfg.task.name == "snli"
    with pytest.raises(UserError, match="did you mean 'epochs'"):
        load_config(p, ["stages.teacher.epoch=7"])
    with pytest.raises(UserError, match="expected section.key=value"):
        load_config(p, ["stages.teacher.epochs"])


@given(blank=st.text(alphabet=" \t", max_size=4), key=st.sampled_from(["output_dir", "seed", "teacher.model"]))
def test_a_blank_override_is_refused_as_written_not_read_as_null(tmp_path_factory, blank, key):
    """``output_dir= `` is a slip: the value as written is refused, where YAML would read it as
    null and the message would say 'got null' (or a key that may be null would take its default)."""
    with pytest.raises(UserError) as err:
        load_config(write(tmp_path_factory.mktemp("c"), {}), [f"{key}={blank}"])
    assert str(err.value).startswith(f"override '{key}=...': {key}: expected ") and f"got {blank!r}" in str(err.value)


@pytest.mark.parametrize("in_file, overrides, blamed", [
    ({"stages": {"teacher": {"epochs": "two"}}}, ["seed=3"], "file"),  # another key overridden
    ({"stages": {"teacher": {"epochs": "two"}}}, ["stages.teacher.epochs=2"], None),  # the override replaces it
    ({}, ["stages.teacher.epochs=two"], "stages.teacher.epochs"),
    ({}, ["stages.teacher={epochs: two}"], "stages.teacher"),  # a section above the key
    ({}, ["stages.teacher.epochs=two", "stages.teacher.epochs=three"], "stages.teacher.epochs"),
    ({"stages": {"teacher": {"epochs": 2}}}, ["stages.teacher.batch_size=1", "stages.teacher.colour=red"],
     "stages.teacher.colour"),
    # a section whose keys are at odds, one from the file and one from an override: both named
    ({"task": {"name": "sst2"}}, ["task.labels=[a,b]", "task.max_length=12"], "file with task.labels"),
    # ... or the key the section's check blames, which its message names only as task.labels
    ({"task": {"name": "mine", "labels": ["a", "b"], "data_dir": "d"}}, ["task.labels=[]", "seed=3"],
     "file with task.labels"),
    # ... and only an override whose key the message names: another key of the section is not the cause
    ({"stages": {"distill": {"supplementary": [{"task": {"name": "snli"}, "ratio": 1.0}]}}},
     ["stages.distill.preset=kd", "stages.distill.output=x"], "file"),
    ({"task": {"name": "sst2"}, "stages": {"teacher": {"epochs": 2}}}, ["seed=3"], None),
])
def test_an_error_is_placed_where_its_value_came_from(tmp_path, in_file, overrides, blamed):
    """A bad value set on the command line is the override's, not the file's (which does not
    hold it); a bad value in the file is the file's, whatever else is overridden."""
    p = write(tmp_path, in_file)
    if blamed is None:
        assert load_config(p, overrides).stages.teacher.epochs == 2
        return
    with pytest.raises(UserError) as err:
        load_config(p, overrides)
    start = {"file": f"{p}: ", "file with task.labels": f"{p} with override 'task.labels=...': task.labels: "}
    assert str(err.value).startswith(start.get(blamed, f"override '{blamed}=...': ")), str(err.value)


def test_unknown_task_suggests_nearest():
    with pytest.raises(UserError, match="unknown task 'sst-3'.*did you mean 'sst2'"):
        from_dict({"task": {"name": "sst-3"}})


@pytest.mark.parametrize("raw,fragment", [
    ({"task": {"label_noise": 1.5}}, "task.label_noise"),
    ({"task": {"imbalance_ratio": 0.5}}, "task.imbalance_ratio"),
    ({"stages": {"teacher": {"batch_size": 0}}}, "stages.teacher.batch_size"),
    ({"pipeline": ["teacher", "evalute"]}, "did you mean 'evaluate'"),
    ({"student": {"init": "pkd"}}, "student.init"),
    ({"stages": {"distill": {"supplementary": [{"task": {"name": "snli"}}, {"task": {"name": "snli"}}]}}},
     "stages.distill.supplementary: [1] is the same as [0]; expected each supplementary dataset once"),
    ({"stages": {"distill": {"layer_map": "pairs", "layer_pairs": [[1, 2], [2, 4], [1, 2]]}}},
     "stages.distill.layer_pairs: [1, 2] is listed twice; expected each layer pair once"),
])
def test_semantic_checks(raw, fragment):
    with pytest.raises(UserError, match=re.escape(fragment)):
        from_dict(raw)


def test_resolved_yaml_round_trips(tmp_path):
    cfg = from_dict({"seed": 5, "teacher": {"random_init": {"num_layers": 3}}})
    again = load_config(write(tmp_path, dump_yaml(cfg)))
    assert again == cfg and again.teacher.random_init.num_layers == 3


def test_example_jobs_are_valid():
    root = Path(__file__).resolve().parent.parent / "jobs"
    for path in root.glob("*.yaml"):
        load_config(path)
    from pipeline.study.cells import cell_config, cells
    from pipeline.study.spec import load_study

    for path in (root / "studies").glob("*.yaml"):  # study files and every run they would start
        spec = load_study(str(path))
        assert all(cell_config(spec, c) for c in cells(spec))


def test_exponent_without_a_dot_is_a_number_not_a_string():
    # YAML 1.1 (PyYAML) reads 2e-4 as a string; users write it anyway, in files and overrides
    cfg = from_dict({"stages": {"teacher": {"learning_rate": "2e-4"}}},
                    overrides=["stages.distill.kd.learning_rate=1E-3"])
    assert cfg.stages.teacher.learning_rate == 2e-4 and cfg.stages.distill.kd.learning_rate == 1e-3
    with pytest.raises(UserError, match="expected a number, got 'fast'"):
        from_dict({"stages": {"teacher": {"learning_rate": "fast"}}})


def test_fingerprints_ignore_options_left_at_their_defaults():
    """A new option whose default keeps the old behaviour must not invalidate finished stages
    and checkpoints: hashes cover only the settings that differ from the defaults."""
    from pipeline.schema.hashing import config_hash, settings_dict

    base = from_dict({"stages": {"teacher": {"epochs": 2}}})
    explicit = from_dict({"stages": {"teacher": {"epochs": 2, "on_nonfinite": "stop", "eval_train_examples": 0}}})
    assert settings_dict(base.stages.teacher) == {"epochs": 2}
    assert config_hash(base) == config_hash(explicit)
    changed = from_dict({"stages": {"teacher": {"epochs": 2, "on_nonfinite": "skip"}}})
    assert config_hash(changed) != config_hash(base)


def test_zero_bucket_sizes_follow_the_model_width():
    """"auto" ZeRO buckets are sized from the hidden size; DeepSpeed's own 5e8-element reduce
    bucket would be a 1 GB buffer beside a 130 MB student."""
    from pipeline.config import TrainConfig
    from pipeline.training.ds_config import build_ds_config

    cfg = build_ds_config("ds_configs/zero3_bf16.json", TrainConfig(), 2, 100, "test", "teacher", hidden_size=768)
    zero = cfg["zero_optimization"]
    assert zero["reduce_bucket_size"] == 768 ** 2
    assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 768 ** 2)
    assert zero["stage3_param_persistence_threshold"] == 7680
    with pytest.raises(UserError, match="reduce_bucket_size is \"auto\""):
        build_ds_config("ds_configs/zero3_bf16.json", TrainConfig(), 2, 100, "test", "teacher")


def test_baseline_section_replaces_the_kd_settings_of_the_baseline_stage_only():
    """stages.baseline gives the no-teacher baseline its own training (e.g. 3 epochs on the
    plain data while the student's KD phase runs 1 epoch on augmented data); keys it leaves
    unset keep the student's, and the distill stage does not depend on it."""
    from pipeline.config import stage_config
    from pipeline.stages import stage_fingerprint

    raw = {"pipeline": ["teacher", "distill", "baseline"],
           "stages": {"distill": {"kd": {"epochs": 1, "learning_rate": 1e-4, "batch_size": 16}}}}
    plain = from_dict(raw)
    own = from_dict(raw, overrides=["stages.baseline.epochs=3", "stages.baseline.learning_rate=5e-5"])
    kd = stage_config(own, "baseline").stages.distill.kd
    assert (kd.epochs, kd.learning_rate, kd.batch_size) == (3, 5e-5, 16)
    assert stage_config(plain, "baseline").stages.distill.kd == plain.stages.distill.kd
    assert own.stages.distill.kd == plain.stages.distill.kd  # the student's own phase is untouched
    assert stage_fingerprint(own, "distill") == stage_fingerprint(plain, "distill")
    assert stage_fingerprint(stage_config(own, "baseline"), "baseline") != \
        stage_fingerprint(stage_config(plain, "baseline"), "baseline")
    for override, message in [("stages.baseline.epochs=0", "stages.baseline.epochs: expected a positive integer"),
                              ("stages.baseline.epoch=2", "unknown key 'stages.baseline.epoch'"),
                              ("stages.baseline.on_nonfinite=x", "stages.baseline.on_nonfinite: expected stop or skip")]:
        with pytest.raises(UserError, match=message):
            from_dict(raw, overrides=[override])
    # the student's mixup and consistency settings are not the baseline's (it has no ILD phase to mix)
    mixed = from_dict(raw, overrides=["stages.distill.preset=l-ild", "stages.distill.mixup.enabled=true",
                                      "stages.distill.consistency.weight=1.0"])
    baseline = stage_config(mixed, "baseline").stages.distill
    assert baseline.preset == "finetune" and baseline.mixup.enabled is None and baseline.consistency.weight is None


def test_the_distill_script_runs_the_baseline_with_the_same_configuration_crild_run_gives_it(tmp_path, monkeypatch):
    """``stage3_distill.py --stage baseline`` (what ``crild run`` launches) and ``crild
    status`` both get their configuration from ``stage_config``: one definition of the
    baseline, however it is started."""
    from pipeline.config import stage_config
    from pipeline.launch.command import stage_command
    from pipeline.stage_cli import stage_main

    monkeypatch.delenv("CRILD_RUN_LOCK", raising=False)
    path = tmp_path / "run.yaml"
    path.write_text(dump_yaml({"output_dir": str(tmp_path / "out"), "pipeline": ["teacher", "distill", "baseline"],
                               "stages": {"distill": {"kd": {"epochs": 1}}, "baseline": {"epochs": 3}}}))
    expected = stage_config(load_config(path), "baseline")
    assert stage_command(expected, "baseline", str(path), [])[-2:] == ["--stage", "baseline"]
    seen = []
    for argv, wanted in ((["--stage", "baseline"], expected), ([], load_config(path))):
        with pytest.raises(SystemExit) as exit_:
            stage_main(lambda cfg: seen.append(cfg) or 0, "distill", ["--config", str(path), *argv])
        assert exit_.value.code == 0 and seen.pop() == wanted
    assert (expected.stages.distill.kd.epochs, expected.stages.distill.output, expected.pipeline) == \
        (3, "student_finetuned", ["teacher", "distill", "baseline"])
    with pytest.raises(SystemExit) as exit_:  # the teacher's script runs no baseline
        stage_main(lambda cfg: 0, "teacher", ["--config", str(path), "--stage", "baseline"])
    assert exit_.value.code == 2


def test_only_stages_run_in_the_pipeline_order_whatever_order_they_were_given():
    from pipeline.stages import STAGES, in_running_order

    assert in_running_order(["export", "evaluate", "teacher"]) == ["teacher", "evaluate", "export"]
    assert in_running_order(list(reversed(STAGES))) == list(STAGES)


def test_paths_starting_with_a_tilde_mean_the_home_folder(monkeypatch, tmp_path):
    """As in a shell: output_dir: ~/runs/x once made a folder named '~' wherever crild ran."""
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = from_dict({"output_dir": "~/runs/x", "task": {"data_dir": "~/data"},
                     "stages": {"evaluate": {"models": ["~/a", "b"]}, "distill": {"teacher_model": "~/t"}}})
    assert cfg.output_dir == str(tmp_path / "runs" / "x") and cfg.task.data_dir == str(tmp_path / "data")
    assert cfg.stages.evaluate.models == [str(tmp_path / "a"), "b"]
    assert cfg.stages.distill.teacher_model == str(tmp_path / "t")
    assert from_dict({"teacher": {"model": "all-MiniLM-L6-v2"}}).teacher.model == "all-MiniLM-L6-v2"  # an alias


def test_paths_name_environment_variables_as_a_shell_does(monkeypatch, tmp_path):
    """``output_dir: $SCRATCH/crild/run1`` made a folder named '$SCRATCH' under the working
    directory; an unset or empty variable is refused where a shell would make '/crild/run1'."""
    monkeypatch.setenv("SCRATCH", str(tmp_path / "scratch"))
    monkeypatch.setenv("EMPTY", "")
    monkeypatch.delenv("NOT_SET_HERE", raising=False)
    cfg = from_dict({"output_dir": "$SCRATCH/runs/x", "task": {"data_dir": "${SCRATCH}/data"},
                     "stages": {"evaluate": {"models": ["$SCRATCH/a", "b$"]}}})
    assert cfg.output_dir == str(tmp_path / "scratch" / "runs" / "x")
    assert cfg.task.data_dir == str(tmp_path / "scratch" / "data")
    assert cfg.stages.evaluate.models == [str(tmp_path / "scratch" / "a"), "b$"]  # a '$' before no name stays
    for name, state in (("NOT_SET_HERE", "not set"), ("EMPTY", "empty")):
        with pytest.raises(UserError) as err:
            from_dict({"output_dir": f"${name}/run1"}, "run.yaml")
        assert str(err.value) == (f"run.yaml: output_dir: expected a file or folder path, got '${name}/run1', whose "
                                  f"environment variable {name} is {state} here; set it, or write the path out")


def test_a_stage_configuration_knows_its_stage():
    """``stage_config`` names the stage: stage3_distill.py runs distill and the baseline alike,
    and says which one it ran; the run's own configuration names none."""
    cfg = from_dict({"pipeline": ["teacher", "distill", "baseline", "evaluate"]})
    assert cfg.stage is None
    for name in STAGES:
        stage_cfg = stage_config(cfg, name)
        assert stage_cfg.stage == name and cfg.stage is None
        assert stage_cfg.source == cfg.source


@given(text_a=st.sampled_from([None, "a", "b", "label", "sentence", "sentence1"]),
       text_b=st.sampled_from([None, "a", "b", "label", "sentence2"]),
       label=st.sampled_from([None, "a", "b", "label", "sentence", "sentence1", "sentence2"]),
       pair=st.booleans())
def test_no_column_is_read_as_two_things(text_a, text_b, label, pair):
    """The columns a task reads (as set, or the defaults sentence / sentence1, sentence2,
    label) are distinct wherever one of two is set: 'task.columns.text_a: label' read the label
    as the text. A clash is refused naming the key set; anything else validates."""
    columns = {k: v for k, v in (("text_a", text_a), ("text_b", text_b if pair else None), ("label", label)) if v}
    raw = {"task": {"name": "mine", "labels": ["x", "y"], "pair": pair, "data_dir": "d", "columns": columns}}
    effective = [columns.get("text_a") or ("sentence1" if pair else "sentence"), columns.get("label") or "label"] + \
        ([columns.get("text_b") or "sentence2"] if pair else [])
    if len(set(effective)) == len(effective):
        assert from_dict(raw).task.columns.model_dump(exclude_none=True) == columns
        return
    with pytest.raises(UserError) as err:
        from_dict(raw)
    assert re.fullmatch(r"<config>: task\.columns\.(text_a|text_b|label): '[^']+' is both columns\.\w+( \(its default\))? "
                        r"and columns\.\w+( \(its default\))?; expected a column for each", str(err.value)), str(err.value)
    blamed = str(err.value).split(": ")[1].rpartition(".")[2]
    assert blamed in columns  # the key the user set, never a default


@pytest.mark.parametrize("value", ["", " ", "\t"])
def test_a_blank_column_name_is_refused_not_read_as_the_default(value):
    with pytest.raises(UserError, match=r"task\.columns\.text_a: expected a column name, got .* \(leave the key out "
                                        r"for the task's default\)$"):
        from_dict({"task": {"name": "mine", "labels": ["x", "y"], "data_dir": "d", "columns": {"text_a": value}}})


@pytest.mark.parametrize("raw, said", [
    ({"stages": {"teacher": {"max_length": 64}}}, "unknown key 'stages.teacher.max_length'; 'max_length' is a key of "
     "another section: task.max_length or stages.distill.supplementary[i].task.max_length"),
    ({"stages": {"distill": {"epochs": 3}}}, "unknown key 'stages.distill.epochs'; 'epochs' is a key of another "
     "section: stages.distill.ild_supplementary.epochs or stages.distill.ild.epochs or stages.distill.kd.epochs (and 2 "
     "more)"),
    ({"epochs": 3}, "unknown key 'epochs'; 'epochs' is a key of another section: stages.teacher.epochs or "
     "stages.baseline.epochs or stages.distill.ild_supplementary.epochs (and 2 more)"),
    ({"stages": {"teacher": {"epoch": 3}}}, "unknown key 'stages.teacher.epoch'; did you mean 'epochs'?")])
def test_a_key_put_in_the_wrong_section_names_where_it_belongs(raw, said):
    """A key of another section (max_length under stages.teacher, epochs under stages.distill
    whose phases have it) is named where it belongs, the sections inside the one it was put in
    first; a misspelling still gets the nearest name."""
    with pytest.raises(UserError) as err:
        from_dict(raw)
    assert str(err.value) == f"<config>: {said}"


@pytest.mark.parametrize("override, said", [
    ("task.labels=neg,pos", "task.labels: expected a list, got 'neg,pos' (str); YAML writes a list in brackets: "
                            "[neg, pos]"),
    ("pipeline=teacher", "pipeline: expected a list, got 'teacher' (str); YAML writes a list in brackets: [teacher]"),
    ("task.labels=3", "task.labels: expected a list, got 3 (int)")])
def test_a_list_written_without_brackets_says_how_to_write_it(tmp_path, override, said):
    with pytest.raises(UserError) as err:
        load_config(write(tmp_path, {"task": {"name": "mine", "data_dir": "d"}}), [override])
    assert str(err.value) == f"override '{override.partition('=')[0]}=...': {said}"


def test_the_fix_named_for_supplementary_data_no_phase_reads_is_accepted(tmp_path):
    """Switching the demo's file to a preset without the supplementary phase is refused with
    the override that fixes it, and that override is accepted."""
    demo = REPO / "jobs" / "demo.yaml"
    with pytest.raises(UserError, match=re.escape("stages.distill.supplementary=[] on the command line")):
        load_config(demo, ["stages.distill.preset=kd"])
    cfg = load_config(demo, ["stages.distill.preset=kd", "stages.distill.supplementary=[]"])
    assert cfg.stages.distill.supplementary == [] and cfg.stages.distill.preset == "kd"
