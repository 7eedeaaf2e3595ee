"""Keys set in stages.distill that the phases its preset resolves to never read: named in
one line by `crild config` and by the distill stage as it starts (said, not refused: a study
shares one base configuration across presets), never for keys left to their defaults, the
keys some phase reads, or the baseline's merged section."""
import pytest
import yaml
from helpers import tiny_run_config

from pipeline import stage3_distill
from pipeline.cli import main
from pipeline.config import from_dict, stage_config
from pipeline.distill.plan import unused_line, unused_settings
from pipeline.distill.presets import PRESETS
from pipeline.distill.terms import TERMS, unread_settings
from pipeline.training.stop import StopRequest


def distill(**section):
    return from_dict({"stages": {"distill": section}}).stages.distill


@pytest.mark.parametrize("section,unused", [
    ({"preset": "kd", "ild": {"epochs": 3}, "ild_supplementary": {"epochs": 1}},
     ["ild_supplementary (runs kd)", "ild (runs kd)"]),
    ({"preset": "kd", "ild_terms": {"hidden_mse": 1.0}}, ["ild_terms (runs kd, no ILD phase)"]),
    ({"preset": "cr-ild", "phases": ["ild"], "kd": {"epochs": 1}, "kd_terms": {"ce": 1.0}, "temperature": 3.0},
     ["kd (runs ild)", "kd_terms (runs ild)", "temperature (no phase has the logit_kd term)"]),
    ({"preset": "tinybert", "pkd_features": "sum"}, ["pkd_features (no phase has the pkd term)"]),
    ({"preset": "kd", "layer_map": "uniform", "relation_heads": 4, "layer_reduction": "sum"},
     ["layer_map (no term reads layers)", "layer_reduction (no term reads layers)",
      "relation_heads (no term reads layers)"]),
    ({"preset": "kd", "supplementary_mode": "mixed"}, ["supplementary_mode (no supplementary datasets)"]),
    ({"preset": "minilm", "mixup": {"alpha": 0.4}, "consistency": {"target": "ema", "ema_decay": 0.9}},
     ["mixup.alpha (no phase mixes)", "consistency.ema_decay (no phase has the consistency term)",
      "consistency.target (no phase has the consistency term)"]),
    ({"preset": "cr-ild", "consistency": {"weight": 0, "distance": "hidden"}},
     ["consistency.distance (no phase has the consistency term)"]),
    ({"preset": "finetune", "teacher_precision": "bf16", "temperature": 2.0},
     ["temperature (no phase has the logit_kd term)", "teacher_precision (nothing reads the teacher)"]),
])
def test_keys_no_phase_reads_are_named_with_why(section, unused):
    assert unused_settings(distill(**section)) == unused


@pytest.mark.parametrize("section", [
    {},  # defaults are never named, whatever the preset leaves unread
    *({"preset": name} for name in PRESETS),
    {"preset": "cr-ild", "ild": {"epochs": 2}, "kd": {"epochs": 2}, "temperature": 4.0, "relation_heads": 4,
     "layer_map": "uniform", "teacher_precision": "fp32", "kd_terms": {"ce": 0.5}, "ild_terms": {"hidden_mse": 1.0}},
    {"preset": "pkd", "pkd_features": "sum", "layer_map": "last", "kd": {"epochs": 1}},
    {"preset": "kd", "consistency": {"weight": 0}, "mixup": {"enabled": False}},
    {"preset": "cr-ild", "mixup": {"alpha": 0.4}, "consistency": {"target": "ema", "ema_decay": 0.9, "distance": "hidden"}},
    {"preset": "l-ild", "mixup": {"enabled": True, "alpha": 0.4}},
])
def test_keys_some_phase_reads_are_not_named(section):
    assert unused_settings(distill(**section)) == []


def test_crild_config_names_them_and_not_the_baselines_inherited_keys(tmp_path, tiny_bert, sentiment_dir, capsys):
    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
    raw["pipeline"] = ["teacher", "distill", "baseline"]
    raw["stages"]["distill"] = {"preset": "kd", "ild": {"epochs": 3}, "temperature": 3.0}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    main(["config", str(path)])
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("# stages.distill, as preset kd resolves it:")
    assert lines[start + 1:start + 4] == [
        "#   kd: loss 1 x logit_kd; reads the task's training set",
        "#   stages.distill: set but unused under preset kd: ild (runs kd)",
        "# stages.baseline, as preset finetune resolves it:"]
    # the baseline keeps the ild section and the temperature it inherits, and is not told of them
    assert sum("set but unused" in line for line in lines) == 1
    cfg = from_dict(raw)
    assert unused_line(stage_config(cfg, "baseline")) is None
    assert unused_line(stage_config(cfg, "distill")) == "stages.distill: set but unused under preset kd: ild (runs kd)"


def test_the_distill_stage_says_it_once_as_it_starts(tmp_path, tiny_bert, tiny_teacher, sentiment_dir, capsys):
    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
    small = {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "checkpoint_every": 50}
    raw["stages"]["distill"] = {"preset": "kd", "teacher_model": str(tiny_teacher), "kd": small, "ild": small,
                                "pkd_features": "sum"}
    assert stage3_distill.run(stage_config(from_dict(raw), "distill"), stop=StopRequest(install_handlers=False)) == 0
    said = capsys.readouterr()
    line = "stages.distill: set but unused under preset kd: ild (runs kd); pkd_features (no phase has the pkd term)"
    assert (said.out + said.err).count(line) == 1, said.out[-2000:]


def test_a_term_setting_is_unread_only_where_no_term_reads_it():
    """One helper answers for the phase fingerprints (presets.phase_settings) and for the
    named keys (plan.unused_settings): a setting is read by the one term that owns it."""
    assert unread_settings({"ce"}) == {"pkd_features": "pkd", "temperature": "logit_kd"}
    assert unread_settings({"logit_kd", "ce"}) == {"pkd_features": "pkd"}
    assert unread_settings(set(TERMS)) == {}
    owners = [s for term in TERMS.values() for s in term.settings]
    assert len(owners) == len(set(owners)), "a term alone reads its settings (Term.settings); unread_settings names one owner each"
