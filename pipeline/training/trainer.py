"""The training loop every training stage and distillation phase shares: one DeepSpeed
engine, a loss function returning (total, named components), periodic evaluation,
checkpoints with the exact data position, TensorBoard scalars, a progress line on rank 0,
and a clean stop on request."""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from pipeline.data.batching import Collator, epoch_batches, fetch
from pipeline.errors import UserError
from pipeline.runtime.distributed import DistInfo, all_reduce_max, all_reduce_sum
from pipeline.runtime.faults import crash_point
from pipeline.runtime.progress import Progress, counted
from pipeline.training.checkpointing import Checkpoints
from pipeline.training.scalars import Scalars
from pipeline.training.schedule import StepSchedule
from pipeline.training.stop import StopRequest

LossFn = Callable[[object, dict, int], tuple[torch.Tensor, dict]]  # (engine, batch, micro-step)
CLIENT_STATE = ("micro_step", "best", "evals", "nonfinite_skipped")  # what a checkpoint carries


class _LogWindow:
    """Loss components summed on the device between two log points: values reach the host
    only when logged, not once per step."""

    def __init__(self):
        self.sums, self.steps, self.samples, self.tokens = defaultdict(float), 0, 0, 0
        self.start = time.perf_counter()

    def add(self, total: Optional[torch.Tensor], components: dict, batch: dict) -> None:
        if total is not None:  # a skipped non-finite micro-batch adds no loss
            self.sums["loss"] = self.sums["loss"] + total.detach()
            self.steps += 1
        for name, value in components.items():
            self.sums[name] = self.sums[name] + (value.detach() if torch.is_tensor(value) else value)
        self.samples += int(batch["input_ids"].shape[0])
        self.tokens += int(batch["attention_mask"].sum())

    def values(self, prefix: str) -> dict:
        """Means over the window and throughput over all ranks (a collective)."""
        samples, tokens = all_reduce_sum([self.samples, self.tokens])
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        out = {f"{prefix}/train/{k}": float(v) / max(self.steps, 1) for k, v in self.sums.items()}
        out.update({f"{prefix}/train/samples_per_s": samples / elapsed, f"{prefix}/train/tokens_per_s": tokens / elapsed})
        return out


def _grad_norm_from_params(params) -> Optional[float]:
    norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else None


def _count_nonfinite(total: torch.Tensor) -> int:
    """How many ranks got a NaN/inf loss for this micro-step (the same answer on every rank,
    so no rank waits alone in a collective the others skipped). One host synchronisation per
    micro-step: only ``on_nonfinite: skip`` needs to know before the backward pass."""
    bad = 0.0 if bool(torch.isfinite(total.detach())) else 1.0
    return int(all_reduce_sum([bad])[0])


class _FirstNonFinite:
    """The first micro-step whose loss was NaN/inf, tracked on the device (no host
    synchronisation per step) and read where the loop synchronises anyway: at log points,
    before a checkpoint is written and at the end. ``on_nonfinite: stop`` then stops with
    nothing of the bad steps saved: the last checkpoint stays good."""

    def __init__(self):
        self.step = self.loss = None

    def note(self, total: torch.Tensor, micro: int) -> None:
        value = total.detach().float()
        if self.step is None:
            self.step = torch.full((), -1, dtype=torch.long, device=value.device)
            self.loss = torch.zeros((), device=value.device)
        new = ~torch.isfinite(value) & (self.step < 0)
        self.step = torch.where(new, torch.full_like(self.step, micro), self.step)
        self.loss = torch.where(new, value, self.loss)

    def read(self) -> tuple[int, int, float]:
        """(first bad micro-step over all ranks or -1, ranks that saw one, this rank's loss)."""
        local = int(self.step) if self.step is not None else -1
        ranks, negated_first = all_reduce_sum([1.0 if local >= 0 else 0.0])[0], \
            all_reduce_max(-(local if local >= 0 else 2**62))
        return (int(-negated_first) if ranks else -1), int(ranks), float(self.loss) if local >= 0 else float("nan")


