"""`crild run` end to end with two ranks (deepspeed launcher, ZeRO-2, gloo): teacher,
CR-ILD with supplementary-task ILD, the no-teacher baseline and evaluation; then a second
run does no stage work."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from helpers import REPO, scalar_tags, tiny_run_config

pytestmark = pytest.mark.slow


def test_crild_run_two_ranks_all_stages_then_nothing_to_do(tmp_path, tiny_bert, sentiment_dir):
    small = {"batch_size": 8, "learning_rate": 1e-3, "log_every": 2, "checkpoint_every": 50}
    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir, epochs=1)
    other = shutil.copytree(sentiment_dir, tmp_path / "other")  # a supplement is never the target's own rows
    raw.update(num_ranks=2, deepspeed_config=str(REPO / "ds_configs" / "zero2_bf16.json"),
               pipeline=["teacher", "distill", "baseline", "evaluate"])
    raw["stages"]["distill"] = {
        "preset": "cr-ild",
        "supplementary": [{"task": {"name": "rotten_tomatoes", "data_dir": str(other)}, "ratio": 0.5}],
        "ild_supplementary": {"epochs": 1, **small}, "ild": {"epochs": 2, **small}, "kd": {"epochs": 1, **small}}
    raw["stages"]["baseline"] = {"epochs": 2}  # the baseline's own length; the rest as the student's KD phase
    raw["stages"]["evaluate"] = {"splits": ["dev", "test"]}
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "DS_ACCELERATOR"):
        env.pop(k, None)  # DS_ACCELERATOR as a user's shell has it: unset
    crild = [sys.executable, "-m", "pipeline.cli", "run", str(cfg_path)]
    proc = subprocess.run(crild, env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = tmp_path / "run"
    # stdout is the runner's lines and the evaluation table, none of DeepSpeed's (the accelerator
    # it guessed, an op "built successfully", a scheduler read "before it has started")
    table = proc.stdout.index("Evaluation on rotten_tomatoes")
    assert all(line.startswith("crild: ") for line in proc.stdout[:table].splitlines()), proc.stdout[:table]
    said = proc.stdout + proc.stderr  # stage3_distill.py runs both, and says which one saved what
    assert f"distill: saved {out / 'student'}\n" in said and f"baseline: saved {out / 'student_finetuned'}\n" in said

    tags = scalar_tags(out / "tensorboard" / "student")
    for phase in ("ild_supplementary", "ild"):
        for part in ("loss", "qkv_relation", "qkv_relation_weighted", "qkv_relation/q", "qkv_relation/k",
                     "qkv_relation/v", "consistency", "consistency_weighted", "consistency_weight", "lambda", "lr",
                     "grad_norm", "samples_per_s", "tokens_per_s"):
            assert f"{phase}/train/{part}" in tags, f"{phase}/train/{part}"
        assert max(v for _, v in tags[f"{phase}/train/consistency_weighted"]) > 0
        assert all(0.5 <= v <= 1.0 for _, v in tags[f"{phase}/train/lambda"])
    assert {"kd/train/logit_kd", "kd/train/logit_kd_weighted", "kd/eval/dev/accuracy"} <= set(tags)

    results = json.loads((out / "eval" / "results.json").read_text())["models"]
    assert set(results) == {"teacher", "student", "student_finetuned"}
    assert results["student"]["parameters"] < results["teacher"]["parameters"]
    assert "accuracy" in results["student"]["splits"]["test"]
    steps = {name: json.loads((out / name / "train_results.json").read_text())["phases"]["kd"]["optimizer_steps"]
             for name in ("student", "student_finetuned")}
    assert steps["student_finetuned"] == 2 * steps["student"] > 0

    again = subprocess.run(crild, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert again.returncode == 0, again.stderr[-3000:]
    lines = [line for line in again.stdout.splitlines() if line.startswith("crild:")]
    assert lines == [f"crild: {s}: complete for this configuration, skipped"
                     for s in ("teacher", "distill", "baseline", "evaluate")] + [
        f"crild: done: {out}: teacher/ student/ student_finetuned/ eval/; crild status {cfg_path} lists every stage"]
    assert proc.stdout.splitlines()[-1] == lines[-1]  # the first run ends with it too
