"""A stage's fingerprint follows the files and folders its settings name: an edited data
file or a retrained model folder makes its output stale, as a changed setting does."""
import json
import shutil
import subprocess
import sys

import yaml
from helpers import REPO, crild_env, tiny_run_config

from pipeline.config import from_dict
from pipeline.outputs.input_digest import path_digest
from pipeline.schema.hashing import config_hash, settings_dict
from pipeline.schema.types import paths_in
from pipeline.stages import ds_json_text, stage_fingerprint


def edit_labels(folder, label):
    path = folder / "train.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({**r, "label": label}) + "\n" for r in rows))


def test_every_path_key_is_found():
    cfg = from_dict({"task": {"data_dir": "~/d"}, "stages": {
        "distill": {"teacher_model": "/t", "supplementary": [{"task": {"name": "snli", "data_dir": "/s"}, "ratio": 1}]},
        "evaluate": {"models": ["/a", "/b"]}}})
    found = paths_in(cfg, "cfg")
    assert found["cfg.task.data_dir"].endswith("/d") and not found["cfg.task.data_dir"].startswith("~")
    for key, value in [("cfg.stages.distill.teacher_model", "/t"), ("cfg.stages.evaluate.models[1]", "/b"),
                       ("cfg.stages.distill.supplementary[0].task.data_dir", "/s"), ("cfg.teacher.model", "all-MiniLM-L6-v2"),
                       ("cfg.stages.augment.vectors.path", "glove-6b-50d")]:
        assert found[key] == value
    assert "cfg.seed" not in found and "cfg.task.name" not in found


def test_fingerprints_follow_the_data_and_the_model_folders(tmp_path, tiny_bert, tiny_teacher, sentiment_dir):
    data = shutil.copytree(sentiment_dir, tmp_path / "data")
    teacher = shutil.copytree(tiny_teacher, tmp_path / "teacher-model")
    raw = tiny_run_config(tmp_path, tiny_bert, data)
    raw["stages"]["distill"] = {"teacher_model": str(teacher)}
    raw["stages"]["evaluate"] = {"models": [str(teacher)]}
    cfg = from_dict(raw)
    before = {name: stage_fingerprint(cfg, name) for name in ("teacher", "distill", "evaluate")}
    assert {name: stage_fingerprint(cfg, name) for name in before} == before  # stable while nothing changes
    edit_labels(data, "fresh")
    after = {name: stage_fingerprint(cfg, name) for name in before}
    assert all(after[name] != before[name] for name in before)
    (teacher / "extra.txt").write_text("retrained")  # the model folder changes: what reads it is stale
    changed = {name: stage_fingerprint(cfg, name) for name in before}
    assert changed["teacher"] == after["teacher"]  # the teacher stage does not read stages.distill.teacher_model
    assert changed["distill"] != after["distill"] and changed["evaluate"] != after["evaluate"]


def test_augmented_data_is_kept_when_only_how_models_are_scored_changes():
    """Augmentation reads the training split and scores nothing: a cap on the held-out
    splits leaves its output current, while the training examples it reads do not."""
    base = from_dict({"task": {"name": "rotten_tomatoes", "few_sample": 4000}})
    capped = from_dict({"task": {"name": "rotten_tomatoes", "few_sample": 4000, "max_eval_examples": 100}})
    fewer = from_dict({"task": {"name": "rotten_tomatoes", "few_sample": 1000}})
    assert stage_fingerprint(capped, "augment") == stage_fingerprint(base, "augment")
    assert stage_fingerprint(fewer, "augment") != stage_fingerprint(base, "augment")
    assert stage_fingerprint(capped, "teacher") != stage_fingerprint(base, "teacher")  # its record scores on dev