def _zero_loss(params) -> torch.Tensor:
    """A loss of 0 that reaches every trainable parameter: backward gives zero gradients and
    fires every hook ZeRO-1/2 reduces through, as a normal micro-step does."""
    return torch.stack([p.reshape(-1)[:1].sum() for p in params]).sum() * 0.0


def _nonfinite_message(total, components: dict, micro: int, epoch: int, bad_ranks: int, world_size: int) -> str:
    parts = "".join(f", {k} {float(v):.4g}" for k, v in components.items())
    return (f"non-finite loss at micro-step {micro} (epoch {epoch}; {bad_ranks} of {counted(world_size, 'rank')}; "
            f"this rank: loss {float(total.detach()):.4g}{parts})")


@dataclass
class _Loop:
    """One training run's moving parts; ``train_loop`` is its public face."""

    engine: object
    dist: DistInfo
    cfg: object  # TrainConfig
    schedule: StepSchedule
    evaluate: Callable[[], dict]
    main_metric: str
    ckpts: Checkpoints
    scalars: Scalars
    prefix: str
    stop: StopRequest
    state: dict
    progress: Progress
    micro: int = 0
    nonfinite: _FirstNonFinite = field(default_factory=_FirstNonFinite)
    saved_at: float = field(default_factory=time.monotonic)  # the last checkpoint (or the start), for checkpoint_minutes

    def run_eval(self, opt_step: int) -> None:
        crash_point("eval")
        metrics = self.evaluate()
        if not metrics:
            return
        state = self.state
        state["evals"].append({"step": opt_step, "micro_step": self.micro, **metrics})
        self.scalars.add({f"{self.prefix}/eval/{k}": v for k, v in metrics.items()}, opt_step)
        score = metrics.get(self.main_metric)
        if score is not None and (state["best"] is None or score > state["best"]["score"]):
            state["best"] = {"score": score, "step": opt_step, "metrics": metrics}
        self.progress.write(f"[{self.prefix}] step {opt_step}: " +
                            ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    def stop_if_nonfinite(self) -> None:
        """``on_nonfinite: stop``: one line naming the first bad step, before anything of
        the bad steps is saved (every rank reads the flags at the same points)."""
        if self.cfg.on_nonfinite != "stop":
            return
        first, ranks, loss = self.nonfinite.read()
        if first < 0:
            return
        epoch = first // self.schedule.steps_per_epoch
        raise UserError(f"{self.prefix}: non-finite loss at micro-step {first} (epoch {epoch}; {ranks} of "
                        f"{counted(self.dist.world_size, 'rank')}; this rank: loss {loss:.4g}); training stopped, the last good "
                        f"checkpoint is {self.ckpts.latest_tag() or 'none'} in {self.ckpts.root}; lower the learning "
                        f"rate or check the data")

    def skip(self, total, components: dict, epoch: int, bad_ranks: int) -> None:
        """``on_nonfinite: skip``: the micro-batch is dropped and counted; past
        max_nonfinite_skips of them, one line and a stop."""
        self.state["nonfinite_skipped"] += 1
        skipped = self.state["nonfinite_skipped"]
        where = _nonfinite_message(total, components, self.micro, epoch, bad_ranks, self.dist.world_size)
        if skipped > self.cfg.max_nonfinite_skips:
            raise UserError(f"{self.prefix}: {where}; {skipped} skipped, more than max_nonfinite_skips; training "
                            f"stopped, the last good checkpoint is {self.ckpts.latest_tag() or 'none'} in "
                            f"{self.ckpts.root}; lower the learning rate or check the data")
        self.progress.write(f"[{self.prefix}] skipped the micro-batch: {where}")

    def log_point(self, window: _LogWindow, opt_step: int, manual_norm: Optional[float]) -> None:
        self.stop_if_nonfinite()
        norm = self.engine.get_global_grad_norm()
        p = self.prefix
        values = window.values(p)
        values.update({f"{p}/train/lr": self.engine.get_lr()[0],
                       f"{p}/train/grad_norm": manual_norm if norm is None else float(norm),
                       f"{p}/train/epoch": self.micro / self.schedule.steps_per_epoch,
                       f"{p}/train/nonfinite_skipped": self.state["nonfinite_skipped"]})
        self.scalars.add(values, opt_step)
        self.progress.update(0, loss=f"{values[f'{p}/train/loss']:.4f}")

    def checkpoint_or_stop(self, opt_step: int) -> bool:
        """At an optimizer-step boundary: checkpoint when due (by steps or by the clock) or
        stopping; True to stop."""
        last = self.schedule.total_micro_steps
        self.state["micro_step"] = self.micro
        by_steps = opt_step % self.cfg.checkpoint_every == 0 or self.micro == last
        minutes = self.cfg.checkpoint_minutes
        due = minutes is not None and time.monotonic() - self.saved_at >= 60 * minutes
        stop, by_clock = self.stop.at_boundary(self.micro, due=due, saving=by_steps)
        stopping = stop and self.micro < last
        if by_steps or stopping or by_clock:
            self.stop_if_nonfinite()
            self.ckpts.save(self.engine, {k: self.state[k] for k in CLIENT_STATE}, opt_step)
            self.scalars.flush()
            self.saved_at = time.monotonic()
        return stopping


def train_loop(*, engine, dist: DistInfo, train_ds, collate: Collator, cfg, seed: int, schedule: StepSchedule,
               loss_fn: LossFn, evaluate: Callable[[], dict], main_metric: str, ckpts: Checkpoints,
               scalars: Scalars, prefix: str, stop: StopRequest, state: dict) -> dict:
    """Train until the schedule's last micro-step (or a stop request). ``state`` is the
    client state of the checkpoint resumed from ({} for a fresh run); returns the final state
    with ``finished`` telling whether the schedule completed."""
    state = {"micro_step": 0, "best": None, "evals": [], "nonfinite_skipped": 0, **state}
    loop = _Loop(engine, dist, cfg, schedule, evaluate, main_metric, ckpts, scalars, prefix, stop, state,
                 Progress(schedule.total_micro_steps, state["micro_step"], prefix, enabled=dist.is_main),
                 micro=state["micro_step"])
    lengths = np.asarray(train_ds["length"])
    params = [p for p in engine.module.parameters() if p.requires_grad]
    window = _LogWindow()
    batches, batches_epoch = None, None
    while loop.micro < schedule.total_micro_steps:
        epoch, offset = divmod(loop.micro, schedule.steps_per_epoch)
        if batches_epoch != epoch:
            batches = epoch_batches(lengths, cfg.batch_size, seed, epoch, dist.world_size, dist.rank,
                                    group_by_length=cfg.group_by_length)
            batches_epoch = epoch
        batch = fetch(train_ds, batches[offset], collate)
        engine.train()
        total, components = loss_fn(engine, batch, loop.micro)
        bad_ranks = 0
        if cfg.on_nonfinite == "skip":
            bad_ranks = _count_nonfinite(total)  # collective: every rank takes the same branch
            if bad_ranks:
                loop.skip(total, components, epoch, bad_ranks)
                total, components = _zero_loss(params), {}  # every rank drops it: no gradient from it
        else:
            loop.nonfinite.note(total, loop.micro)
        engine.backward(total)
        boundary = engine.is_gradient_accumulation_boundary()
        opt_step = (loop.micro + 1) // schedule.accumulation
        log_now = boundary and opt_step % cfg.log_every == 0
        manual_norm = _grad_norm_from_params(params) if log_now else None
        engine.step()
        loop.micro += 1
        crash_point("step")
        window.add(None if bad_ranks else total, components, batch)
        loop.progress.update(1)
        if log_now:
            loop.log_point(window, opt_step, manual_norm)
            window = _LogWindow()
        epoch_end = loop.micro % schedule.steps_per_epoch == 0 or loop.micro == schedule.total_micro_steps
        if (boundary and cfg.eval_every and opt_step % cfg.eval_every == 0) or epoch_end:
            loop.run_eval(opt_step)
        if boundary and loop.checkpoint_or_stop(opt_step):
            loop.progress.close()
            return {**state, "finished": False}
    loop.stop_if_nonfinite()
    stop.drain()
    loop.progress.close()
    scalars.flush()
    return {**state, "finished": True}
