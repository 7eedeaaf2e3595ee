"""``crild run``: the run's stages chained, each as its own process, skipping stages whose
output is complete for the same configuration and inputs."""
from __future__ import annotations

import os
import shlex
import shutil
import signal
from pathlib import Path
from typing import Callable, Optional

from pipeline.config import LAUNCHED_ENV, RunConfig, check_launched, launched_digest, load_config, stage_config
from pipeline.errors import ERROR_NOTE_ENV, EXIT_PREEMPTED, EXIT_USER_ERROR, SAID_DIR, UserError
from pipeline.launch.command import check_local_ranks, stage_command
from pipeline.launch.signals import StageRunner
from pipeline.launch.slurm import in_slurm_allocation, requeue_self, slurm_rendezvous
from pipeline.outputs.integrity import problems
from pipeline.outputs.lock import run_lock
from pipeline.outputs.manifest import is_complete, read_manifest, recorded_fingerprint
from pipeline.runtime.progress import counted
from pipeline.stages import (
    FORCED_ENV,
    STAGES,
    checkpoint_fingerprints,
    missing_inputs,
    paths_in_sections,
    stage_fingerprints,
)
from pipeline.stale_outputs import stale_before
from pipeline.training.checkpoint_folders import archive_stale, remove_checkpoints


def stage_is_done(cfg: RunConfig, name: str, known_intact: Optional[set] = None) -> bool:
    """Complete, for this configuration and these inputs, and its files intact.

    ``known_intact`` (a set the caller keeps) remembers the (folder, fingerprint) pairs
    already verified, so that an output several runs share (a study's teacher) is hashed
    once per caller instead of once per question."""
    cfg = stage_config(cfg, name)
    folder = Path(cfg.output_dir) / STAGES[name].output(cfg)
    fingerprint = recorded_fingerprint(folder)
    if not (is_complete(folder) and fingerprint in stage_fingerprints(cfg, name)):
        return False
    key = (str(folder.resolve()), fingerprint)
    if known_intact is not None and key in known_intact:
        return True
    bad = problems(folder)
    if bad:
        print(f"crild: {name}: output failed its integrity check ({bad[0]}); redoing the stage", flush=True)
    elif known_intact is not None:
        known_intact.add(key)
    return not bad


def reads_output_of(cfg: RunConfig, name: str, earlier: str) -> bool:
    """Whether stage ``name`` reads stage ``earlier``'s output: as it does by default
    (``Stage.reads``: the distillation the teacher stage's), or by a path its settings name in
    that output's folder (``stages.evaluate.models: [runs/x/student]``)."""
    stage_cfg = stage_config(cfg, name)
    if earlier in STAGES[name].reads(stage_cfg):
        return True
    output = (Path(cfg.output_dir) / STAGES[earlier].output(stage_config(cfg, earlier))).resolve()
    named = paths_in_sections(STAGES[name].inputs(stage_cfg)).values()
    return any(Path(path).resolve().is_relative_to(output) for path in named)


def redone_after(cfg: RunConfig, names, done: Callable[[str], bool]) -> dict[str, list[str]]:
    """Each of ``names`` that a run redoes -> the stages redone before it whose output it
    reads ([] for one redone because it is not ``done`` itself): a stage runs when it is not
    complete, or when it reads the output of one that runs, which that run changes. A
    complete stage that reads none of them is kept: the baseline, after a changed teacher or
    ILD setting, is not trained again."""
    runs: dict[str, list[str]] = {}
    for name in names:
        after = [earlier for earlier in runs if reads_output_of(cfg, name, earlier)]
        if after or not done(name):
            runs[name] = after
    return runs


def stages_to_run(cfg: RunConfig, names, force: bool = False, known_intact: Optional[set] = None) -> list[str]:
    """``names`` that ``crild run`` (or ``crild submit``) runs: every one with ``force``, else
    those of ``redone_after``."""
    names = list(names)
    if force:
        return names
    return list(redone_after(cfg, names, lambda name: stage_is_done(cfg, name, known_intact)))


