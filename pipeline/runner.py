"""Chain a run's stages locally, each as its own process (the deepspeed launcher for more
than one rank), skipping stages whose output is complete for the same configuration."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from pipeline.checkpointing import archive_stale, remove_checkpoints
from pipeline.config import RunConfig, config_hash, from_dict, resolve_path, settings_dict, to_dict
from pipeline.errors import UserError
from pipeline.integrity import problems
from pipeline.outputs import MANIFEST, is_complete

PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Stage:
    name: str
    script: str
    output: Callable[[RunConfig], str]  # folder under output_dir
    fingerprint: Callable[[RunConfig], str]
    overrides: tuple = ()  # configuration overrides this stage always runs with
    checkpoints: Callable[[RunConfig], str] = lambda c: ""  # its checkpoint folder under output_dir


def ds_json_text(cfg: RunConfig, path: str | None) -> str:
    """The text of a DeepSpeed config: ``path`` (a per-stage override) or the run's own."""
    return resolve_path(path or cfg.deepspeed_config, "deepspeed_config", cfg.source).read_text()


def _manifest_fingerprint(folder: Path):
    manifest = folder / MANIFEST
    return json.loads(manifest.read_text()).get("fingerprint") if manifest.is_file() else None


def _teacher_fingerprint(cfg: RunConfig) -> str:
    return config_hash({"seed": cfg.seed, "task": settings_dict(cfg.task), "teacher": settings_dict(cfg.teacher),
                        "train": settings_dict(cfg.stages.teacher),
                        "ds": ds_json_text(cfg, cfg.stages.teacher.deepspeed_config)})


def _augment_fingerprint(cfg: RunConfig) -> str:
    return config_hash({"seed": cfg.seed, "task": settings_dict(cfg.task), "tokenizer": cfg.student.backbone,
                        "augment": settings_dict(cfg.stages.augment)})


def _distill_fingerprint(cfg: RunConfig) -> str:
    d = cfg.stages.distill
    ds = {p: ds_json_text(cfg, getattr(d, p).deepspeed_config) for p in ("ild_supplementary", "ild", "kd")}
    teacher = (_manifest_fingerprint(Path(cfg.output_dir) / "teacher") if not d.teacher_model
               else d.teacher_model)
    augmented = _manifest_fingerprint(Path(cfg.output_dir) / "augmented") if d.augmented_phases else None
    return config_hash({"seed": cfg.seed, "task": settings_dict(cfg.task),
                        "student": settings_dict(cfg.student), "distill": settings_dict(d), "ds": ds,
                        "teacher": teacher, "augmented": augmented})


def _evaluate_fingerprint(cfg: RunConfig) -> str:
    out = Path(cfg.output_dir)
    upstream = {name: _manifest_fingerprint(out / name) for name in ("teacher", "student", "student_finetuned")}
    return config_hash({"task": settings_dict(cfg.task), "evaluate": settings_dict(cfg.stages.evaluate),
                        "upstream": upstream})


BASELINE_OVERRIDES = ("stages.distill.preset=finetune", "stages.distill.output=student_finetuned",
                      "stages.distill.phases=null", "stages.distill.supplementary=[]",
                      "stages.distill.augmented_phases=[]")

STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("teacher", "stage1_teacher.py", lambda c: "teacher", _teacher_fingerprint,
          checkpoints=lambda c: "checkpoints/teacher"),
    Stage("augment", "stage2_augment.py", lambda c: "augmented", _augment_fingerprint),
    Stage("distill", "stage3_distill.py", lambda c: c.stages.distill.output, _distill_fingerprint,
          checkpoints=lambda c: f"checkpoints/{c.stages.distill.output}"),
    # the same student fine-tuned without a teacher, for comparison
    Stage("baseline", "stage3_distill.py", lambda c: c.stages.distill.output, _distill_fingerprint,
          BASELINE_OVERRIDES, checkpoints=lambda c: f"checkpoints/{c.stages.distill.output}"),
    Stage("evaluate", "stage4_evaluate.py", lambda c: "eval", _evaluate_fingerprint),
]}


def stage_config(cfg: RunConfig, name: str) -> RunConfig:
    """The configuration a stage runs with (the run's, plus the stage's fixed overrides)."""
    if not STAGES[name].overrides:
        return cfg
    return from_dict(to_dict(cfg), cfg.source, list(STAGES[name].overrides))


def stage_fingerprint(cfg: RunConfig, name: str) -> str:
    """What a stage's output depends on. Stage scripts record it in their manifest with the
    configuration they ran with; the runner compares it with the one it would run with."""
    return STAGES[name].fingerprint(cfg)


def stage_is_done(cfg: RunConfig, name: str, known_intact: Optional[set] = None) -> bool:
    """Complete, for this configuration and these inputs, and its files intact.

    ``known_intact`` (a set the caller keeps) remembers the (folder, fingerprint) pairs
    already verified, so that an output several runs share (a study's teacher) is hashed
    once per caller instead of once per question."""
    cfg = stage_config(cfg, name)
    folder = Path(cfg.output_dir) / STAGES[name].output(cfg)
    fingerprint = stage_fingerprint(cfg, name)
    if not (is_complete(folder) and _manifest_fingerprint(folder) == fingerprint):
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


