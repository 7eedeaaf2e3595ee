"""The configuration machinery: help on every key, duplicate YAML keys refused, finite
numbers and ranges from the schema, one-line messages with the dotted key."""
import pytest

from pipeline.config import RunConfig, from_dict, load_config
from pipeline.errors import UserError
from pipeline.schema.explain import explain, explain_rows


def test_every_setting_has_help_and_explain_prints_it():
    rows = explain_rows(RunConfig)
    keys = {key for key, *_ in rows}
    assert {"seed", "stages.distill.consistency.weight", "stages.distill.kd.eval_every",
            "task.columns.text_a"} <= keys
    leaves = [(key, help_) for key, type_, default, help_ in rows if type_ != "section"]
    assert len(leaves) > 90 and all(help_ for _, help_ in leaves), [k for k, h in leaves if not h]
    text = explain(RunConfig)
    # a section's defaults are its own: the KD phase evaluates every 50 steps, the teacher every epoch
    assert "stages.distill.kd.eval_every" in text and "(default 50)" in text
    assert "a ratio in [0, 1) (default 0.0)" in text


def test_duplicate_keys_are_refused_with_both_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("seed: 1\nstages:\n  teacher: {epochs: 1}\nseed: 2\n")
    with pytest.raises(UserError, match=r"dup.yaml: duplicate key 'seed' on lines 1 and 4"):
        load_config(path)
    path.write_text("stages:\n  teacher:\n    epochs: 1\n  teacher:\n    epochs: 2\n")
    with pytest.raises(UserError, match=r"duplicate key 'teacher' on lines 2 and 4"):
        load_config(path)


def test_yaml_reads_json_types_only(tmp_path):
    """Text that YAML 1.1 reads as a date stays text (a folder named for a date is a path, a
    seed written as one is a wrong type, not a traceback), and a tag asking for bytes, a set
    or a date is refused at its line, in a file and in an override."""
    path = tmp_path / "run.yaml"
    path.write_text("output_dir: 2024-01-01\n")
    assert str(load_config(path).output_dir).endswith("2024-01-01")
    path.write_text("seed: 2024-01-01\n")
    with pytest.raises(UserError, match=r"^.*run.yaml: seed: expected an integer, got '2024-01-01' \(str\)$"):
        load_config(path)
    for tag, made in [("set {a, b}", "a set"), ("binary aGVsbG8=", "bytes"), ("timestamp 2024-01-01", "a date")]:
        path.write_text(f"seed: 1\noutput_dir: !!{tag}\n")
        with pytest.raises(UserError, match=rf"run.yaml: line 2: tag !!{tag.split()[0]} makes {made}, which no setting takes"):
            load_config(path)
    path.write_text("seed: 1\n")
    with pytest.raises(UserError, match=r"^override 'output_dir=...': tag !!set makes a set"):
        load_config(path, ["output_dir=!!set {a}"])
    with pytest.raises(UserError, match=r"seed: expected an integer, got '2024-01-01' \(str\)"):
        load_config(path, ["seed=2024-01-01"])


@pytest.mark.parametrize("raw,message", [
    ({"stages": {"teacher": {"learning_rate": float("nan")}}},
     "stages.teacher.learning_rate: expected a positive number, got nan"),
    ({"stages": {"teacher": {"weight_decay": float("inf")}}},
     "stages.teacher.weight_decay: expected a number >= 0, got inf"),
    ({"stages": {"teacher": {"warmup_ratio": -0.1}}}, "stages.teacher.warmup_ratio: expected a ratio in [0, 1], got -0.1"),
    ({"seed": -1}, "seed: expected a seed in [0, 4294967295], got -1"),
    ({"seed": 2**32}, "seed: expected a seed in [0, 4294967295], got 4294967296"),
    ({"stages": {"distill": {"supplementary": [{"ratio": 0}]}}},
     "stages.distill.supplementary[0].ratio: expected a positive number, got 0"),
    ({"stages": {"distill": {"consistency": {"target": "emma"}}}},
     "stages.distill.consistency.target: expected clean, clean_no_dropout or ema, got 'emma'; did you mean 'ema'?"),
    ({"student": {"init": "random"}}, "student.random_init: required when student.init is 'random'"),
    ({"pipeline": ["teacher", 3]}, "pipeline[1]: expected a string, got 3 (int)"),
    ({"stages": {"distill": {"kd_terms": {"ce": -1}}}}, "stages.distill.kd_terms.ce: expected a number >= 0, got -1"),
])
def test_values_out_of_range_name_the_key_and_what_was_expected(raw, message):
    with pytest.raises(UserError) as err:
        from_dict(raw, "run.yaml")
    assert str(err.value) == f"run.yaml: {message}"


def test_a_section_with_nothing_under_it_means_its_defaults(tmp_path):
    """``teacher:`` with every key commented out is YAML's null: the defaults, as {} is; a
    section that may be absent as a whole keeps null as none."""
    from pipeline.config import load_config

    path = tmp_path / "run.yaml"
    path.write_text("task:\n  # name: snli\nstages:\n  teacher:\n    # epochs: 1\n  distill:\n    kd:\n"
                    "teacher:\n  random_init:\n")
    cfg = load_config(str(path), [])
    default = load_config(str(_write(tmp_path / "defaults.yaml", "{}")), [])
    assert (cfg.task, cfg.stages.teacher, cfg.stages.distill.kd) == \
        (default.task, default.stages.teacher, default.stages.distill.kd)
    assert cfg.teacher.random_init is None
    listed = load_config(str(_write(tmp_path / "listed.yaml", "stages:\n  distill:\n    supplementary: [null]\n")),
                         [])
    assert listed.stages.distill.supplementary[0].task.name == "snli"  # an entry with nothing set: the defaults


def _write(path, text):
    path.write_text(text)
    return path


def test_a_section_given_in_part_keeps_its_own_defaults_for_the_rest():
    """The KD phase trains with batch 16 and lr 3e-5 by default: setting its epochs alone must
    not drop it to the generic training section's batch 32 and lr 2e-5."""
    default = from_dict({}).stages.distill
    kd = from_dict({"stages": {"distill": {"kd": {"epochs": 2}}}}).stages.distill.kd
    assert kd == default.kd.model_copy(update={"epochs": 2})
    ild = from_dict({"stages": {"distill": {"ild": {"batch_size": 8}}}}).stages.distill.ild
    assert (ild.epochs, ild.learning_rate, ild.batch_size) == (default.ild.epochs, default.ild.learning_rate, 8)
    supplement = from_dict({"stages": {"distill": {"supplementary": [{"task": {"max_length": 64}, "ratio": 1.0}]}}})
    assert supplement.stages.distill.supplementary[0].task.name == "snli"  # the supplement's default task