def _skip(cfg: RunConfig, name: str, known_intact: Optional[set] = None) -> bool:
    """True for a stage whose output is complete for this configuration (its leftover
    checkpoints, from a kill between publishing the output and clearing them, go)."""
    if not stage_is_done(cfg, name, known_intact):
        return False
    print(f"crild: {name}: complete for this configuration, skipped", flush=True)
    ckpt_dir = STAGES[name].checkpoints(stage_config(cfg, name))
    if ckpt_dir:
        remove_checkpoints(Path(cfg.output_dir) / ckpt_dir)
        folder = Path(cfg.output_dir) / STAGES[name].output(stage_config(cfg, name))
        ranks, now = (read_manifest(folder) or {}).get("ranks"), world_size(cfg)
        if isinstance(ranks, int) and ranks != now:  # not part of the fingerprint: Slurm's allocation decides it
            print(f"crild: note: {name}: {folder} was trained on {counted(ranks, 'rank')}, and this run has {now}: its global "
                  f"batch and data order differ, so this configuration would train another model here; kept as it "
                  f"is (crild run --force trains every stage again)", flush=True)
    return True


def world_size(cfg: RunConfig) -> int:
    """The ranks a stage of this run trains on: the Slurm allocation's tasks inside one, else
    ``num_ranks``."""
    return int(os.environ["SLURM_NTASKS"]) if in_slurm_allocation() else cfg.num_ranks


def _archive_stale_checkpoints(cfg: RunConfig, name: str, force: bool = False) -> None:
    """Checkpoints written for another configuration or other inputs are moved aside; under
    ``--force``, every checkpoint of the stage (a forced stage starts afresh)."""
    stage_cfg = stage_config(cfg, name)
    ckpt_dir = STAGES[name].checkpoints(stage_cfg)
    if ckpt_dir:
        moved = archive_stale(Path(cfg.output_dir) / ckpt_dir, () if force else checkpoint_fingerprints(stage_cfg, name))
        if moved and force:
            print(f"crild: {name}: --force: starting afresh; its checkpoints moved to {moved}", flush=True)
        elif moved:
            print(f"crild: {name}: configuration or inputs changed since its checkpoints were written; "
                  f"moved them to {moved}", flush=True)


def _stopped(name: str) -> int:
    """After a stage checkpointed on request: requeue the Slurm job, or tell the user."""
    if os.environ.get("SLURM_JOB_ID") and requeue_self():
        print(f"crild: {name}: checkpointed; job {os.environ['SLURM_JOB_ID']} requeued to resume", flush=True)
        return 0
    print(f"crild: {name}: stopped on request after a checkpoint; run again to resume", flush=True)
    return EXIT_PREEMPTED


def _stopped_before(name: str) -> int:
    """A stop request that found no stage to checkpoint: the stages so far are complete."""
    if os.environ.get("SLURM_JOB_ID") and requeue_self():
        print(f"crild: stopped on request before {name}; job {os.environ['SLURM_JOB_ID']} requeued to go on",
              flush=True)
        return 0
    print(f"crild: stopped on request before {name}; the stages before it are complete: run again to go on",
          flush=True)
    return EXIT_PREEMPTED


def run_pipeline(cfg: RunConfig, config_path: str, overrides: list[str], force: bool = False,
                 only: list[str] | None = None) -> int:
    """Run the configured stages (or ``only`` these) in order, holding the run lock. A stop
    request checkpoints the running stage; inside a Slurm job the job is then requeued."""
    check_launched(cfg)  # a job of crild submit's, started after an edit
    with run_lock(cfg.output_dir) as lock:
        return _run_stages(cfg, config_path, overrides, force, only, lock)


def _take(note: Path) -> bool:
    """Whether a rank of the stage left ``note`` (it ended on a user error it said in one
    line). The note goes, with the lines the stage's Slurm steps claimed beside it (a step
    over several nodes claims them there: pipeline/errors.py), and their folder when empty."""
    said = note.exists()
    note.unlink(missing_ok=True)
    if job := os.environ.get("SLURM_JOB_ID"):
        for step in note.parent.glob(f"slurm-{job}.*"):
            shutil.rmtree(step, ignore_errors=True)
    try:
        note.parent.rmdir()
    except OSError:  # another run's note is there, or no folder at all
        pass
    return said


def ended_by(code: int) -> Optional[signal.Signals]:
    """The signal a stage's exit code says ended it, or None: a process's own (negative),
    the shell's and srun's 128 + n, and the deepspeed launcher's, which exits with its rank's
    negative code, 256 - n (255 stays a plain code: it is also what ``exit -1`` gives)."""
    n = -code if code < 0 else code - 128 if 128 < code <= 128 + 64 else 256 - code if 192 < code < 255 else 0
    try:
        return signal.Signals(n) if n else None
    except ValueError:
        return None


