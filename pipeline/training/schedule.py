"""How many micro-steps a training stage or phase runs, and how they fall into epochs and
optimizer steps."""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.data.batching import steps_per_epoch
from pipeline.errors import UserError
from pipeline.runtime.progress import counted


@dataclass(frozen=True)
class StepSchedule:
    steps_per_epoch: int  # micro-steps per epoch on each rank
    total_micro_steps: int
    accumulation: int  # micro-steps per optimizer step

    @property
    def total_optimizer_steps(self) -> int:
        return self.total_micro_steps // self.accumulation


def make_schedule(n_train: int, cfg, world_size: int, key: str) -> StepSchedule:
    """``cfg.epochs`` over ``n_train`` examples, capped by ``cfg.max_steps``, rounded down to
    whole optimizer steps. Gradient accumulation longer than the whole run is refused: one
    optimizer step would need more passes over the data than the configured epochs (``key``
    is the training section, for the message)."""
    spe = steps_per_epoch(n_train, cfg.batch_size, world_size)
    total = spe * cfg.epochs
    if cfg.gradient_accumulation_steps > total:
        raise UserError(f"{key}.gradient_accumulation_steps: {cfg.gradient_accumulation_steps} micro-steps per "
                        f"optimizer step, and {counted(cfg.epochs, 'epoch')} of {n_train} examples in batches of "
                        f"{cfg.batch_size} on {counted(world_size, 'rank')} make {total}; expected at most {total}")
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps * cfg.gradient_accumulation_steps)
    total -= total % cfg.gradient_accumulation_steps
    return StepSchedule(spe, total, cfg.gradient_accumulation_steps)
