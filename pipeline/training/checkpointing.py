"""DeepSpeed checkpoints plus what exact resumption needs: every rank's RNG state, the
data position, and the trajectory key of the training that wrote them (a checkpoint only
resumes the same trajectory)."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Optional

import torch

from pipeline.errors import UserError, free_bytes, size_text
from pipeline.outputs.integrity import HASHES, problems, write_hashes
from pipeline.runtime.distributed import DistInfo, barrier
from pipeline.runtime.faults import crash_point
from pipeline.runtime.progress import counted, log
from pipeline.runtime.rank_zero import decided_by_main
from pipeline.schema.hashing import config_hash, output_settings, settings_dict
from pipeline.training.checkpoint_folders import FINGERPRINT_FILE, TAG_PREFIX, ranks_that_wrote


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Checkpoints:
    """Checkpoints of one training stage under ``root`` (tags ``step00000120``)."""

    def __init__(self, root: Path, dist: DistInfo, trajectories: tuple[str, ...], keep: int = 2,
                 fingerprint: str = "", extra=None):
        """``trajectories``: the run's trajectory keys (``trajectory_keys``): the first is
        recorded, a checkpoint recording any of them resumes. ``extra``: optional
        (save(tag_dir), load(tag_dir)) for state outside the engine (e.g. the EMA copy of the
        student), saved by every rank before the engine's files."""
        self.extra = extra
        self.root = Path(root)
        self.dist = dist
        self.trajectories = trajectories
        self.keep = keep
        self.fingerprint = fingerprint  # the runner's stage fingerprint, to spot stale checkpoints

    def tags(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name.startswith(TAG_PREFIX))

    def latest_tag(self) -> Optional[str]:
        latest = self.root / "latest"
        return latest.read_text().strip() if latest.is_file() else None

    def save(self, engine, client_state: dict, step: int) -> str:
        tag = f"{TAG_PREFIX}{step:08d}"
        tag_dir = self.root / tag
        tag_dir.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main and self.fingerprint:
            (self.root / FINGERPRINT_FILE).write_text(self.fingerprint)
        torch.save(_rng_state(), tag_dir / f"rng_rank{self.dist.rank}.pt")
        if self.extra is not None:
            self.extra[0](tag_dir)
        barrier()
        state = dict(client_state, config_hash=self.trajectories[0])  # the key's name in older checkpoints
        engine.save_checkpoint(str(self.root), tag=tag, client_state=state, save_latest=True)
        crash_point("checkpoint")
        barrier()
        if self.dist.is_main:
            write_hashes(tag_dir)  # last: a tag without hashes was interrupted while saving
        barrier()
        if self.dist.is_main:
            for old in self.tags()[:-self.keep]:
                shutil.rmtree(self.root / old, ignore_errors=True)
        barrier()
        return tag

    def require_room(self, engine, output: torch.nn.Module) -> None:
        """Before the first step: refuse to train when the file system of the checkpoints
        cannot hold the next checkpoint of ``engine`` and the output model (fp32) beside
        what is there (rank 0 checks; collective)."""
        need = checkpoint_bytes(engine) + 4 * full_numel(output.parameters())

        def check() -> None:
            free = free_bytes(self.root)
            if free < need:
                raise UserError(f"{self.root}: {size_text(free)} free on its file system, where the next checkpoint "
                                f"and the output need at least {size_text(need)}; free space there or choose another "
                                f"output_dir")

        decided_by_main(check)

    def intact_tag(self) -> Optional[str]:
        """The newest checkpoint whose files match their recorded hashes; a truncated or
        corrupted newer one is reported and skipped. Rank 0 reads the files, the others
        receive its answer."""
        return decided_by_main(self._newest_intact)

    def _newest_intact(self) -> Optional[str]:
        tags = self.tags()
        latest = self.latest_tag()
        newer = tags[tags.index(latest) + 1:] if latest in tags else []
        damaged = 0
        for tag in reversed(tags):
            if tag in newer or not (self.root / tag / HASHES).is_file():
                # newer than `latest`, or without hashes (written last): saving was interrupted (a
                # kill, a full disk), so the tag never existed as far as resuming goes; it is
                # removed (its space may be needed), not counted as damage
                print(f"crild: checkpoint {self.root / tag} was interrupted while saving; removing it and "
                      f"trying an older one", file=sys.stderr, flush=True)
                shutil.rmtree(self.root / tag, ignore_errors=True)
                continue
            bad = problems(self.root / tag)
            if not bad:
                return tag
            damaged += 1
            print(f"crild: checkpoint {self.root / tag} is not intact ({bad[0]}); trying an older one",
                  file=sys.stderr, flush=True)
        if damaged:
            raise UserError(f"{self.root}: no intact checkpoint left ({damaged} damaged); delete the folder to "
                            f"start the stage over")
        return None

    def load(self, engine) -> Optional[dict]:
        """Restore the newest intact checkpoint into ``engine``; None when there is none."""
        tag = self.intact_tag()
        if tag is None:
            return None
        self._check_world_size(tag)
        path, state = engine.load_checkpoint(str(self.root), tag=tag, load_optimizer_states=True,
                                             load_lr_scheduler_states=True)
        if path is None:
            raise UserError(f"{self.root / tag}: checkpoint could not be loaded")
        if state.get("config_hash") not in self.trajectories:
            raise UserError(f"{self.root / tag}: checkpoint was written by a different configuration "
                            f"(hash {state.get('config_hash')}, this run {self.trajectories[0]}); "
                            f"use a new output_dir or delete {self.root}")
        rng_file = self.root / tag / f"rng_rank{self.dist.rank}.pt"
        if rng_file.is_file():
            _set_rng_state(torch.load(rng_file, weights_only=True))
        if self.extra is not None:
            self.extra[1](self.root / tag)
        return state

    def _check_world_size(self, tag: str) -> None:
        """The checkpoint was written by as many ranks as this run has (each writes its RNG
        state): ZeRO's partitioned optimizer state does not load on another number, where
        DeepSpeed raised a traceback, and at ZeRO-0 the global batch and each rank's data
        would change mid-stage, so the resume would not continue the same training."""
        written = ranks_that_wrote(self.root / tag)
        if written and written != self.dist.world_size:
            raise UserError(f"{self.root / tag}: checkpoint written by {counted(written, 'rank')}, and this run has "
                            f"{self.dist.world_size}; a resume continues the same training only on as many (the "
                            f"global batch, each rank's data and ZeRO's optimizer partitions depend on it): run it on "
                            f"{written} (num_ranks: {written}), or move {self.root} away to start over")