def test_a_configuration_naming_no_file_keeps_its_fingerprint():
    """Offline aliases and prepared data: the fingerprint is the settings' hash, as before
    digests were part of it (committed study records stay valid)."""
    cfg = from_dict({})
    assert stage_fingerprint(cfg, "teacher") == config_hash({
        "seed": cfg.seed, "task": settings_dict(cfg.task), "teacher": settings_dict(cfg.teacher),
        "train": settings_dict(cfg.stages.teacher), "ds": ds_json_text(cfg, None)})


def test_a_crild_folder_is_digested_by_its_recorded_hashes(tmp_path, tiny_teacher):
    copy = shutil.copytree(tiny_teacher, tmp_path / "copy")
    assert path_digest(copy) == path_digest(tiny_teacher)  # content, not place or time
    assert path_digest(tmp_path / "nothing") is None and path_digest("all-MiniLM-L6-v2") is None


def test_crild_run_redoes_a_stage_whose_data_changed(tmp_path, tiny_bert, sentiment_dir):
    data = shutil.copytree(sentiment_dir, tmp_path / "data")
    raw = tiny_run_config(tmp_path, tiny_bert, data)
    raw["pipeline"] = ["teacher"]
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))

    def crild(*args):
        proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *args, str(config)], capture_output=True,
                              text=True, timeout=600, env=crild_env(), cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout + proc.stderr

    crild("run")
    assert "complete for this configuration, skipped" in crild("run")
    edit_labels(data, "rotten")
    assert "stale" in crild("status")
    out = crild("run")
    assert "skipped" not in out and "teacher: saved" in out


def test_one_stage_run_on_its_own_names_an_earlier_output_that_is_stale(tmp_path, tiny_bert, sentiment_dir):
    """``crild run --only evaluate`` (or ``crild evaluate``) after a distillation setting
    changed scores the student as it is: a note says it is stale, where crild run would redo
    it first; a current output, a missing one, and one the stages run do not read say
    nothing."""
    from pipeline.outputs.atomic import atomic_output
    from pipeline.stale_outputs import stale_before

    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
    raw["pipeline"] = ["teacher", "distill", "evaluate", "export"]
    cfg = from_dict(raw)
    for name, fingerprint in (("teacher", stage_fingerprint(cfg, "teacher")), ("student", "another configuration's")):
        with atomic_output(tmp_path / "run" / name, cfg, "distill" if name == "student" else name, fingerprint) as tmp:
            (tmp / "model.safetensors").write_bytes(b"weights")
    student = tmp_path / "run" / "student"
    expected = [f"crild: note: --only evaluate: distill's output {student} is stale (written for another configuration "
                f"or other inputs) and is used as it is; crild run redoes distill first"]
    assert stale_before(cfg, ["evaluate"], "--only evaluate") == expected
    assert stale_before(cfg, ["evaluate", "export"], "--only evaluate") == expected
    assert stale_before(cfg, ["distill"], "--only distill") == []  # the teacher is current
    raw["pipeline"] = ["teacher", "distill", "baseline", "evaluate"]
    assert stale_before(from_dict(raw), ["baseline"], "--only baseline") == []  # it reads no student
    listed = json.loads(json.dumps(raw))
    listed["stages"]["evaluate"] = {"models": [str(tmp_path / "elsewhere")]}
    assert stale_before(from_dict(listed), ["evaluate"], "--only evaluate") == []  # it reads the models listed
    gone = json.loads(json.dumps(raw))  # an input of the stale stage is gone: evaluation is not stopped for it
    gone["stages"]["distill"] = {"kd": {"deepspeed_config": str(tmp_path / "gone.json")}}
    assert stale_before(from_dict(gone), ["evaluate"], "--only evaluate") == []
    shutil.rmtree(student)
    assert stale_before(cfg, ["evaluate"], "--only evaluate") == []  # missing: the stage says so itself


