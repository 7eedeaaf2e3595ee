"""How many micro-steps a training stage or phase runs, and how they fall into epochs and
optimizer steps."""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.data.batching import steps_per_epoch


@dataclass(frozen=True)
class StepSchedule:
    steps_per_epoch: int  # micro-steps per epoch on each rank
    total_micro_steps: int
    accumulation: int  # micro-steps per optimizer step

    @property
    def total_optimizer_steps(self) -> int:
        return self.total_micro_steps // self.accumulation


def make_schedule(n_train: int, cfg, world_size: int) -> StepSchedule:
    """``cfg.epochs`` over ``n_train`` examples, capped by ``cfg.max_steps``, rounded to whole
    optimizer steps (at least one)."""
    spe = steps_per_epoch(n_train, cfg.batch_size, world_size)
    total = spe * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps * cfg.gradient_accumulation_steps)
    total = max(cfg.gradient_accumulation_steps, total - total % cfg.gradient_accumulation_steps)
    return StepSchedule(spe, total, cfg.gradient_accumulation_steps)
