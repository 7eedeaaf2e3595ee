"""A key set other than its default that the key beside it leaves unused is refused in one
line (``num_layers: 6`` beside ``init: random`` trained random_init's shape without a word),
and accepted where that key reads it. Every rule of every section is tried with every value
of the key that decides it, found by walking the schema, so a new rule is tested when it is
declared."""
import typing
from typing import Literal

import pytest

from pipeline.config import RunConfig, from_dict, stage_config
from pipeline.errors import UserError
from pipeline.schema.explain import explain_rows
from pipeline.schema.hashing import to_dict
from pipeline.schema.types import Strict, yaml_text
from pipeline.stages import STAGES

# a valid value other than the default, for every key a rule governs
OTHER_VALUE = {"num_layers": 6, "random_init": {"num_layers": 2}, "max_nonfinite_skips": 3, "int8_max_drop": 0.05,
               "batch1_examples": 5, "batch32_batches": 2, "warmup": 1, "alpha": 0.4, "ema_decay": 0.9}


def _strip_optional(annotation):
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Union and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return annotation, False


def sections(model=RunConfig, path=()):
    """(dotted path, section model) for every section under the run's, lists left out (no
    list's entries have rules)."""
    yield path, model
    for name, field in model.model_fields.items():
        inner, _ = _strip_optional(field.annotation)
        if isinstance(inner, type) and issubclass(inner, Strict):
            yield from sections(inner, path + (name,))


def choices(model, key) -> tuple:
    """Every value the deciding key may take."""
    inner, optional = _strip_optional(model.model_fields[key].annotation)
    values = typing.get_args(inner) if typing.get_origin(inner) is Literal else (True, False) if inner is bool else ()
    assert values, (model.__name__, key, inner)  # a decider is a choice or a switch
    return values + ((None,) if optional else ())


RULES = [(path, model, key, decider, reading) for path, model in sections()
         for key, (decider, reading) in model.read_only_with.items()]
CASES = [(".".join(path), model, key, decider, value, value in reading)
         for path, model, key, decider, reading in RULES for value in choices(model, decider)]


def nested(path: str, section: dict) -> dict:
    for name in reversed(path.split(".")):
        section = {name: section}
    return section


def section_with(path: str, decider, value, key, key_value) -> dict:
    section = {decider: value, key: key_value}
    if (decider, value) == ("init", "random") and key != "random_init":
        section["random_init"] = {}  # a random student needs its shape
    return nested(path, section)


def test_the_rules_are_found_and_each_has_a_value_to_try():
    found = {(path, key) for path, _, key, _, _ in RULES}
    assert {(("student",), "num_layers"), (("stages", "teacher"), "max_nonfinite_skips"),
            (("stages", "distill", "kd"), "max_nonfinite_skips"), (("stages", "distill", "consistency"), "ema_decay"),
            (("stages", "distill", "mixup"), "alpha"), (("stages", "export"), "int8_max_drop")} <= found
    assert {key for _, key in found} == set(OTHER_VALUE)
    # crild config --explain says when each is used
    help_ = {row[0]: row[3] for row in explain_rows(RunConfig)}
    for path, _, key, decider, reading in RULES:
        assert f"(used only with {decider}: {yaml_text(reading[0])}" in help_[".".join(path + (key,))]


@pytest.mark.parametrize("path,model,key,decider,value,read", CASES,
                         ids=[f"{p}.{k}-{d}={v}" for p, _, k, d, v, _ in CASES])
def test_a_key_is_refused_exactly_where_the_key_beside_it_leaves_it_unused(path, model, key, decider, value, read):
    raw = section_with(path, decider, value, key, OTHER_VALUE[key])
    if read:
        cfg = from_dict(raw)
        section = cfg
        for name in path.split("."):
            section = getattr(section, name)
        got = getattr(section, key)
        assert (got.model_dump(exclude_unset=True) if isinstance(got, Strict) else got) == OTHER_VALUE[key]
        return
    with pytest.raises(UserError) as err:
        from_dict(raw, "run.yaml")
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"run.yaml: {path}.{key}: ")
    assert f"used only with {decider}: " in line and line.endswith(f" or remove {key}")
    # its default is accepted, and the whole configuration, as crild config prints it, reads back
    default = model.model_fields[key].get_default(call_default_factory=True)
    cfg = from_dict(section_with(path, decider, value, key, default.model_dump() if default is not None and
                                 isinstance(default, Strict) else default))
    assert from_dict(to_dict(cfg)) == cfg
    for stage in STAGES:
        stage_config(cfg, stage)


def _kd(cfg, stage):
    kd = stage_config(cfg, stage).stages.distill.kd
    return kd.on_nonfinite, kd.max_nonfinite_skips


def test_the_baseline_keeps_the_kd_phase_s_keys_and_is_judged_by_the_decider_it_keeps():
    """stages.baseline's unset keys keep the KD phase's. A key the KD phase reads and the
    baseline's own decider leaves unread is not carried over (it was refused, naming the KD
    phase's key); the baseline's own key is judged by the decider the baseline ends with."""
    kd_skips = {"kd": {"on_nonfinite": "skip", "max_nonfinite_skips": 3}}
    cfg = from_dict({"stages": {"distill": kd_skips, "baseline": {"on_nonfinite": "stop"}}})
    assert _kd(cfg, "distill") == ("skip", 3) and _kd(cfg, "baseline") == ("stop", 10)
    cfg = from_dict({"stages": {"distill": kd_skips}})
    assert _kd(cfg, "baseline") == ("skip", 3)
    cfg = from_dict({"stages": {"distill": {"kd": {"on_nonfinite": "skip"}}, "baseline": {"max_nonfinite_skips": 4}}})
    assert _kd(cfg, "distill") == ("skip", 10) and _kd(cfg, "baseline") == ("skip", 4)
    for baseline in ({"max_nonfinite_skips": 4}, {"max_nonfinite_skips": 4, "on_nonfinite": "stop"}):
        with pytest.raises(UserError) as err:
            from_dict({"stages": {"baseline": baseline}}, "run.yaml")
        assert str(err.value).startswith("run.yaml: stages.baseline.max_nonfinite_skips: 4 is used only with "
                                         "on_nonfinite: skip, and on_nonfinite is stop")
    assert "(stages.distill.kd's, which the baseline keeps)" in str(
        pytest.raises(UserError, from_dict, {"stages": {"baseline": {"max_nonfinite_skips": 4}}}).value)