def test_a_stage_started_by_hand_names_a_stale_output_it_reads(tmp_path, tiny_bert, sentiment_dir, monkeypatch, capsys):
    """A stage script or ``crild <stage>`` started by hand gives the note that ``crild run
    --only`` gives, naming the command, on rank 0 only; a stage that crild run started gives
    none, since crild run checked before it (and would have redone the stale stage)."""
    from pipeline.config import LAUNCHED_ENV, launched_digest
    from pipeline.outputs.atomic import atomic_output
    from pipeline.stage_cli import run_stage

    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
    raw["pipeline"] = ["teacher", "distill", "evaluate"]
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    cfg = from_dict(raw)
    with atomic_output(tmp_path / "run" / "student", cfg, "distill", "another configuration's") as tmp:
        (tmp / "model.safetensors").write_bytes(b"weights")
    seen = []
    for env, how in (({}, "stage4_evaluate.py"), ({"RANK": "1"}, "crild evaluate"),
                     ({LAUNCHED_ENV: launched_digest(cfg)}, "stage4_evaluate.py")):
        with monkeypatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            assert run_stage("evaluate", str(config), [], how, run=lambda stage_cfg: seen.append(stage_cfg) or 0) == 0
        seen.append(capsys.readouterr().out)
    assert seen[1] == (f"crild: note: stage4_evaluate.py: distill's output {tmp_path / 'run' / 'student'} is stale "
                       f"(written for another configuration or other inputs) and is used as it is; crild run redoes "
                       f"distill first\n")
    assert seen[3] == seen[5] == ""  # rank 1; started by crild run
    assert all(stage_cfg.output_dir == str(tmp_path / "run") for stage_cfg in seen[::2])


def test_crild_run_force_redoes_a_stage_from_its_start(tmp_path, tiny_bert, sentiment_dir):
    """--force redoes a stage even where its output is complete, and from its start: the
    checkpoints an interrupted attempt left are moved aside, not resumed from (a distillation's
    complete phases and augmentation's shards are redone too: tests/distill/test_distill.py,
    tests/data/test_augment.py)."""
    from pipeline import stage1_teacher
    from pipeline.errors import EXIT_PREEMPTED
    from pipeline.training.stop import StopRequest

    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
    raw["pipeline"] = ["teacher"]
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    stopped = stage1_teacher.run(from_dict(raw), stop=StopRequest(after_micro_steps=4, install_handlers=False))
    assert stopped == EXIT_PREEMPTED and (tmp_path / "run" / "checkpoints" / "teacher").is_dir()
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(config), "--force"], capture_output=True,
                          text=True, timeout=600, env=crild_env(), cwd=REPO)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 0, said[-2000:]
    assert (f"crild: teacher: --force: starting afresh; its checkpoints moved to "
            f"{tmp_path / 'run' / 'checkpoints' / 'teacher.stale-1'}") in said
    assert "resuming" not in said and "teacher: saved" in said


def test_a_stage_kept_from_another_number_of_ranks_says_so(tmp_path, tiny_bert, sentiment_dir, monkeypatch, capsys):
    """The ranks are not part of a stage's fingerprint (inside Slurm the allocation decides
    them, not the file), and they set a training stage's global batch and data order: a
    teacher trained on one rank and kept by a run on two is named with both counts."""
    from pipeline.launch.local import _skip
    from pipeline.outputs.atomic import atomic_output

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "1")  # as the stage that wrote it had
    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
    cfg = from_dict(raw)
    teacher = tmp_path / "run" / "teacher"
    with atomic_output(teacher, cfg, "teacher", stage_fingerprint(cfg, "teacher")) as tmp:
        (tmp / "model.safetensors").write_bytes(b"weights")
    capsys.readouterr()
    assert _skip(cfg, "teacher")
    assert capsys.readouterr().out == "crild: teacher: complete for this configuration, skipped\n"
    assert _skip(from_dict({**raw, "num_ranks": 2}), "teacher")
    assert capsys.readouterr().out.splitlines()[1] == (
        f"crild: note: teacher: {teacher} was trained on 1 rank, and this run has 2: its global batch and data "
        f"order differ, so this configuration would train another model here; kept as it is (crild run --force "
        f"trains every stage again)")
