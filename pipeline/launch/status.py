"""``crild status``: each stage of a run as complete, running (by whom), interrupted
(resumable from a checkpoint), stale (complete for another configuration or other inputs),
blocked (a folder not the stage's where it writes, which crild run refuses) or missing;
then the checkpoints set aside when a configuration changed, which nothing reads again,
with the space they take. Reads manifests, the run lock and checkpoint folders; changes
nothing."""
from __future__ import annotations

from pathlib import Path

from pipeline.config import RunConfig, stage_config
from pipeline.distill.presets import resolve_phases
from pipeline.errors import UserError, size_text
from pipeline.launch.local import redone_after
from pipeline.outputs.integrity import problems
from pipeline.outputs.lock import holder
from pipeline.outputs.manifest import is_complete, recorded_fingerprint
from pipeline.runtime.progress import counted
from pipeline.stages import STAGES, check_output_folder, phase_fingerprints, stage_fingerprints
from pipeline.training.checkpoint_folders import STALE_SUFFIX, TAG_PREFIX, ranks_that_wrote


def _latest_step(folder: Path) -> str | None:
    """``step N on R ranks`` of the newest checkpoint under ``folder`` (None: none): a
    resume needs as many ranks as wrote it."""
    tags = sorted(p.name for p in folder.glob(f"{TAG_PREFIX}*") if p.is_dir()) if folder.is_dir() else []
    if not tags:
        return None
    ranks = ranks_that_wrote(folder / tags[-1])
    return f"step {int(tags[-1][len(TAG_PREFIX):])}" + (f" on {counted(ranks, 'rank')}" if ranks else "")


def _current_phases(cfg: RunConfig, name: str) -> list[str]:
    """The distillation phases of stage ``name`` complete for this configuration (a changed
    KD setting leaves the ILD phases current: crild run keeps them); [] for other stages."""
    if STAGES[name].owner != "distill":
        return []
    stage_cfg = stage_config(cfg, name)
    phases = Path(cfg.output_dir) / f"{stage_cfg.stages.distill.output}.phases"
    return [p.name for p in resolve_phases(stage_cfg.stages.distill) if is_complete(phases / p.name)
            and recorded_fingerprint(phases / p.name) in phase_fingerprints(stage_cfg, p.name)]


def _progress(cfg: RunConfig, name: str) -> str | None:
    """Where an interrupted stage would resume, or None when it has no checkpoint."""
    stage_cfg = stage_config(cfg, name)
    ckpt = STAGES[name].checkpoints(stage_cfg)
    if not ckpt:
        return None
    root = Path(cfg.output_dir) / ckpt
    if STAGES[name].owner != "distill":
        step = _latest_step(root)
        return None if step is None else f"resumable from {step}"
    done, current = _current_phases(cfg, name), None
    for phase in resolve_phases(stage_cfg.stages.distill):
        if phase.name not in done and current is None and (step := _latest_step(root / phase.name)) is not None:
            current = f"phase {phase.name} resumable from {step}"
    if current is None and not done:
        return None
    return ", ".join(filter(None, [current, f"{', '.join(done)} complete" if done else None]))


DAMAGED = "damaged"  # a complete output whose content differs from its recorded hashes


def stage_state(cfg: RunConfig, name: str, running: str | None, verify: bool, after: list[str] | None = None) -> str:
    """What ``crild status`` says of stage ``name``; ``after``: the stages redone before it
    whose outputs it reads (``launch.local.redone_after``), which leave nothing of it current."""
    stage_cfg = stage_config(cfg, name)
    folder = Path(cfg.output_dir) / STAGES[name].output(stage_cfg)
    if running == name:
        return "running"
    if is_complete(folder):
        if recorded_fingerprint(folder) not in stage_fingerprints(stage_cfg, name):
            kept = [] if after else _current_phases(cfg, name)  # a retrained teacher: no phase is kept
            keeping = f", keeping its complete phase{'s' * (len(kept) > 1)} {', '.join(kept)}" if kept else ""
            return f"stale (written for another configuration or other inputs; crild run redoes it{keeping})"
        if after:
            return (f"complete for now; crild run redoes it after {' and '.join(after)}, whose "
                    f"output{'s' * (len(after) > 1)} it reads")
        bad = problems(folder) if verify else []
        return f"{DAMAGED} ({bad[0]}; crild run redoes it)" if bad else "complete"
    progress = _progress(cfg, name)
    if progress:
        return f"interrupted ({progress})"
    try:
        check_output_folder(stage_cfg, name)
    except UserError as err:  # a folder not the stage's where it writes: crild run refuses it
        return f"blocked ({err})"
    return "missing"


def status_lines(cfg: RunConfig, verify: bool = False) -> list[str]:
    return status_report(cfg, verify)[0]


def status_report(cfg: RunConfig, verify: bool = False) -> tuple[list[str], list[str]]:
    """The lines ``crild status`` prints, and the stages whose complete output failed the
    hash check (``verify``), for its exit code: a script's ``crild status --verify`` fails,
    as ``sha256sum -c`` does, where an output is damaged."""
    info = holder(cfg.output_dir)
    running = info.get("stage") if info else None
    head = f"{cfg.output_dir}: " + (f"in use by pid {info.get('pid', '?')} on {info.get('host', '?')} since "
                                    f"{info.get('since', '?')}" if info is not None else "not in use")
    width = max(len(n) for n in cfg.pipeline)
    states = {name: stage_state(cfg, name, running, verify) for name in cfg.pipeline}
    for name, after in redone_after(cfg, states, lambda name: states[name] == "complete").items():
        if after:  # it reads an output crild run redoes first
            states[name] = stage_state(cfg, name, running, verify, after)
    lines = [head] + [f"  {name.ljust(width)}  {state}" for name, state in states.items()]
    lines += [f"  set aside: {path} ({size_text(size)}; checkpoints of another configuration or other inputs, "
              f"never read again: delete them once you no longer need them)" for path, size in set_aside(cfg)]
    return lines, [name for name, state in states.items() if state.startswith(f"{DAMAGED} (")]


def set_aside(cfg: RunConfig) -> list[tuple[Path, int]]:
    """The checkpoint folders moved aside as stale (``<stage>.stale-N``), with their sizes."""
    root = Path(cfg.output_dir) / "checkpoints"
    found = sorted(p for p in root.glob(f"*{STALE_SUFFIX}*") if p.is_dir()) if root.is_dir() else []
    return [(p, sum(f.stat().st_size for f in p.rglob("*") if f.is_file())) for p in found]