def in_slurm_allocation() -> bool:
    return "SLURM_JOB_ID" in os.environ and "SLURM_NTASKS" in os.environ and \
        os.environ.get("CRILD_LAUNCHER", "srun") == "srun"


def slurm_rendezvous() -> dict:
    """MASTER_ADDR/PORT for a stage launched with srun: the allocation's first node and a
    port derived from the job id (stable across requeues)."""
    nodes = subprocess.run(["scontrol", "show", "hostnames", os.environ.get("SLURM_JOB_NODELIST", "")],
                           capture_output=True, text=True).stdout.split()
    addr = nodes[0] if nodes else "127.0.0.1"
    if nodes:  # the node's address as Slurm knows it (node names need not resolve)
        info = subprocess.run(["scontrol", "show", "node", nodes[0], "-o"], capture_output=True, text=True).stdout
        addr = next((f.split("=", 1)[1] for f in info.split() if f.startswith("NodeAddr=")), addr)
    return {"MASTER_ADDR": addr,
            "MASTER_PORT": str(20000 + int(os.environ["SLURM_JOB_ID"]) % 20000)}


def stage_command(cfg: RunConfig, name: str, config_path: str, overrides: list[str]) -> list[str]:
    """The command of one stage: srun inside a Slurm allocation (one task per rank), the
    deepspeed launcher for several local ranks, plain python for one."""
    script = str(PACKAGE_DIR / STAGES[name].script)
    args = ["--config", config_path, *overrides, *STAGES[name].overrides]
    if in_slurm_allocation():
        return ["srun", "--kill-on-bad-exit=1", f"--ntasks={os.environ['SLURM_NTASKS']}", sys.executable, script,
                *args]
    if cfg.num_ranks > 1:
        from pipeline.distributed import free_port

        launcher = Path(sys.executable).with_name("deepspeed")  # a free port: runs can share a machine
        return [str(launcher), "--num_gpus", str(cfg.num_ranks), "--master_port", str(free_port()), script, *args]
    return [sys.executable, script, *args]


class _Forwarder:
    """Forwards SIGUSR1/SIGTERM (preemption, time limit) to the running stage, which
    checkpoints and exits with EXIT_PREEMPTED."""

    def __init__(self):
        self.child: subprocess.Popen | None = None
        self.received = False
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = True
        print(f"crild: received {signal.Signals(signum).name}; asking the running stage to checkpoint", flush=True)
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGUSR1)

    def run(self, cmd: list[str], env: dict) -> int:
        self.child = subprocess.Popen(cmd, env=env)
        try:
            return self.child.wait()
        finally:
            self.child = None


def requeue_self() -> bool:
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return False
    return subprocess.run(["scontrol", "requeue", job]).returncode == 0


def run_pipeline(cfg: RunConfig, config_path: str, overrides: list[str], force: bool = False,
                 only: list[str] | None = None) -> int:
    """Run the configured stages (or ``only`` these) in order. Inside a Slurm job a stop
    request checkpoints the running stage and requeues the job, which then resumes."""
    from pipeline.trainer import EXIT_PREEMPTED

    forwarder = _Forwarder()
    env = os.environ.copy()
    if in_slurm_allocation():
        env.update(slurm_rendezvous())
    redo = force  # once a stage runs, every later stage runs too: its inputs are changing
    for name in only or cfg.pipeline:
        if forwarder.received:
            break
        if not redo and stage_is_done(cfg, name):
            print(f"crild: {name}: complete for this configuration, skipped", flush=True)
            ckpt_dir = STAGES[name].checkpoints(stage_config(cfg, name))
            if ckpt_dir:  # left by a stage killed between publishing its output and clearing them
                remove_checkpoints(Path(cfg.output_dir) / ckpt_dir)
            continue
        redo = True
        stage_cfg = stage_config(cfg, name)
        ckpt_dir = STAGES[name].checkpoints(stage_cfg)
        if ckpt_dir:
            moved = archive_stale(Path(cfg.output_dir) / ckpt_dir, stage_fingerprint(stage_cfg, name))
            if moved:
                print(f"crild: {name}: configuration or inputs changed since its checkpoints were written; "
                      f"moved them to {moved}", flush=True)
        cmd = stage_command(cfg, name, config_path, overrides)
        print(f"crild: {name}: running {' '.join(cmd)}", flush=True)
        code = forwarder.run(cmd, env)
        if code == EXIT_PREEMPTED or (forwarder.received and code != 0):
            if os.environ.get("SLURM_JOB_ID") and requeue_self():
                print(f"crild: {name}: checkpointed; job {os.environ['SLURM_JOB_ID']} requeued to resume",
                      flush=True)
                return 0
            print(f"crild: {name}: stopped on request after a checkpoint; run again to resume", flush=True)
            return EXIT_PREEMPTED
        if code != 0:
            raise UserError(f"stage '{name}' failed with exit code {code}; see the output above")
    if forwarder.received:  # arrived between stages: nothing to checkpoint, come back later
        if os.environ.get("SLURM_JOB_ID") and requeue_self():
            return 0
        return EXIT_PREEMPTED
    return 0
