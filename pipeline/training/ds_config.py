"""Load a DeepSpeed JSON from ds_configs/ and fill its "auto" values from the stage's
settings; explicit values that contradict the stage's settings are errors."""
from __future__ import annotations

import copy
import functools
import inspect
from pathlib import Path

import torch

from pipeline.errors import UserError
from pipeline.runtime.deepspeed_noise import import_deepspeed
from pipeline.runtime.progress import note
from pipeline.training.ds_files import load_ds_json
from pipeline.training.ds_value_types import (
    AUTO,
    check_by_building,
    check_combinations,
    check_runs_here,
    check_value_types,
    ignored_keys,
    scheduler_class,
    suggestion,
)

_DS_SECTIONS = {"DeepSpeedZeroConfig": "zero_optimization", "DeepSpeedBF16Config": "bf16",
                "DeepSpeedFP16Config": "fp16", "DeepSpeedZeroOffloadOptimizerConfig": "zero_optimization.offload_optimizer",
                "DeepSpeedZeroOffloadParamConfig": "zero_optimization.offload_param"}


def check_with_deepspeed(cfg: dict, path: Path) -> None:
    """What DeepSpeed itself would reject, said now with the file's name: an optimizer or
    scheduler it does not know, and whatever its own config classes refuse (a ZeRO stage
    out of range, an unknown ZeRO key, ...)."""
    import_deepspeed()  # quietly, where it is first imported (a runner's checks)
    from deepspeed.runtime import lr_schedules
    from deepspeed.runtime.config import DEEPSPEED_OPTIMIZERS, DeepSpeedConfig, DeepSpeedConfigError
    from pydantic import ValidationError

    for section, known in (("optimizer", lambda n: n.lower() in DEEPSPEED_OPTIMIZERS or hasattr(torch.optim, n)),
                           ("scheduler", lambda n: hasattr(lr_schedules, n) or hasattr(torch.optim.lr_scheduler, n))):
        name = (cfg.get(section) or {}).get("type")
        if name is not None and not (isinstance(name, str) and known(name)):
            raise UserError(f"{path}: {section}.type: DeepSpeed has no {section} {name!r}")
    check = copy.deepcopy(cfg)
    check.pop("train_batch_size", None)  # checked against the world size by build_ds_config
    try:
        DeepSpeedConfig(check)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join([_DS_SECTIONS.get(err.title, err.title), *(str(p) for p in first["loc"])])
        if first["type"] == "extra_forbidden" and first["loc"]:
            raise UserError(f"{path}: unknown key '{where}'; "
                            f"{suggestion(first['loc'][-1], _model_keys(err.title, first['loc'][:-1]))}") from None
        raise UserError(f"{path}: {where}: DeepSpeed rejects it ({first['msg']}, got {first.get('input')!r})") \
            from None
    except (DeepSpeedConfigError, AssertionError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: DeepSpeed rejects it: {str(err).splitlines()[0] if str(err) else type(err).__name__}") \
            from None


def _model_keys(title: str, inside: tuple) -> list[str]:
    """The keys DeepSpeed's pydantic section ``title`` (a model class's name) takes at
    ``inside`` (the field names leading to a nested model): fields and their aliases."""
    import typing

    from deepspeed.runtime.config_utils import DeepSpeedConfigModel

    classes, todo = {}, [DeepSpeedConfigModel]
    while todo:
        cls = todo.pop()
        classes.setdefault(cls.__name__, cls)
        todo.extend(cls.__subclasses__())
    model = classes.get(title)
    for name in inside:
        field = getattr(model, "model_fields", {}).get(name)
        kinds = (field.annotation, *typing.get_args(field.annotation)) if field else ()
        model = next((k for k in kinds if isinstance(k, type) and issubclass(k, DeepSpeedConfigModel)), None)
    fields = getattr(model, "model_fields", {})
    return sorted({*fields, *(f.alias for f in fields.values() if f.alias)})


# What a DeepSpeed config without an optimizer or scheduler section trains with: the stage's
# AdamW and linear warmup and decay, as ds_configs/ spell them out (and as transformers'
# Trainer does). Without them DeepSpeed builds an engine that cannot step, or keeps the
# learning rate constant and ignores warmup_ratio.
DEFAULT_OPTIMIZER = {"type": "AdamW",
                     "params": {"lr": AUTO, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": AUTO}}
TORCH_FUSED_ADAMW = {"torch_adam": True, "fused": True}  # where the optimizer's states stay on the device
DEFAULT_SCHEDULER = {"type": "WarmupDecayLR",
                     "params": {"warmup_min_lr": 0, "warmup_max_lr": AUTO, "warmup_num_steps": AUTO,
                                "total_num_steps": AUTO, "warmup_type": "linear"}}


def default_sections(cfg: dict) -> dict:
    """``cfg`` with crild's optimizer and scheduler where it names none (in place): torch's
    fused AdamW, or DeepSpeed's CPU Adam where ZeRO offloads the optimizer."""
    if "optimizer" not in cfg:
        opt = copy.deepcopy(DEFAULT_OPTIMIZER)
        offload = ((cfg.get("zero_optimization") or {}).get("offload_optimizer") or {}).get("device", "none")
        if offload in (None, "none"):
            opt["params"].update(TORCH_FUSED_ADAMW)
        cfg["optimizer"] = opt
    if "scheduler" not in cfg:
        cfg["scheduler"] = copy.deepcopy(DEFAULT_SCHEDULER)
    return cfg


def _fill(node: dict, key: str, value, where: str, path: Path, yaml_key: str) -> None:
    current = node.get(key, AUTO)
    if current == AUTO:
        node[key] = value
    elif current != value and not (isinstance(value, float) and isinstance(current, (int, float))
                                   and abs(float(current) - value) <= 1e-12 * abs(value)):
        raise UserError(f"{path}: {where}={current!r} contradicts {yaml_key}={value!r}; "
                        f"set it to \"auto\" or make them agree")


def _fill_auto(node: dict, key: str, value, *_) -> None:
    """``_fill`` where the value is not known yet: "auto" gets a stand-in, anything else stays."""
    if node.get(key, AUTO) == AUTO:
        node[key] = value


def build_ds_config(path: str, train, world_size: int, total_steps: int | None, source: str,
                    stage: str, hidden_size: int | None = None, device_checks: bool = True) -> dict:
    """The DeepSpeed config dict for one training stage. ZeRO bucket sizes set to "auto" are
    sized from the model's hidden size h (h^2 elements, as transformers does): DeepSpeed's
    own default reduce bucket (5e8 elements) is a 1 GB buffer, more than a BERT-base student.

    Before a run starts (``pipeline.launch.preflight``) the step count is not known yet
    (``total_steps`` None: the scheduler's step settings are not checked against it) and the
    machine may not be the one that trains (``device_checks`` False: fp16 and bf16 are not
    checked against this machine's GPU)."""
    p, cfg = load_ds_json(path, source)
    check_value_types(cfg, p, stage)
    ignored = ignored_keys(cfg)
    cfg = default_sections(copy.deepcopy(cfg))
    y = f"stages.{stage}"
    _fill_batch(cfg, train, world_size, p, y)
    _fill(cfg, "gradient_clipping", train.max_grad_norm, "gradient_clipping", p, f"{y}.max_grad_norm")
    params = cfg["optimizer"].setdefault("params", {})
    _fill(params, "lr", train.learning_rate, "optimizer.params.lr", p, f"{y}.learning_rate")
    _fill(params, "weight_decay", train.weight_decay, "optimizer.params.weight_decay", p, f"{y}.weight_decay")
    _fill_scheduler(cfg["scheduler"], train, total_steps, p, y)
    _fill_transformers_autos(cfg, device_checks, p, note_it=total_steps is not None)
    if hidden_size is not None:
        fill_zero_buckets(cfg, hidden_size)
    cfg.setdefault("steps_per_print", 10**9)
    cfg.setdefault("wall_clock_breakdown", False)
    check_combinations(cfg, p)
    if device_checks:
        _check_precision(cfg, p)
        check_runs_here(cfg, p)
    if train.on_nonfinite == "skip" and zero_stage(cfg) == 3:
        raise UserError(f"{y}.on_nonfinite: skip is not supported with ZeRO-3 ({p}); use stop, or ZeRO 0-2")
    leftovers = _find_auto(cfg)
    if leftovers:
        raise UserError(f"{p}: {leftovers[0]} is \"auto\" but crild has no setting to fill it from")
    check_by_building(cfg, p)
    check_with_deepspeed(cfg, p)
    if total_steps is not None:  # in the stage, not in a runner's checks before it
        _note_unused_settings(cfg, p, y)
        if ignored:
            _note_once(f"note: {p}: DeepSpeed does not know {', '.join(map(repr, ignored))} and ignores "
                       f"{'it' if len(ignored) == 1 else 'them'} (start a key of your own with '_')")
    return cfg


@functools.lru_cache(maxsize=None)
def _note_once(message: str) -> None:
    """``note`` once per process: a stage of two phases builds its config twice."""
    note(message)


# DeepSpeed schedulers that set the learning rate from their own params (cycle_min_lr, ...)
SETS_ITS_OWN_LR = ("OneCycle", "LRRangeTest")


def _note_unused_settings(cfg: dict, path: Path, section: str) -> None:
    """Say which of the stage's settings the scheduler of ``cfg`` makes meaningless: the
    learning rate where it sets its own, warmup_ratio where it has no warmup."""
    scheduler, cls = cfg["scheduler"]["type"], scheduler_class(cfg)
    unused = ["learning_rate"] if scheduler in SETS_ITS_OWN_LR else []
    if cls is not None and "warmup_num_steps" not in inspect.signature(cls).parameters:
        unused.append("warmup_ratio")
    if unused:
        note(f"note: {path}: scheduler {scheduler} does not use {section}.{' or '.join(unused)}")


def _fill_transformers_autos(cfg: dict, on_the_training_machine: bool, path: Path, note_it: bool) -> None:
    """The "auto" values of transformers' DeepSpeed configs that crild has no setting for, so
    that such a config works as it is: AdamW's betas and eps and the warmup's starting rate
    as ``ds_configs/`` spell them out, fp16 off (crild trains in bf16 or fp32), and bf16
    where the training machine's GPU has it (fp32 elsewhere, and in a runner's checks, which
    may run on another machine)."""
    def where_auto(node: dict, key: str, value) -> None:  # only a value written "auto", never a missing one
        if node.get(key) == AUTO:
            node[key] = value

    params = cfg["optimizer"].get("params") or {}
    where_auto(params, "betas", list(DEFAULT_OPTIMIZER["params"]["betas"]))
    where_auto(params, "eps", DEFAULT_OPTIMIZER["params"]["eps"])
    where_auto(cfg["scheduler"].get("params") or {}, "warmup_min_lr", 0)
    where_auto(cfg.get("fp16") or {}, "enabled", False)
    bf16 = cfg.get("bf16") or {}
    if bf16.get("enabled") == AUTO:
        bf16["enabled"] = bool(on_the_training_machine and torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        if note_it:
            note(f"note: {path}: bf16.enabled \"auto\" is {str(bf16['enabled']).lower()} on this machine "
                 f"({'a GPU with bf16' if bf16['enabled'] else 'no GPU with bf16: fp32'})")


def _fill_batch(cfg: dict, train, world_size: int, p: Path, y: str) -> None:
    """The micro batch, accumulation and global batch, from the stage's settings."""
    _fill(cfg, "train_micro_batch_size_per_gpu", train.batch_size, "train_micro_batch_size_per_gpu", p,
          f"{y}.batch_size")
    _fill(cfg, "gradient_accumulation_steps", train.gradient_accumulation_steps, "gradient_accumulation_steps", p,
          f"{y}.gradient_accumulation_steps")
    global_batch = train.batch_size * train.gradient_accumulation_steps * world_size
    tbs = cfg.get("train_batch_size", AUTO)
    if tbs == AUTO:
        cfg["train_batch_size"] = global_batch
    elif tbs != global_batch:
        raise UserError(f"{p}: train_batch_size={tbs} contradicts world size {world_size} x micro batch "
                        f"{train.batch_size} x gradient accumulation {train.gradient_accumulation_steps} "
                        f"= {global_batch}; set it to \"auto\"")


def _fill_scheduler(sched: dict, train, total_steps: int | None, p: Path, y: str) -> None:
    """The warmup and step counts of DeepSpeed's own schedulers, from the stage's settings
    (stand-ins where ``total_steps`` is not known yet)."""
    params = sched.setdefault("params", {})
    steps = total_steps or 1
    warmup = max(1, int(round(train.warmup_ratio * steps)))  # DeepSpeed needs >= 1
    fill_steps = _fill if total_steps is not None else _fill_auto
    if "warmup_max_lr" in params or sched.get("type") in ("WarmupLR", "WarmupDecayLR", "WarmupCosineLR"):
        if sched.get("type") != "WarmupCosineLR":
            _fill(params, "warmup_max_lr", train.learning_rate, "scheduler.params.warmup_max_lr", p,
                  f"{y}.learning_rate")
        fill_steps(params, "warmup_num_steps", warmup, "scheduler.params.warmup_num_steps", p, f"{y}.warmup_ratio")
    if sched.get("type") in ("WarmupDecayLR", "WarmupCosineLR"):
        fill_steps(params, "total_num_steps", steps, "scheduler.params.total_num_steps", p, "the stage's step count")


def fill_zero_buckets(cfg: dict, hidden_size: int) -> dict:
    """ZeRO bucket sizes left "auto", sized from the model's hidden size (in place)."""
    zero = cfg.get("zero_optimization", {})
    for key, value in (("reduce_bucket_size", hidden_size ** 2),
                       ("stage3_prefetch_bucket_size", int(0.9 * hidden_size ** 2)),
                       ("stage3_param_persistence_threshold", 10 * hidden_size)):
        if zero.get(key) == AUTO:
            zero[key] = value
    return cfg


def _find_auto(node, prefix="") -> list[str]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _find_auto(v, f"{prefix}{k}.")
    elif node == AUTO:
        out.append(prefix.rstrip("."))
    return out


def _check_precision(cfg: dict, path: Path) -> None:
    fp16 = cfg.get("fp16", {}).get("enabled", False)
    bf16 = cfg.get("bf16", {}).get("enabled", False)
    if fp16 is True and not torch.cuda.is_available():
        raise UserError(f"{path}: fp16.enabled is true, but DeepSpeed supports fp16 only on GPUs; "
                        f"use bf16 or fp32 on CPU")
    if bf16 is True and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise UserError(f"{path}: bf16.enabled is true, but this GPU has no bf16 support; use fp16")


def precision_dtype(cfg: dict) -> torch.dtype:
    if cfg.get("bf16", {}).get("enabled", False):
        return torch.bfloat16
    if cfg.get("fp16", {}).get("enabled", False):
        return torch.float16
    return torch.float32


def zero_stage(cfg: dict) -> int:
    return int(cfg.get("zero_optimization", {}).get("stage", 0))
