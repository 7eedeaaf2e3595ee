"""The training loop shared by every training stage: one DeepSpeed engine, a loss function
returning (total, named components), periodic evaluation, checkpoints with exact data
position, TensorBoard scalars, a progress bar on rank 0, and a clean stop on SIGUSR1/SIGTERM."""
from __future__ import annotations

import signal
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from pipeline.batching import Collator, epoch_batches, fetch, steps_per_epoch
from pipeline.checkpointing import Checkpoints
from pipeline.config import TrainConfig
from pipeline.distributed import DistInfo, all_reduce_max, all_reduce_sum
from pipeline.errors import UserError
from pipeline.faults import crash_point
from pipeline.progress import Progress
from pipeline.tb import Scalars

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: checkpointed on request, run again to resume

LossFn = Callable[[object, dict, int], tuple[torch.Tensor, dict]]  # (engine, batch, micro-step)


@dataclass(frozen=True)
class LoopPlan:
    steps_per_epoch: int  # micro-steps per epoch on each rank
    total_micro_steps: int
    accumulation: int

    @property
    def total_optimizer_steps(self) -> int:
        return self.total_micro_steps // self.accumulation


def make_plan(n_train: int, cfg: TrainConfig, world_size: int) -> LoopPlan:
    spe = steps_per_epoch(n_train, cfg.batch_size, world_size)
    total = spe * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps * cfg.gradient_accumulation_steps)
    total = max(cfg.gradient_accumulation_steps, total - total % cfg.gradient_accumulation_steps)
    return LoopPlan(spe, total, cfg.gradient_accumulation_steps)


class StopRequest:
    """Set by SIGUSR1/SIGTERM (Slurm preemption and time limits) or after a given number of
    micro-steps (tests); checked collectively at optimizer-step boundaries."""

    def __init__(self, after_micro_steps: Optional[int] = None, install_handlers: bool = True):
        self.requested = False
        self.after = after_micro_steps
        if install_handlers:
            for sig in (signal.SIGUSR1, signal.SIGTERM):
                try:
                    signal.signal(sig, self._handle)
                except ValueError:  # not the main thread
                    pass

    def _handle(self, signum, frame) -> None:
        self.requested = True
        print(f"crild: received {signal.Signals(signum).name}; checkpointing at the next step", file=sys.stderr,
              flush=True)

    def should_stop(self, micro_step: int) -> bool:
        local = self.requested or (self.after is not None and micro_step >= self.after)
        return all_reduce_max(1.0 if local else 0.0) > 0


def _grad_norm_from_params(params) -> Optional[float]:
    norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else None


def _count_nonfinite(total: torch.Tensor) -> int:
    """How many ranks got a NaN/inf loss for this micro-step (the same answer on every rank,
    so no rank waits alone in a collective the others skipped)."""
    bad = 0.0 if bool(torch.isfinite(total.detach())) else 1.0
    return int(all_reduce_sum([bad])[0])


def _zero_loss(params) -> torch.Tensor:
    """A loss of 0 that reaches every trainable parameter: backward gives zero gradients and
    fires every hook ZeRO-1/2 reduces through, as a normal micro-step does."""
    return torch.stack([p.reshape(-1)[:1].sum() for p in params]).sum() * 0.0