def full_numel(params, trainable_only: bool = False) -> int:
    """Elements of ``params`` (their full size under ZeRO-3, which partitions them)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in params if p.requires_grad or not trainable_only)


def checkpoint_bytes(engine) -> int:
    """A lower bound on one checkpoint of ``engine``: its module's weights as they are held,
    plus AdamW's two fp32 moments per trainable parameter (a fp32 master copy, kept under
    bf16 and ZeRO, adds 4 bytes more a parameter)."""
    params = list(engine.module.parameters())
    weights = sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for p in params)
    return weights + 8 * full_numel(params, trainable_only=True)


def trajectory_keys(cfg, section: str, extra: dict, section_settings=None) -> tuple[str, ...]:
    """What determines a training run's trajectory: the seed, the task, the section's
    training settings (``stages.<section>``, less how often it checkpoints and logs;
    ``section_settings`` turns them into the part the run reads, where it reads less, as a
    distillation phase reads the phases before it and not those after) and ``extra`` (the
    model, the DeepSpeed config, the phase, the teacher). A checkpoint resumes only into the
    same trajectory. The first key is the one checkpoints record; the second, where it
    differs, is the key of crild versions that counted the bookkeeping settings."""
    def key(settings) -> str:
        own = settings(getattr(cfg.stages, section))
        return config_hash({"seed": cfg.seed, "task": settings(cfg.task), "stage": section,
                            "settings": section_settings(own) if section_settings else own, **extra})

    return tuple(dict.fromkeys((key(output_settings), key(settings_dict))))


def resume(engine, ckpts: Checkpoints, name: str, total_micro_steps: int) -> dict:
    """Restore ``engine`` from the newest intact checkpoint; its client state, or {} when
    training starts fresh."""
    state = ckpts.load(engine) or {}
    if state:
        log(ckpts.dist, f"{name}: resuming at micro-step {state['micro_step']} of {total_micro_steps}")
    return state