def exit_text(code: int) -> str:
    """``exit code N``, with the signal it stands for: 247 alone said nothing of the rank that
    the kernel's out-of-memory killer had ended."""
    sig = ended_by(code)
    if sig is None:
        return f"exit code {code}"
    why = " (the kernel's out-of-memory killer sends it, so does a job's memory limit)" \
        if sig == signal.SIGKILL else ""
    return f"exit code {code}: a process of it was ended by {sig.name}{why}"


def check_inputs(cfg: RunConfig, names) -> None:
    """Every file and folder the stages ``names`` read is there, before the first one runs."""
    for name in names:
        for key, path in missing_inputs(stage_config(cfg, name), name):
            raise UserError(f"{key}: '{path}' does not exist (the {name} stage reads it; checked before the first "
                            f"stage runs)")


def _run_stages(cfg: RunConfig, config_path: str, overrides: list[str], force: bool, only, lock) -> int:
    check_local_ranks(cfg)
    check_inputs(cfg, only or cfg.pipeline)
    for note in stale_before(cfg, only, f"--only {' '.join(only)}") if only else ():
        print(note, flush=True)
    intact: set = set()
    env = {**os.environ, LAUNCHED_ENV: launched_digest(cfg)}  # the stages check they read this configuration
    env[FORCED_ENV] = "1" if force else ""  # --force: they redo what they keep between attempts too
    if to_run := stages_to_run(cfg, only or cfg.pipeline, force, intact):
        # the start-up checks and the libraries they load (torch, transformers), only for a stage that runs
        import torch

        from pipeline.launch.preflight import check_stages
        from pipeline.runtime.hub import commits_read

        check_stages(cfg, to_run, world_size=world_size(cfg))
        env.update(commits_read())  # each stage reads hub models and datasets at the commits the checks read
        if not torch.cuda.is_available():  # the stages run here: DeepSpeed's launchers need not guess the accelerator
            env.setdefault("DS_ACCELERATOR", "cpu")
    runner = StageRunner(cfg.output_dir)
    if in_slurm_allocation():
        env.update(slurm_rendezvous())
    for name in only or cfg.pipeline:
        if runner.stopping:  # arrived during a stage that does not checkpoint, or between stages
            return _stopped_before(name)
        # a stage that reads an output redone before it runs (to_run); another is checked again at its turn
        if name not in to_run and _skip(cfg, name, intact):
            continue
        check_launched(load_config(config_path, overrides), env[LAUNCHED_ENV])  # the file as it is now
        _archive_stale_checkpoints(cfg, name, force)
        cmd = stage_command(cfg, name, config_path, overrides)
        print(f"crild: {name}: running {' '.join(cmd)}", flush=True)
        if lock is not None:
            lock.set_stage(name)
        note = Path(cfg.output_dir) / f".{SAID_DIR}" / f"user-error-{os.getpid()}-{name}"
        note.unlink(missing_ok=True)
        code = runner.run(cmd, {**env, ERROR_NOTE_ENV: str(note)})
        said = _take(note)
        if code == EXIT_PREEMPTED or (runner.stopping and code != 0):
            return _stopped(name)
        if code != 0 and (said or code == EXIT_USER_ERROR):
            raise SystemExit(EXIT_USER_ERROR)  # the stage's own line said what was wrong: a second would repeat it
        if code != 0:
            where = f" (Slurm job {os.environ['SLURM_JOB_ID']} on {os.environ.get('SLURM_JOB_NODELIST', '?')}; srun " \
                    f"names the failed task's node above)" if in_slurm_allocation() else ""
            raise UserError(f"stage '{name}' failed with {exit_text(code)}{where}; see the output above")
    print(done_line(cfg, only or cfg.pipeline, config_path, overrides), flush=True)
    return 0  # a stop request during the last stage came too late to stop anything


def done_line(cfg: RunConfig, names, config_path: str, overrides: list[str]) -> str:
    """The last line of a run: where each stage it ran (or found complete) left its output, and
    the status command for this run, with its overrides (without them, ``crild status`` would
    read the file's own ``output_dir``), quoted as a shell reads them."""
    outputs = dict.fromkeys(f"{STAGES[name].output(stage_config(cfg, name))}/" for name in names)
    status = shlex.join(["crild", "status", str(config_path), *overrides])
    return f"crild: done: {cfg.output_dir}: {' '.join(outputs)}; {status} lists every stage"
