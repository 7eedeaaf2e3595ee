"""The Slurm path on a real single-node cluster (tools/local_slurm.sh): the tiny chain with a
2-task allocation, preemption with requeue and exact resume, and `crild submit` with a
failing stage and with a hub model whose main moves between submission and the job. The
cluster and the chain's job are fixtures of tests/launch/conftest.py, the job helpers are in
slurm_jobs.py."""
import os

import pytest
import yaml
from fake_hub import NEW, OLD, fake_hub, newer_copy
from helpers import write_tiny_classifier
from slurm_jobs import DISTILL, chain_config, job_field, preempted_during_ild, sbatch_tiny, submit, submitted

from pipeline.outputs.manifest import is_complete

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("CRILD_SKIP_SLURM") == "1", reason="CRILD_SKIP_SLURM=1")]


def test_sbatch_tiny_runs_every_stage_on_two_tasks(one_node_chain):
    _, out, log = one_node_chain
    for stage in ("teacher", "student", "eval", "export"):
        assert (out / stage / "crild_stage.json").is_file(), log[-3000:]
    assert (out / "eval" / "results.json").is_file()
    assert ", 2 ranks, ZeRO-" in log and "srun --kill-on-bad-exit=1 --ntasks=2" in log  # the teacher on both
    assert "srun --kill-on-bad-exit=1 --ntasks=1 --nodes=1" in log  # export: one process in the 2-task job


def test_preemption_checkpoints_requeues_and_ends_identical(one_node_chain, tmp_path, tiny_bert, sentiment_dir,
                                                            slurm_env):
    _, plain, _ = one_node_chain
    # the distillation of the chain's teacher, preempted in ILD: its student is compared
    config = chain_config(tmp_path, tiny_bert, sentiment_dir, "preempted", stages=DISTILL,
                          teacher_model=str(plain / "teacher"))
    log = tmp_path / "preempted.log"
    preempted_during_ild(sbatch_tiny(config, log, slurm_env), log, slurm_env)
    a = (plain / "student" / "model.safetensors").read_bytes()
    b = (tmp_path / "preempted" / "student" / "model.safetensors").read_bytes()
    assert a == b  # bitwise the same student as the uninterrupted run


def test_submit_chains_jobs_and_reports_the_failed_stage(tmp_path, tiny_bert, sentiment_dir, slurm_env):
    # 1. a chain that completes: teacher, then evaluation after it (afterok), then the export of
    # a model named on a hub that others push to: main moves each time it is asked, and the job
    # (started later, maybe requeued) must read the commit `crild submit` read, and say nothing
    # a % in the run folder, which sbatch would read as a pattern (%x: the job's name) in --output
    good = chain_config(tmp_path, tiny_bert, sentiment_dir, "submit%x")
    raw = yaml.safe_load(good.read_text())
    raw["pipeline"] = ["teacher", "evaluate", "export"]
    raw["stages"]["export"] = {"models": ["crild-test/tiny-cls"]}
    good.write_text(yaml.safe_dump(raw))
    classifier = write_tiny_classifier(tiny_bert, tmp_path / "classifier")
    history = {"crild-test/tiny-cls": [(OLD, classifier), (NEW, newer_copy(classifier, tmp_path / "newer"))]}
    cache = tmp_path / "hub-cache"
    with fake_hub(history, main_moves=True) as (endpoint, requests):
        proc = submit(good, {**slurm_env, "HF_HUB_CACHE": str(cache), "HF_ENDPOINT": endpoint})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = submitted(proc)
    assert list(jobs) == ["teacher", "evaluate", "export"]
    for name in jobs:
        assert f"crild: {name}: job {jobs[name]} COMPLETED" in proc.stdout.splitlines()
    assert (tmp_path / "submit%x" / "eval" / "results.json").is_file()
    assert is_complete(tmp_path / "submit%x" / "export")
    assert [job_field(jobs[name], "NumTasks", slurm_env) for name in jobs] == ["2", "2", "1"]  # export: one task
    assert requests.count("GET /api/models/crild-test/tiny-cls/revision/main") == 1  # by crild submit alone
    assert sorted(p.name for p in (cache / "models--crild-test--tiny-cls" / "snapshots").iterdir()) == [OLD]
    assert f"is read at commit {OLD}" in proc.stdout + proc.stderr
    export_log = (tmp_path / "submit%x" / "logs" / f"export-{jobs['export']}.out").read_text()
    assert "is read at commit" not in export_log and "tiny-cls" in export_log

    # 2. the same run with a distillation stage made to fail: the teacher is complete and not
    # resubmitted, distill fails, evaluation (after it) is cancelled, the failure is named. (What
    # the configuration alone shows is refused before submission, tests/launch/test_preflight.py:
    # a stage shorter than its gradient accumulation needs the data, and gets as far as the job.)
    raw["pipeline"] = ["teacher", "distill", "evaluate"]
    raw["stages"]["distill"]["ild"]["gradient_accumulation_steps"] = 10**6
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    proc = submit(bad, slurm_env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "crild: teacher: complete for this configuration, not submitted" in lines
    jobs = submitted(proc)
    assert list(jobs) == ["distill", "evaluate"]
    assert f"crild: distill: job {jobs['distill']} FAILED" in lines
    assert f"crild: evaluate: job {jobs['evaluate']} CANCELLED" in lines
    err = proc.stderr.strip().splitlines()
    log = tmp_path / "submit%x" / "logs" / f"distill-{jobs['distill']}.out"
    assert err == [f"crild: error: stage 'distill' failed (job {jobs['distill']}, FAILED); its log is {log}; "
                   f"dependent stages were cancelled"]
    assert "stages.distill.ild.gradient_accumulation_steps: 1000000 micro-steps per optimizer step" in log.read_text()