def train_loop(*, engine, dist: DistInfo, train_ds, collate: Collator, cfg: TrainConfig, seed: int,
               plan: LoopPlan, loss_fn: LossFn, evaluate: Callable[[], dict], main_metric: str,
               ckpts: Checkpoints, scalars: Scalars, prefix: str, stop: StopRequest, state: dict) -> dict:
    """Train until the plan's last micro-step (or a stop request). ``state`` is the client
    state of the checkpoint resumed from ({} for a fresh run); returns the final state with
    ``finished`` telling whether the plan completed."""
    state = {"micro_step": 0, "best": None, "evals": [], "nonfinite_skipped": 0, **state}
    micro = state["micro_step"]
    lengths = np.asarray(train_ds["length"])
    params = [p for p in engine.module.parameters() if p.requires_grad]
    window, samples, tokens = defaultdict(float), 0, 0
    window_steps, t_window = 0, time.perf_counter()
    batches, batches_epoch = None, None
    progress = Progress(plan.total_micro_steps, micro, prefix, enabled=dist.is_main)

    def run_eval(opt_step: int) -> None:
        crash_point("eval")
        metrics = evaluate()
        if not metrics:
            return
        state["evals"].append({"step": opt_step, "micro_step": micro, **metrics})
        scalars.add({f"{prefix}/eval/{k}": v for k, v in metrics.items()}, opt_step)
        score = metrics.get(main_metric)
        if score is not None and (state["best"] is None or score > state["best"]["score"]):
            state["best"] = {"score": score, "step": opt_step, "metrics": metrics}
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        progress.write(f"[{prefix}] step {opt_step}: {shown}")

    while micro < plan.total_micro_steps:
        epoch, offset = divmod(micro, plan.steps_per_epoch)
        if batches_epoch != epoch:
            batches = epoch_batches(lengths, cfg.batch_size, seed, epoch, dist.world_size, dist.rank,
                                    group_by_length=cfg.group_by_length)
            batches_epoch = epoch
        batch = fetch(train_ds, batches[offset], collate)
        engine.train()
        total, components = loss_fn(engine, batch, micro)
        bad_ranks = _count_nonfinite(total)  # collective: every rank takes the same branch
        if bad_ranks:
            state["nonfinite_skipped"] += 1
            parts = "".join(f", {k} {float(v):.4g}" for k, v in components.items())
            where = (f"non-finite loss at micro-step {micro} (epoch {epoch}; {bad_ranks} of {dist.world_size} "
                     f"rank(s); this rank: loss {float(total.detach()):.4g}{parts})")
            if cfg.on_nonfinite == "stop" or state["nonfinite_skipped"] > cfg.max_nonfinite_skips:
                why = ("" if cfg.on_nonfinite == "stop" else
                       f"{state['nonfinite_skipped']} skipped, more than max_nonfinite_skips; ")
                raise UserError(f"{prefix}: {where}; {why}training stopped, the last good checkpoint is "
                                f"{ckpts.latest_tag() or 'none'} in {ckpts.root}; lower the learning rate "
                                f"or check the data")
            progress.write(f"[{prefix}] skipped the micro-batch: {where}")
            total, components = _zero_loss(params), {}  # every rank drops it: no gradient from it
        engine.backward(total)
        boundary = engine.is_gradient_accumulation_boundary()
        opt_step = (micro + 1) // plan.accumulation
        log_now = boundary and opt_step % cfg.log_every == 0
        manual_norm = _grad_norm_from_params(params) if log_now else None
        engine.step()
        micro += 1
        crash_point("step")
        # accumulate on the device: values reach the host only when logged (no sync per step)
        if not bad_ranks:
            window["loss"] = window["loss"] + total.detach()
        for name, value in components.items():
            window[name] = window[name] + (value.detach() if torch.is_tensor(value) else value)
        window_steps += 0 if bad_ranks else 1
        progress.update(1)
        samples += int(batch["input_ids"].shape[0])
        tokens += int(batch["attention_mask"].sum())

        if log_now:
            gsamples, gtokens = all_reduce_sum([samples, tokens])
            elapsed = max(time.perf_counter() - t_window, 1e-9)
            norm = engine.get_global_grad_norm()
            norm = manual_norm if norm is None else float(norm)
            values = {f"{prefix}/train/{k}": float(v) / max(window_steps, 1) for k, v in window.items()}
            values.update({f"{prefix}/train/lr": engine.get_lr()[0], f"{prefix}/train/grad_norm": norm,
                           f"{prefix}/train/samples_per_s": gsamples / elapsed,
                           f"{prefix}/train/tokens_per_s": gtokens / elapsed,
                           f"{prefix}/train/epoch": micro / plan.steps_per_epoch,
                           f"{prefix}/train/nonfinite_skipped": state["nonfinite_skipped"]})
            scalars.add(values, opt_step)
            progress.update(0, loss=f"{values[f'{prefix}/train/loss']:.4f}")
            window, samples, tokens, window_steps = defaultdict(float), 0, 0, 0
            t_window = time.perf_counter()

        epoch_end = micro % plan.steps_per_epoch == 0 or micro == plan.total_micro_steps
        if (boundary and cfg.eval_every and opt_step % cfg.eval_every == 0) or epoch_end:
            run_eval(opt_step)
        if not boundary:
            continue
        state["micro_step"] = micro
        stopping = stop.should_stop(micro) and micro < plan.total_micro_steps
        if opt_step % cfg.checkpoint_every == 0 or stopping or micro == plan.total_micro_steps:
            ckpts.save(engine, {k: state[k] for k in ("micro_step", "best", "evals", "nonfinite_skipped")},
                       opt_step)
            scalars.flush()
        if stopping:
            progress.close()
            return {**state, "finished": False}
    progress.close()
    scalars.flush()
    return {**state, "finished": True}


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: no decay for biases and LayerNorm weights."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
