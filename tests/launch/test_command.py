"""How crild run launches a stage, and the ranks a machine can hold."""
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers import REPO, tiny_run_config

from pipeline.cli import main
from pipeline.config import from_dict
from pipeline.errors import UserError
from pipeline.launch.command import check_local_ranks


@pytest.fixture
def one_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    for key in ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_STEP_ID"):
        monkeypatch.delenv(key, raising=False)


def test_more_local_ranks_than_gpus_is_refused_before_any_stage(one_gpu, tmp_path, tiny_bert, sentiment_dir, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**tiny_run_config(tmp_path, tiny_bert, sentiment_dir), "num_ranks": 2}))
    with pytest.raises(SystemExit) as done:
        main(["run", str(path)])
    assert done.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "crild: error: num_ranks: 2 ranks, one per GPU, and this machine has 1 GPU (CUDA_VISIBLE_DEVICES=3); "
        "expected at most 1, or run on Slurm (crild submit)"]
    assert not (tmp_path / "run" / "teacher").exists()


def test_ranks_that_fit_or_a_cpu_pass(one_gpu, tmp_path, tiny_bert, sentiment_dir, monkeypatch):
    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
    check_local_ranks(from_dict({**raw, "num_ranks": 1}))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check_local_ranks(from_dict({**raw, "num_ranks": 8}))  # gloo ranks share the cores


def test_several_ranks_launch_through_this_interpreters_deepspeed(tmp_path, tiny_bert, sentiment_dir, monkeypatch):
    """The launcher is found through the interpreter, not a console script beside it (absent
    when DeepSpeed was installed with --target, as on the GPU check's machine)."""
    import subprocess
    import sys

    from pipeline.launch.command import stage_command

    for key in ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_STEP_ID"):
        monkeypatch.delenv(key, raising=False)
    cfg = from_dict({**tiny_run_config(tmp_path, tiny_bert, sentiment_dir), "num_ranks": 2})
    cmd = stage_command(cfg, "teacher", "run.yaml", ["seed=3"])
    assert cmd[:3] == [sys.executable, "-m", "deepspeed.launcher.runner"]
    assert cmd[3:5] == ["--num_gpus", "2"] and cmd[-4:] == ["run.yaml", "seed=3", "--stage", "teacher"]
    done = subprocess.run([*cmd[:3], "--help"], capture_output=True, text=True, env={"PATH": "/nonexistent"})
    assert done.returncode == 0 and "--num_gpus" in done.stdout and "--log_level" in done.stdout


def test_a_missing_input_of_a_late_stage_stops_the_run_before_its_first_stage(tmp_path, tiny_bert, sentiment_dir,
                                                                              capsys):
    """The augment stage's vectors file was found missing only after the teacher had trained."""
    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
    raw.update(pipeline=["teacher", "augment", "evaluate"])
    raw["stages"]["augment"] = {"vectors": {"path": str(tmp_path / "glove.npy"), "vocab": str(tmp_path / "w.txt")}}
    raw["stages"]["evaluate"] = {"models": [str(tmp_path / "run" / "teacher")]}  # the run writes it: not missing
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SystemExit) as done:
        main(["run", str(path)])
    assert done.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"crild: error: stages.augment.vectors.path: '{tmp_path / 'glove.npy'}' does not exist (the augment stage "
        f"reads it; checked before the first stage runs)"]
    assert not (tmp_path / "run" / "teacher").exists()


def test_names_only_a_stage_can_resolve_are_left_to_it(tmp_path, tiny_bert, sentiment_dir):
    from pipeline.stages import missing_inputs

    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
    raw["teacher"] = {"model": "some-org/some-model"}  # a hub name, or an alias: not a path to check here
    raw["stages"]["augment"] = {"vectors": {"path": "glove-6b-50d"}}
    cfg = from_dict(raw)
    assert missing_inputs(cfg, "teacher") == [] and missing_inputs(cfg, "augment") == []
    cfg = from_dict({**raw, "task": {**raw["task"], "data_dir": str(tmp_path / "gone")}})
    assert missing_inputs(cfg, "teacher") == [("task.data_dir", str(tmp_path / "gone"))]


def test_submit_checks_the_inputs_before_any_job_is_queued(tmp_path, tiny_bert, sentiment_dir):
    from pipeline.errors import UserError
    from pipeline.launch.submit import submit

    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
    raw["task"] = {**raw["task"], "data_dir": str(tmp_path / "gone")}
    with pytest.raises(UserError, match=r"task.data_dir: '.*gone' does not exist \(the teacher stage reads it"):
        submit(from_dict(raw), str(tmp_path / "run.yaml"), [])  # raises before any sbatch call
    assert not (tmp_path / "run" / "logs").exists()


@pytest.mark.skipif(shutil.which("sbatch") is None or Path("/etc/slurm/slurm.conf").exists(),
                    reason="needs Slurm's sbatch and no cluster configured for this machine")
