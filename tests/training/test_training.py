"""The teacher stage end to end on tiny models: exact mid-epoch resume, outputs that plain
transformers loads, TensorBoard tags, evaluation, and the 2-rank ZeRO-2 launcher path."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import REPO, scalar_tags, tiny_run_config
from safetensors.torch import load_file

from pipeline import stage1_teacher, stage4_evaluate
from pipeline.config import from_dict
from pipeline.errors import EXIT_PREEMPTED, UserError
from pipeline.outputs.manifest import is_complete
from pipeline.training.stop import StopRequest


def weights(run_dir: Path) -> dict:
    return load_file(str(run_dir / "teacher" / "model.safetensors"))


def test_resume_mid_epoch_gives_identical_weights(tmp_path, tiny_bert, sentiment_dir):
    # 96 examples / batch 8 = 12 micro-steps per epoch; accumulation 2 -> stop after 6 (mid-epoch 0)
    stage = {"gradient_accumulation_steps": 2}
    full = from_dict(tiny_run_config(tmp_path / "a", tiny_bert, sentiment_dir, **stage))
    assert stage1_teacher.run(full, stop=StopRequest(install_handlers=False)) == 0

    split = from_dict(tiny_run_config(tmp_path / "b", tiny_bert, sentiment_dir, **stage))
    code = stage1_teacher.run(split, stop=StopRequest(after_micro_steps=6, install_handlers=False))
    assert code == EXIT_PREEMPTED
    out_b = Path(split.output_dir)
    assert not (out_b / "teacher").exists()  # nothing that looks complete
    assert (out_b / "checkpoints" / "teacher" / "latest").read_text().strip() == "step00000003"
    assert stage1_teacher.run(split, stop=StopRequest(install_handlers=False)) == 0
    assert not (out_b / "checkpoints" / "teacher").exists()  # a finished stage never resumes: its checkpoints go
    assert not list((out_b / "tensorboard" / "teacher").glob("earlier-*"))  # a resumed run continues its curves

    wa, wb = weights(Path(full.output_dir)), weights(out_b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    res_a = json.loads((Path(full.output_dir) / "teacher" / "train_results.json").read_text())
    res_b = json.loads((out_b / "teacher" / "train_results.json").read_text())
    assert res_a["evals"] == res_b["evals"]


def test_teacher_learns_and_outputs_are_complete(tmp_path, tiny_bert, sentiment_dir):
    from transformers import AutoModelForSequenceClassification

    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir, epochs=6, learning_rate=3e-3, eval_train_examples=40)
    cfg = from_dict(raw)  # stages.evaluate.splits unset: every held-out split the data has
    assert stage1_teacher.run(cfg, stop=StopRequest(install_handlers=False)) == 0
    out = Path(cfg.output_dir)
    assert is_complete(out / "teacher")
    assert {"config.json", "model.safetensors", "tokenizer.json", "config.resolved.yaml",
            "train_results.json"} <= {p.name for p in (out / "teacher").iterdir()}
    model = AutoModelForSequenceClassification.from_pretrained(str(out / "teacher"))  # plain transformers
    assert model.config.id2label == {0: "rotten", 1: "fresh"}
    tags = scalar_tags(out / "tensorboard" / "teacher")
    for tag in ("teacher/train/loss", "teacher/train/lr", "teacher/train/grad_norm", "teacher/train/samples_per_s",
                "teacher/train/tokens_per_s", "teacher/eval/dev/accuracy", "teacher/eval/train/accuracy"):
        assert tag in tags, tag
    lrs = [v for _, v in tags["teacher/train/lr"]]
    assert max(lrs) > lrs[-1] > 0  # warmup then linear decay
    assert all(v > 0 for _, v in tags["teacher/train/grad_norm"])
    # the train-dev gap: the training subset is scored beside dev at every evaluation
    evals = json.loads((out / "teacher" / "train_results.json").read_text())["evals"]
    assert all("train/accuracy" in e and "dev/accuracy" in e for e in evals)
    assert evals[-1]["train/accuracy"] >= 0.9

    assert stage4_evaluate.run(cfg) == 0
    written = json.loads((out / "eval" / "results.json").read_text())
    results = written["models"]["teacher"]["splits"]
    assert results["test"]["accuracy"] >= 0.9  # the signal is one sentiment word
    assert min(results["test"]["predicted"].values()) > 0  # and it predicts both classes
    assert written["one_class"]["test"]["accuracy"] <= 0.75  # the best constant prediction, as a reference
    preds = (out / "eval" / "predictions" / "teacher" / "test.tsv").read_text().splitlines()
    assert preds[0] == "index\tprediction\tlabel" and len(preds) == 33
    assert set(results) == {"dev", "test"}

    import shutil  # a data folder without a test split: the default scores dev, not an error about 'test'

    dev_only = shutil.copytree(sentiment_dir, tmp_path / "dev-only")
    (dev_only / "test.jsonl").unlink()
    assert stage4_evaluate.run(from_dict({**raw, "task": {**raw["task"], "data_dir": str(dev_only)}})) == 0
    assert set(json.loads((out / "eval" / "results.json").read_text())["models"]["teacher"]["splits"]) == {"dev"}


@pytest.mark.parametrize("minutes,tags", [(1e-9, [1, 2, 3, 4, 5]), (60.0, [5])])
def test_checkpoint_minutes_saves_when_the_clock_says_so(tmp_path, tiny_bert, sentiment_dir, minutes, tags):
    """A timed checkpoint at every boundary once its minutes have passed (here: at once),
    between the step-count ones (here: none before the stop at micro-step 5)."""
    cfg = from_dict(tiny_run_config(tmp_path, tiny_bert, sentiment_dir, checkpoint_every=1000, keep_checkpoints=100,
                                    checkpoint_minutes=minutes))
    assert stage1_teacher.run(cfg, stop=StopRequest(after_micro_steps=5, install_handlers=False)) == EXIT_PREEMPTED
    saved = sorted(p.name for p in (Path(cfg.output_dir) / "checkpoints" / "teacher").glob("step*"))
    assert saved == [f"step{t:08d}" for t in tags]


def test_checkpoint_from_another_configuration_is_refused(tmp_path, tiny_bert, sentiment_dir):
    cfg = from_dict(tiny_run_config(tmp_path, tiny_bert, sentiment_dir))
    assert stage1_teacher.run(cfg, stop=StopRequest(after_micro_steps=2, install_handlers=False)) == EXIT_PREEMPTED
    changed = from_dict(tiny_run_config(tmp_path, tiny_bert, sentiment_dir, learning_rate=5e-4))
    with pytest.raises(UserError, match="different configuration"):
        stage1_teacher.run(changed, stop=StopRequest(install_handlers=False))


def _env():
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"):
        env.pop(k, None)
    return env


@pytest.mark.slow
def test_two_ranks_zero2_under_deepspeed_launcher(tmp_path, tiny_bert, sentiment_dir):
    import yaml

    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
    raw["deepspeed_config"] = str(REPO / "ds_configs" / "zero2_bf16.json")
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    launcher = Path(sys.executable).with_name("deepspeed")
    from pipeline.runtime.distributed import free_port

    proc = subprocess.run([str(launcher), "--num_gpus", "2", "--master_port", str(free_port()),
                           str(REPO / "pipeline" / "stage1_teacher.py"), "--config", str(cfg_path)],
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "run"
    assert is_complete(out / "teacher")
    tags = scalar_tags(out / "tensorboard" / "teacher")
    assert {"teacher/train/loss", "teacher/train/lr", "teacher/eval/dev/accuracy"} <= set(tags)
    # 96 examples, 2 ranks x batch 8 -> 6 optimizer steps per epoch, 2 epochs
    assert max(s for s, _ in tags["teacher/train/loss"]) == 12
    # both ranks' samples are counted in the throughput
    results = json.loads((out / "teacher" / "train_results.json").read_text())
    assert results["optimizer_steps"] == 12


def test_user_error_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  teacher:\n    epocs: 2\n")
    proc = subprocess.run([sys.executable, str(REPO / "pipeline" / "stage1_teacher.py"), "--config", str(bad)],
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"crild: error: {bad}: unknown key 'stages.teacher.epocs'; did you mean 'epochs'?"]
    assert "Traceback" not in proc.stderr


def test_a_zero3_stage_logs_only_its_own_lines(tmp_path, tiny_bert, sentiment_dir):
    """Under ZeRO-3 DeepSpeed calls collectives torch has renamed, and every call printed a
    FutureWarning: 120 lines of them in a four-step run, between the stage's own."""
    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir, epochs=1)
    raw["deepspeed_config"] = str(REPO / "ds_configs" / "zero3_bf16.json")
    config = tmp_path / "z3.yaml"
    config.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, str(REPO / "pipeline" / "stage1_teacher.py"), "--config", str(config)],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    foreign = [line for line in proc.stderr.splitlines() if not re.match(r"crild: |\[teacher\] |teacher: ", line)]
    assert foreign == [], foreign[:5]
    assert proc.stdout == ""  # nor DeepSpeed's notes on stdout (an op "built successfully", the scheduler)


