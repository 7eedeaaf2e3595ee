"""`crild submit`: one Slurm job per stage, chained with afterok dependencies.

Each job runs ``crild run CONFIG --only STAGE`` through jobs/crild_stage.sbatch with the
run's rank count as its task count, spread evenly over the stage's nodes
(``slurm.nodes``, ``slurm.stage_nodes``). When a stage fails, Slurm cancels its dependents
(DependencyParameters=kill_invalid_depend) and this command reports which stage failed and
where its log is.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline.config import LAUNCHED_ENV, RunConfig, launched_digest
from pipeline.errors import UserError
from pipeline.launch.local import check_inputs, stages_to_run
from pipeline.launch.preflight import check_stages
from pipeline.runtime.hub import commits_read
from pipeline.schema.paths import shipped
from pipeline.stages import STAGES

STAGE_SCRIPT = shipped("jobs/crild_stage.sbatch")  # in a clone, or in an installed copy
FINAL_OK = {"COMPLETED"}
FINAL_BAD = {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def _run(cmd: list[str], env: dict | None = None, users: Sequence[str] = ()) -> str:
    """``cmd``'s output, or one line with what it said; ``users``: the arguments the user gave
    it (``--sbatch-arg``), named as the cause where the message quotes one."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    except FileNotFoundError:
        raise UserError(f"'{cmd[0]}' not found: Slurm's client commands are needed for crild submit") from None
    if proc.returncode != 0:
        # its last line, but not the 'Try "sbatch --help"' that follows an unknown option's name
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip() and not line.startswith("Try ")]
        said = lines[-1] if lines else f"exit code {proc.returncode}"
        # Slurm's clients find the cluster through slurm.conf; with none found they name no file
        hint = ("; point SLURM_CONF at the cluster's slurm.conf (tools/local_slurm.sh start prints the local "
                "test cluster's)") if "configuration" in said.lower() and not os.environ.get("SLURM_CONF") else ""
        given = next((arg for arg in users if f"'{arg}'" in said), None)
        if given is not None:
            hint += (f"; it is --sbatch-arg={given}" + (f": give an option and its value joined by '=', "
                                                        f"--sbatch-arg={given.replace(' ', '=', 1)}"
                                                        if " " in given else ""))
        raise UserError(f"{' '.join(cmd[:2])} failed: {said}{hint}")
    return proc.stdout.strip()


def job_state(job: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job, "-o"], capture_output=True, text=True).stdout
    for field in out.split():
        if field.startswith("JobState="):
            return field.split("=", 1)[1]
    out = subprocess.run(["sacct", "-c", "-n", "-X", "-j", job, "-o", "State"], capture_output=True, text=True)
    return (out.stdout.split() or ["UNKNOWN"])[0]


def submit(cfg: RunConfig, config_path: str, overrides: list[str], wait: bool = True,
           extra_sbatch: list[str] | None = None, poll_s: float = 2.0) -> int:
    check_inputs(cfg, cfg.pipeline)  # before any job waits in the queue for an input that is not there
    intact: set = set()
    # this may be a login node without GPUs: fp16 and bf16 are the job's to judge
    to_run = stages_to_run(cfg, cfg.pipeline, known_intact=intact)
    check_stages(cfg, to_run, cfg.num_ranks, device_checks=False)
    launched = launched_digest(cfg)  # a job that starts after the file is edited refuses to run
    # --export=ALL: every job, and each requeue of it, reads hub models and datasets at the commits read here
    env = {**os.environ, **commits_read()}
    log_dir = Path(cfg.output_dir).resolve() / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, str, Path]] = []
    previous = None
    for name in cfg.pipeline:
        if name not in to_run:  # complete, and reads no output a submitted stage redoes
            print(f"crild: {name}: complete for this configuration, not submitted", flush=True)
            continue
        # sbatch expands %-patterns (%j, %x, %u...) anywhere in --output: a % of the folder's is doubled
        log = f"{str(log_dir).replace('%', '%%')}/{name}-%j.out"
        ranks = 1 if STAGES[name].one_process else cfg.num_ranks
        nodes = 1 if STAGES[name].one_process else cfg.slurm.nodes_for(name)
        cmd = ["sbatch", "--parsable", f"--job-name=crild-{name}", f"--ntasks={ranks}", f"--nodes={nodes}",
               f"--ntasks-per-node={ranks // nodes}",
               f"--output={log}", "--open-mode=append", "--requeue",
               f"--export=ALL,CRILD_PYTHON={sys.executable},{LAUNCHED_ENV}={launched}", *(extra_sbatch or [])]
        if previous:
            cmd.append(f"--dependency=afterok:{previous}")
        cmd += [str(STAGE_SCRIPT), str(Path(config_path).resolve()), name, *overrides]
        job = _run(cmd, env, extra_sbatch or []).split(";")[0]
        log_path = log_dir / f"{name}-{job}.out"
        print(f"crild: {name}: submitted job {job} (log {log_path})", flush=True)
        jobs.append((name, job, log_path))
        previous = job
    if not wait or not jobs:
        return 0
    pending = {job for _, job, _ in jobs}
    states: dict[str, str] = {}
    while pending:
        for job in sorted(pending):
            state = job_state(job)
            if state in FINAL_OK | FINAL_BAD:
                states[job] = state
                pending.discard(job)
        if pending:
            time.sleep(poll_s)
    failed = [(n, j, log) for n, j, log in jobs if states[j] not in FINAL_OK and states[j] != "CANCELLED"]
    for name, job, _ in jobs:
        print(f"crild: {name}: job {job} {states[job]}", flush=True)
    if failed:
        name, job, log = failed[0]
        raise UserError(f"stage '{name}' failed (job {job}, {states[job]}); its log is {log}; "
                        f"dependent stages were cancelled")
    if any(states[j] != "COMPLETED" for _, j, _ in jobs):
        raise UserError("some stages were cancelled; see the job states above")
    return 0