def test_submit_with_no_cluster_configured_says_where_to_point(tmp_path, tiny_bert, sentiment_dir, monkeypatch):
    """sbatch with no slurm.conf to find fails without naming one; crild's line says what to set."""
    from pipeline.launch.submit import submit

    monkeypatch.delenv("SLURM_CONF", raising=False)
    with pytest.raises(UserError, match=r"^sbatch --parsable failed: sbatch: .*configuration.*; point SLURM_CONF "
                                        r"at the cluster's slurm.conf \(tools/local_slurm.sh start prints"):
        submit(from_dict(tiny_run_config(tmp_path, tiny_bert, sentiment_dir)), str(tmp_path / "run.yaml"), [])


NEEDS_SLURM = pytest.mark.skipif(os.environ.get("CRILD_SKIP_SLURM") == "1", reason="CRILD_SKIP_SLURM=1")


@NEEDS_SLURM
@pytest.mark.parametrize("given, said", [
    ("--bogus", "sbatch: unrecognized option '--bogus'; it is --sbatch-arg=--bogus"),
    ("--time 10", "sbatch: unrecognized option '--time 10'; it is --sbatch-arg=--time 10: give an option and its "
                  "value joined by '=', --sbatch-arg=--time=10")])
def test_an_sbatch_argument_sbatch_refuses_is_named_as_the_users(tmp_path, tiny_bert, sentiment_dir, given, said,
                                                                  slurm_env, monkeypatch):
    """sbatch names an option it does not know, then says 'Try "sbatch --help"', and only that
    last line reached the message."""
    from pipeline.launch.submit import submit

    monkeypatch.setenv("SLURM_CONF", slurm_env["SLURM_CONF"])

    with pytest.raises(UserError) as err:
        submit(from_dict(tiny_run_config(tmp_path, tiny_bert, sentiment_dir)), str(tmp_path / "run.yaml"), [],
               extra_sbatch=[given])
    assert str(err.value) == f"sbatch --parsable failed: {said}"


@NEEDS_SLURM
def test_submit_no_wait_returns_once_the_jobs_are_queued_with_the_users_sbatch_arguments(tmp_path, tiny_bert,
                                                                                          sentiment_dir, slurm_env):
    """``--no-wait`` returns as soon as each stage is queued, and ``--sbatch-arg`` reaches every
    job: submitted held (``--hold``), the jobs never start, so a submit that waited for them
    would run into the timeout."""
    import subprocess
    import sys

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**tiny_run_config(tmp_path, tiny_bert, sentiment_dir),
                                      "pipeline": ["teacher", "evaluate"]}))
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "submit", str(config), "--no-wait",
                           "--sbatch-arg=--hold"], capture_output=True, text=True, env=slurm_env, cwd=REPO, timeout=120)
    jobs = [line.split()[4] for line in proc.stdout.splitlines() if "submitted job" in line]
    try:
        assert proc.returncode == 0 and len(jobs) == 2, proc.stdout + proc.stderr
        for job in jobs:
            shown = subprocess.run(["scontrol", "show", "job", job, "-o"], capture_output=True, text=True,
                                   env=slurm_env).stdout
            assert "JobState=PENDING" in shown and "Reason=JobHeldUser" in shown, shown
        assert "afterok:" + jobs[0] in subprocess.run(["scontrol", "show", "job", jobs[1], "-o"], capture_output=True,
                                                       text=True, env=slurm_env).stdout
    finally:
        if jobs:
            subprocess.run(["scancel", *jobs], env=slurm_env)


@NEEDS_SLURM
def test_submit_leaves_out_a_complete_stage_that_reads_no_redone_output(tmp_path, tiny_bert, sentiment_dir, slurm_env):
    """After a changed teacher setting, the teacher and the evaluation that reads it are
    submitted, chained, and the complete baseline, which reads no teacher, is not (before,
    every stage after the first submitted one was, the baseline's training too)."""
    import subprocess
    import sys

    from pipeline import stage1_teacher, stage3_distill, stage4_evaluate
    from pipeline.config import stage_config
    from pipeline.training.stop import StopRequest

    raw = {**tiny_run_config(tmp_path, tiny_bert, sentiment_dir, epochs=1), "pipeline": ["teacher", "baseline",
                                                                                         "evaluate"]}
    raw["stages"]["baseline"] = {"epochs": 1, "batch_size": 8}
    assert stage1_teacher.run(from_dict(raw), stop=StopRequest(install_handlers=False)) == 0
    assert stage3_distill.run(stage_config(from_dict(raw), "baseline"), stop=StopRequest(install_handlers=False)) == 0
    assert stage4_evaluate.run(from_dict(raw)) == 0
    raw["stages"]["teacher"]["learning_rate"] = 2e-3
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "submit", str(config), "--no-wait",
                           "--sbatch-arg=--hold"], capture_output=True, text=True, env=slurm_env, cwd=REPO, timeout=120)
    jobs = {line.split()[1].rstrip(":"): line.split()[4] for line in proc.stdout.splitlines() if "submitted job" in line}
    try:
        assert proc.returncode == 0 and list(jobs) == ["teacher", "evaluate"], proc.stdout + proc.stderr
        assert "crild: baseline: complete for this configuration, not submitted" in proc.stdout.splitlines()
        assert "afterok:" + jobs["teacher"] in subprocess.run(["scontrol", "show", "job", jobs["evaluate"], "-o"],
                                                               capture_output=True, text=True, env=slurm_env).stdout
    finally:
        if jobs:
            subprocess.run(["scancel", *jobs.values()], env=slurm_env)