def _poison(monkeypatch, bad_micro_steps):
    """Make the teacher stage's loss NaN at the given micro-steps."""
    from pipeline.training import trainer

    original = trainer.train_loop

    def poisoned_loop(**kw):
        loss_fn = kw["loss_fn"]

        def loss(engine, batch, micro):
            total, parts = loss_fn(engine, batch, micro)
            return (total * float("nan") if micro in bad_micro_steps else total), parts

        return original(**{**kw, "loss_fn": loss})

    monkeypatch.setattr(stage1_teacher, "train_loop", poisoned_loop)


def test_non_finite_loss_stops_with_one_line_and_keeps_the_last_checkpoint(tmp_path, tiny_bert, sentiment_dir,
                                                                            monkeypatch):
    cfg = from_dict(tiny_run_config(tmp_path, tiny_bert, sentiment_dir))
    _poison(monkeypatch, {6})
    with pytest.raises(UserError, match=r"non-finite loss at micro-step 6 .*loss nan.*last good checkpoint is "
                                        r"step00000004"):
        stage1_teacher.run(cfg, stop=StopRequest(install_handlers=False))
    out = Path(cfg.output_dir)
    assert not (out / "teacher").exists()
    assert (out / "checkpoints" / "teacher" / "latest").read_text().strip() == "step00000004"


