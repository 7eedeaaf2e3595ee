"""How often a run checkpoints and logs changes nothing it writes, so changing it neither
redoes a finished stage nor abandons an interrupted one's checkpoints; every other training
setting does change the output and makes it stale. Outputs and checkpoints written while
fingerprints still counted the bookkeeping settings stay valid."""
import json
import subprocess
import sys

import pytest
import yaml
from helpers import REPO, crild_env, tiny_run_config

from pipeline.config import RunConfig, TrainConfig, from_dict, stage_config
from pipeline.outputs.manifest import MANIFEST
from pipeline.schema.explain import explain_rows
from pipeline.schema.hashing import config_hash, settings_dict
from pipeline.stages import stage_fingerprint, stage_fingerprints
from pipeline.training.checkpointing import trajectory_keys

BOOKKEEPING = {"checkpoint_every", "checkpoint_minutes", "keep_checkpoints", "log_every"}
# a valid value other than the default, for every training setting
OTHER_VALUE = {
    "epochs": 5, "max_steps": 7, "batch_size": 3, "gradient_accumulation_steps": 2, "learning_rate": 1e-3,
    "weight_decay": 0.1, "warmup_ratio": 0.2, "max_grad_norm": 0.5, "eval_every": 9, "eval_batch_size": 8,
    "eval_train_examples": 16, "checkpoint_every": 7, "checkpoint_minutes": 30.0, "keep_checkpoints": 5, "log_every": 1,
    "group_by_length": False, "on_nonfinite": "skip", "max_nonfinite_skips": 3,
    "deepspeed_config": str(REPO / "ds_configs" / "zero2_bf16.json"),
}
# where a training section lives, and the stage whose output it makes
SECTIONS = [("teacher", ("teacher",), "teacher"), ("distill.ild", ("distill", "ild"), "distill"),
            ("distill.kd", ("distill", "kd"), "distill"), ("baseline", ("baseline",), "baseline")]


# what a setting needs beside it to be used at all (max_nonfinite_skips: on_nonfinite skip)
BESIDE = {key: {decider: reading[0]} for key, (decider, reading) in TrainConfig.read_only_with.items()}


def with_setting(path: tuple, key: str, value) -> dict:
    node = {**BESIDE.get(key, {}), key: value}
    for name in reversed(path):
        node = {name: node}
    return {"stages": node}


def test_every_training_setting_is_classified_and_explained():
    assert set(OTHER_VALUE) == set(TrainConfig.model_fields)  # a new setting must say whether it changes outputs
    for section in ("stages.teacher.", "stages.distill.kd.", "stages.baseline."):
        explained = [row for row in explain_rows(RunConfig) if row[0].startswith(section)]
        assert {row[0].rsplit(".", 1)[1] for row in explained if "(bookkeeping:" in row[3]} == BOOKKEEPING


@pytest.mark.parametrize("key", sorted(OTHER_VALUE))
@pytest.mark.parametrize("section,path,stage", SECTIONS, ids=[s for s, _, _ in SECTIONS])
def test_only_bookkeeping_settings_leave_fingerprints_and_checkpoint_keys_unchanged(section, path, stage, key):
    base = stage_config(from_dict(with_setting(path, key, TrainConfig.model_fields[key].default)), stage)
    changed = stage_config(from_dict(with_setting(path, key, OTHER_VALUE[key])), stage)
    same = key in BOOKKEEPING
    assert (stage_fingerprint(changed, stage) == stage_fingerprint(base, stage)) is same
    section = "teacher" if stage == "teacher" else "distill"
    keys = {name: trajectory_keys(c, section, {}) for name, c in (("base", base), ("changed", changed))}
    assert (keys["changed"][0] == keys["base"][0]) is same
    # checkpoints of earlier versions recorded the key of every setting: they still resume
    assert config_hash({"seed": changed.seed, "task": settings_dict(changed.task), "stage": section,
                        "settings": settings_dict(getattr(changed.stages, section))}) in keys["changed"]
    # what earlier versions recorded, which counted every setting, is still accepted
    legacy = stage_fingerprint(changed, stage, settings_dict)
    assert legacy in stage_fingerprints(changed, stage)
    assert (legacy == stage_fingerprint(base, stage, settings_dict)) is False


def test_a_run_without_bookkeeping_settings_keeps_its_fingerprint():
    """Outputs of runs that set no bookkeeping key record one fingerprint, as before."""
    cfg = from_dict({"stages": {"teacher": {"learning_rate": 1e-3}}})
    assert stage_fingerprints(cfg, "teacher") == (stage_fingerprint(cfg, "teacher", settings_dict),)


@pytest.mark.slow
def test_changing_how_often_a_run_checkpoints_and_logs_resumes_and_skips(tmp_path, tiny_bert, sentiment_dir):
    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)  # 96 examples, batches of 8: 24 steps
    raw["pipeline"] = ["teacher"]
    config = tmp_path / "run.yaml"

    def crild(*args, fault=None, **train):
        config.write_text(yaml.safe_dump({**raw, "stages": {"teacher": {**raw["stages"]["teacher"], **train}}}))
        env = {**crild_env(), **({"CRILD_FAULT": fault} if fault else {})}
        proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *args, str(config)], capture_output=True,
                              text=True, timeout=600, env=env, cwd=REPO)
        return proc.returncode, proc.stdout + proc.stderr

    code, _ = crild("run", fault="step:6")  # killed after micro-step 6; checkpoint_every 4 saved step 4
    assert code != 0
    code, out = crild("run", checkpoint_every=5, log_every=1, keep_checkpoints=3)
    assert code == 0, out[-2000:]
    assert "resuming at micro-step 4 of 24" in out and "moved them to" not in out
    code, out = crild("run", checkpoint_every=50, log_every=3)
    assert code == 0 and "teacher: complete for this configuration, skipped" in out
    code, out = crild("run", learning_rate=2e-3)  # a setting the weights depend on
    assert code == 0 and "skipped" not in out and "teacher: saved" in out

    # an output whose manifest records the fingerprint of a version that counted log_every
    cfg = from_dict(yaml.safe_load(config.read_text()) | {"stages": {"teacher": {**raw["stages"]["teacher"],
                                                                                 "learning_rate": 2e-3}}})
    manifest = tmp_path / "run" / "teacher" / MANIFEST
    recorded = json.loads(manifest.read_text())
    assert recorded["fingerprint"] == stage_fingerprint(cfg, "teacher")
    legacy = stage_fingerprint(cfg, "teacher", settings_dict)
    assert legacy != recorded["fingerprint"]  # the tiny config sets checkpoint_every and log_every
    manifest.write_text(json.dumps({**recorded, "fingerprint": legacy}))
    code, out = crild("status", learning_rate=2e-3)
    assert code == 0 and "teacher  complete" in out