def test_export_runs_as_one_process_whatever_num_ranks_and_the_allocation_say(tmp_path, tiny_bert, sentiment_dir,
                                                                                 monkeypatch):
    """A run that trains on every rank also exports in the same chain: export is launched as
    one process (one task on one node under srun), not on every rank, where it would refuse."""
    import sys

    from pipeline.launch.command import stage_command

    for key in ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_STEP_ID"):
        monkeypatch.delenv(key, raising=False)
    raw = {**tiny_run_config(tmp_path, tiny_bert, sentiment_dir), "num_ranks": 4,
           "pipeline": ["teacher", "evaluate", "export"], "slurm": {"nodes": 2}}
    cfg = from_dict(raw)
    assert stage_command(cfg, "export", "run.yaml", [])[:2] == [sys.executable, str(REPO / "pipeline" /
                                                                                    "stage5_export.py")]
    assert stage_command(cfg, "evaluate", "run.yaml", [])[1:3] == ["-m", "deepspeed.launcher.runner"]
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert stage_command(cfg, "export", "run.yaml", [])[:4] == ["srun", "--kill-on-bad-exit=1", "--ntasks=1",
                                                                "--nodes=1"]
    assert stage_command(cfg, "teacher", "run.yaml", [])[:3] == ["srun", "--kill-on-bad-exit=1", "--ntasks=4"]

    from_dict({**raw, "num_ranks": 3, "slurm": {"nodes": 2}, "pipeline": ["export"]})  # nodes need not divide
    with pytest.raises(UserError, match=r"slurm\.stage_nodes\.export: 2 nodes for stage 'export', which runs as one "
                                        r"process; expected 1"):
        from_dict({**raw, "slurm": {"stage_nodes": {"export": 2}}})


@pytest.mark.parametrize("script, args, suggested", [
    ("crild_large.sbatch", [], "crild run jobs/crild_large.yaml"),
    ("crild_tiny.sbatch", ["mine.yaml"], "crild run mine.yaml"),
    ("crild_stage.sbatch", ["mine.yaml", "teacher"], "crild run mine.yaml --only teacher"),
    ("crild_stage.sbatch", [], "usage: sbatch crild_stage.sbatch CONFIG.yaml STAGE"),
])
def test_a_job_script_run_outside_slurm_says_so_in_one_line(script, args, suggested, tmp_path):
    """``bash jobs/X.sbatch``, as a user trying the job on a laptop might: one line that says
    how to submit it or run the same thing here (it was bash's 'SLURM_JOB_ID: unbound
    variable'), exit code 2, and nothing started."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run(["bash", str(REPO / "jobs" / script), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == "", (proc.stdout, proc.stderr)
    line, = proc.stderr.splitlines()
    assert line.startswith((f"{script}: ", f"usage: sbatch {script} ")) and suggested in line, line
    assert list(tmp_path.iterdir()) == []


def test_the_log_folder_of_every_job_script_is_in_the_repository():
    """Slurm does not make the folder of ``#SBATCH --output``: a job whose log folder is
    missing (``logs/`` in a fresh clone) fails at once and writes no log at all."""
    import re
    import subprocess

    tracked = set(subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True)
                  .stdout.splitlines())
    folders = {str(Path(f).parent) for f in tracked}
    for script in sorted((REPO / "jobs").glob("*.sbatch")):
        for path in re.findall(r"^#SBATCH --(?:output|error)=(\S+)", script.read_text(), re.M):
            assert str(Path(path).parent) in folders, (script.name, path)


@pytest.mark.parametrize("script, args, python", [
    ("crild_large.sbatch", [], None),  # its default, .venv/bin/python: relative to the folder it was submitted from
    ("crild_tiny.sbatch", ["jobs/tiny.yaml"], "/nowhere/python"),
    ("crild_stage.sbatch", ["jobs/tiny.yaml", "teacher"], "/nowhere/python"),
])
def test_a_job_submitted_from_elsewhere_says_where_to_submit_from(script, args, python, tmp_path):
    """A job script submitted from outside the crild folder (or with a CRILD_PYTHON that has no
    crild) ends in one line that says where to submit from, exit code 2, instead of bash's
    'No such file or directory' or Python's 'No module named pipeline'."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CRILD_PYTHON"))}
    env.update({"SLURM_JOB_ID": "7", **({"CRILD_PYTHON": python} if python else {})})
    proc = subprocess.run(["bash", str(REPO / "jobs" / script), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == "", (proc.stdout, proc.stderr)
    line, = proc.stderr.splitlines()
    assert line.startswith(f"{script}: ") and f"cannot run crild here ({tmp_path}); submit from the crild folder" \
        in line, line