def test_non_finite_steps_are_skipped_and_counted_when_configured(tmp_path, tiny_bert, sentiment_dir, monkeypatch):
    cfg = from_dict(tiny_run_config(tmp_path, tiny_bert, sentiment_dir, on_nonfinite="skip", max_nonfinite_skips=2))
    _poison(monkeypatch, {3, 9})
    assert stage1_teacher.run(cfg, stop=StopRequest(install_handlers=False)) == 0
    out = Path(cfg.output_dir)
    w = weights(out)
    assert all(torch.isfinite(v).all() for v in w.values())  # the NaN never reached the weights
    skipped = scalar_tags(out / "tensorboard" / "teacher")["teacher/train/nonfinite_skipped"]
    assert skipped[-1][1] == 2 and all(v == v for _, v in scalar_tags(out / "tensorboard" / "teacher")
                                       ["teacher/train/loss"])  # logged losses stay finite
    # a third one is more than allowed: the run stops like the default does
    cfg = from_dict(tiny_run_config(tmp_path / "again", tiny_bert, sentiment_dir, on_nonfinite="skip",
                                    max_nonfinite_skips=2))
    _poison(monkeypatch, {3, 9, 15})
    with pytest.raises(UserError, match="3 skipped, more than max_nonfinite_skips"):
        stage1_teacher.run(cfg, stop=StopRequest(install_handlers=False))


def test_malicious_pickle_in_a_model_folder_is_never_executed(tmp_path, tiny_bert):
    """A pickle beside the safetensors weights, and a pickled RNG file in a checkpoint, are
    not executed: weights load from safetensors only, pickles with weights_only=True."""
    import pickle
    import shutil

    from pipeline.data.tasks import TASKS
    from pipeline.models.loading import build_classifier

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    folder = tmp_path / "model"
    shutil.copytree(tiny_bert, folder)
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Evil()))
    build_classifier(str(folder), TASKS["sst2"], "teacher")
    assert not marker.exists()
    rng = tmp_path / "rng_rank0.pt"
    rng.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(pickle.UnpicklingError):
        torch.load(rng, weights_only=True)  # how Checkpoints.load reads RNG files
    assert not marker.exists()


def test_corrupted_checkpoint_falls_back_to_the_previous_good_one(tmp_path, tiny_bert, sentiment_dir, capsys):
    full = from_dict(tiny_run_config(tmp_path / "a", tiny_bert, sentiment_dir, checkpoint_every=2))
    assert stage1_teacher.run(full, stop=StopRequest(install_handlers=False)) == 0
    cfg = from_dict(tiny_run_config(tmp_path / "b", tiny_bert, sentiment_dir, checkpoint_every=2))
    assert stage1_teacher.run(cfg, stop=StopRequest(after_micro_steps=6, install_handlers=False)) == EXIT_PREEMPTED
    root = Path(cfg.output_dir) / "checkpoints" / "teacher"
    assert sorted(p.name for p in root.glob("step*")) == ["step00000004", "step00000006"]
    states = next((root / "step00000006").rglob("mp_rank_00_model_states.pt"))
    states.write_bytes(states.read_bytes()[:100])  # truncated, as by a full disk
    capsys.readouterr()
    assert stage1_teacher.run(cfg, stop=StopRequest(install_handlers=False)) == 0
    err = capsys.readouterr().err
    assert "step00000006 is not intact" in err and "truncated" in err
    assert "resuming at micro-step 4 of" in err
    wa, wb = weights(Path(full.output_dir)), weights(Path(cfg.output_dir))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # the fallback still ends exactly


def test_corrupted_stage_output_is_detected_before_use(tmp_path, tiny_bert, sentiment_dir):
    from pipeline import stage3_distill
    from pipeline.launch.local import stage_is_done

    cfg = from_dict(tiny_run_config(tmp_path, tiny_bert, sentiment_dir, epochs=1))
    assert stage1_teacher.run(cfg, stop=StopRequest(install_handlers=False)) == 0
    verified: set = set()
    assert stage_is_done(cfg, "teacher", verified) and len(verified) == 1
    model = Path(cfg.output_dir) / "teacher" / "model.safetensors"
    data = bytearray(model.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte
    model.write_bytes(bytes(data))
    assert stage_is_done(cfg, "teacher", verified)  # a caller's verified set is not hashed again (tools/report.py)
    assert not stage_is_done(cfg, "teacher")  # crild run redoes it
    with pytest.raises(UserError, match="the teacher failed its integrity check: .*model.safetensors: content "
                                        "differs from its recorded hash"):
        stage3_distill.run(cfg, stop=StopRequest(install_handlers=False))


def test_single_rank_ignores_an_inherited_busy_master_port(tmp_path, tiny_bert, sentiment_dir):
    """A parent process (a notebook, a test runner, crild itself) that initialised a process
    group leaves MASTER_PORT in the environment while it holds that port: a one-rank stage
    started from it must not try to listen there."""
    import socket

    import yaml

    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_run_config(tmp_path, tiny_bert, sentiment_dir, epochs=1)))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        env = dict(_env(), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(held.getsockname()[1]), RANK="0",
                   WORLD_SIZE="1", LOCAL_RANK="0")
        proc = subprocess.run([sys.executable, str(REPO / "pipeline" / "stage1_teacher.py"), "--config",
                               str(cfg_path)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert is_complete(tmp_path / "run" / "teacher")


def test_runner_clears_checkpoints_a_finished_stage_left_behind(tmp_path, tiny_bert, sentiment_dir, capsys):
    """A stage killed after publishing its output but before removing its checkpoints leaves
    them behind; the next `crild run` skips the stage and removes them."""
    from pipeline.launch.local import run_pipeline
    from pipeline.training.checkpoint_folders import claim_checkpoints

    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir, epochs=1)
    raw["pipeline"] = ["teacher"]
    cfg = from_dict(raw)
    assert stage1_teacher.run(cfg, stop=StopRequest(install_handlers=False)) == 0
    leftover = Path(cfg.output_dir) / "checkpoints" / "teacher" / "step00000004"
    claim_checkpoints(leftover.parent)  # what the stage did when it started
    leftover.mkdir(parents=True)
    (leftover / "mp_rank_00_model_states.pt").write_bytes(b"x" * 100)
    assert run_pipeline(cfg, "run.yaml", []) == 0
    assert "teacher: complete for this configuration, skipped" in capsys.readouterr().out
    assert not leftover.parent.exists() and (Path(cfg.output_dir) / "teacher" / "model.safetensors").is_file()


def test_a_stage_started_afresh_sets_the_earlier_curves_aside(tmp_path, tiny_bert, sentiment_dir, capsys):
    """A longer earlier run's later steps would otherwise extend the new curves, and a study
    would read them as the new run's."""
    from pipeline.study.scoring import read_scalars

    longer = from_dict(tiny_run_config(tmp_path, tiny_bert, sentiment_dir, epochs=2))
    assert stage1_teacher.run(longer, stop=StopRequest(install_handlers=False)) == 0
    shorter = from_dict(tiny_run_config(tmp_path, tiny_bert, sentiment_dir, epochs=1))
    assert stage1_teacher.run(shorter, stop=StopRequest(install_handlers=False)) == 0
    events = Path(shorter.output_dir) / "tensorboard" / "teacher"
    assert read_scalars(events)["teacher/train/loss"][-1][0] == 12  # one epoch of 12 steps, not two
    assert read_scalars(events / "earlier-1")["teacher/train/loss"][-1][0] == 24
    assert f"teacher: starting afresh; the TensorBoard events of an earlier attempt are in {events / 'earlier-1'}" \
        in capsys.readouterr().err


def test_the_baseline_started_afresh_says_it_is_the_baseline(tmp_path, tiny_bert, sentiment_dir, capsys):
    """The baseline runs in the distillation's script: its note named the distill stage."""
    from pipeline import stage3_distill
    from pipeline.config import stage_config

    for epochs in (2, 1):
        raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir, epochs=1)
        raw["pipeline"] = ["baseline"]
        raw["stages"]["baseline"] = {"epochs": epochs, "batch_size": 8}
        cfg = stage_config(from_dict(raw), "baseline")
        assert stage3_distill.run(cfg, stop=StopRequest(install_handlers=False)) == 0
    events = Path(cfg.output_dir) / "tensorboard" / "student_finetuned"
    assert f"baseline: starting afresh; the TensorBoard events of an earlier attempt are in {events / 'earlier-1'}" \
        in capsys.readouterr().err


def test_scalars_logged_before_a_crash_reach_the_event_file(tmp_path):
    from pipeline.training.scalars import Scalars

    with pytest.raises(RuntimeError):
        with Scalars(tmp_path, enabled=True) as scalars:
            scalars.add({"distill_ild/loss": 0.5, "skipped": None}, step=3)
            raise RuntimeError("a step failed")
    assert scalar_tags(tmp_path) == {"distill_ild/loss": [(3, 0.5)]}
    with Scalars(tmp_path / "off", enabled=False) as scalars:  # other ranks write nothing
        scalars.add({"distill_ild/loss": 0.5}, step=0)
    assert not (tmp_path / "off").exists()
