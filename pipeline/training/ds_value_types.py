"""The parts of a DeepSpeed config that DeepSpeed takes without checking, checked before a
run starts so that a wrong value is one line naming the file and key.

DeepSpeed validates its nested sections (``zero_optimization``, ``bf16``, ...) with pydantic
(``ds_config.check_with_deepspeed``) but reads its top-level settings as plain dict values
("false" counts as true, "x" fails at the first logged step), expects its sections to be
objects without saying so, and passes the optimizer's and scheduler's ``params`` as keyword
arguments to classes that fail, at engine build or the first step, on a key they do not take
or a string for a number, and ignores a key it does not know. Here key names are checked
against the names in DeepSpeed's own config sources, the top-level settings have a table
(kept in step with DeepSpeed by a test), and the ``params`` are judged by the signature of
the class DeepSpeed will build (the keys it takes, the ones it needs, the types of its
defaults), then by building it on a stand-in parameter. Settings DeepSpeed takes together
and then ignores or fails on (an offload the ZeRO stage does not do, an optimizer ZeRO has
not tested, an optimizer op or monitor package this machine lacks) are refused too."""
from __future__ import annotations

import difflib
import functools
import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from pipeline.errors import UserError
from pipeline.runtime.deepspeed_noise import deepspeed_quiet, import_deepspeed

AUTO = "auto"


@dataclass(frozen=True)
class Kind:
    """What a value must be, said as the error says it."""
    expected: str
    accepts: Callable[[object], bool]


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


BOOL = Kind("true or false", lambda v: isinstance(v, bool))
WHOLE = Kind("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool))
POSITIVE_WHOLE = Kind("a whole number >= 1", lambda v: WHOLE.accepts(v) and v >= 1)
NUMBER = Kind("a number", _number)
TEXT = Kind("a string", lambda v: isinstance(v, str))
OBJECT = Kind("an object ({...})", lambda v: isinstance(v, dict))
OBJECT_OR_NULL = Kind("an object ({...}) or null", lambda v: v is None or isinstance(v, dict))

# DeepSpeed's top-level scalar settings (those DeepSpeedConfig reads with get_scalar_param).
TOP_LEVEL = {
    "train_batch_size": POSITIVE_WHOLE, "train_micro_batch_size_per_gpu": POSITIVE_WHOLE,
    "gradient_accumulation_steps": POSITIVE_WHOLE, "steps_per_print": POSITIVE_WHOLE,
    "gradient_clipping": NUMBER, "gradient_predivide_factor": NUMBER, "prescale_gradients": BOOL,
    "managed_gradient_accumulation": BOOL, "dump_state": BOOL, "disable_python_gc": BOOL,
    "disable_allgather": BOOL, "communication_data_type": TEXT, "seq_parallel_communication_data_type": TEXT,
    "gradient_allreduce_op": TEXT, "zero_allow_untested_optimizer": BOOL, "zero_force_ds_cpu_optimizer": BOOL,
    "wall_clock_breakdown": BOOL, "memory_breakdown": BOOL, "use_data_before_expert_parallelism": BOOL,
    "dataloader_drop_last": BOOL, "log_level": TEXT,
}
# Nested values crild reads itself, where pydantic's coercion ("false" to False) would make
# DeepSpeed and crild disagree.
READ_BY_CRILD = {"bf16.enabled": BOOL, "fp16.enabled": BOOL, "zero_optimization.stage": WHOLE}

# Top-level keys DeepSpeed (or crild) reads as objects, and the objects inside them crild reads.
SECTIONS = ("optimizer", "scheduler", "zero_optimization", "bf16", "fp16", "amp", "activation_checkpointing",
            "tensorboard", "wandb", "csv_monitor", "comet", "flops_profiler", "aio", "compile", "checkpoint",
            "data_types", "comms_logger", "torch_autocast", "optimizer.params", "scheduler.params")
OPTIONAL_SECTIONS = ("zero_optimization.offload_optimizer", "zero_optimization.offload_param")  # null: none
NAMED = ("optimizer", "scheduler")  # sections DeepSpeed ignores, or cannot step with, without a "type"
# dotted key -> what its value must be: sections first, so a section that is not an object
# is named as such before anything inside it
CHECKED = {**dict.fromkeys(SECTIONS, OBJECT), **dict.fromkeys(OPTIONAL_SECTIONS, OBJECT_OR_NULL), **TOP_LEVEL,
           **READ_BY_CRILD}

# optimizer.params keys DeepSpeed takes out before building the optimizer
DEEPSPEED_OWN_PARAMS = {"adam_w_mode", "torch_adam", "fp32_optimizer_states", "foreach"}
# params crild fills from the stage's settings where they are left out (ds_config.build_ds_config)
FILLED_BY_CRILD = {"optimizer": {"lr", "weight_decay"},
                   "scheduler": {"warmup_max_lr", "warmup_num_steps", "total_num_steps"}}


def check_value_types(cfg: dict, path: Path, stage: str) -> None:
    """Every check above on the DeepSpeed config ``cfg`` read from ``path``, for the
    training section ``stage`` (named in the gradient-clipping hint). "auto" is left to the
    filling that follows, which fills it or says it cannot."""
    import_deepspeed()  # quietly, where it is first imported (a runner's checks)
    check_key_names(cfg, path)
    for where, kind in CHECKED.items():
        parent, _, key = where.rpartition(".")
        node = _get(cfg, parent) if parent else cfg
        if isinstance(node, dict) and key in node:
            hint = "; leave the key out for crild's default" if where in NAMED else ""
            _require(node[key], kind, where, path, hint)
    for section in NAMED:
        if section in cfg and "type" not in cfg[section]:
            raise UserError(f"{path}: {section}: has no \"type\" (DeepSpeed cannot use it without one); "
                            f"name one, or leave the {section} section out for crild's default")
    params = (cfg.get("optimizer") or {}).get("params") or {}
    if "max_grad_norm" in params:
        raise UserError(f"{path}: optimizer.params.max_grad_norm: DeepSpeed clips gradients itself; "
                        f"set stages.{stage}.max_grad_norm (or gradient_clipping) instead")
    opt = optimizer_class(cfg)
    if opt is not None:
        _check_call(opt, {k: v for k, v in params.items() if k not in DEEPSPEED_OWN_PARAMS}, "optimizer", path)
    sched = scheduler_class(cfg)
    if sched is not None:
        _check_call(sched, (cfg.get("scheduler") or {}).get("params") or {}, "scheduler", path)


SECTION_KEYS = {"optimizer": ("type", "params", "legacy_fusion"), "scheduler": ("type", "params")}


def check_key_names(cfg: dict, path: Path) -> None:
    """DeepSpeed ignores a key it does not know: ``"zero_optimisation"`` trained at ZeRO-0,
    ``"optimizer": {"param": ...}`` with crild's default settings. A top-level key that is
    none of DeepSpeed's and is a letter or two from one of them is refused, as is any key
    of the optimizer and scheduler sections beyond the few DeepSpeed reads there. (Its other
    sections are pydantic models, which refuse unknown keys themselves.)"""
    known = deepspeed_key_names()
    for key in cfg:
        near = [] if key in known else difflib.get_close_matches(key, known, n=1, cutoff=0.85)
        if near:
            raise UserError(f"{path}: unknown key {key!r}; did you mean {near[0]!r}? (DeepSpeed ignores keys it "
                            f"does not know)")
    for section, keys in SECTION_KEYS.items():
        for key in cfg.get(section) if isinstance(cfg.get(section), dict) else ():
            if key not in keys:
                raise UserError(f"{path}: unknown key '{section}.{key}'; {suggestion(key, keys)}")


def ignored_keys(cfg: dict) -> list:
    """Top-level keys of ``cfg`` DeepSpeed does not know and so ignores without a word, beyond
    the near misses :func:`check_key_names` refuses (``"gradient_acc_steps"``); a key that
    starts with ``_`` is taken for one of the user's own (``"_comment"``)."""
    known = deepspeed_key_names()
    return [k for k in cfg if k not in known and not str(k).startswith("_")]


def suggestion(key: str, names) -> str:
    """``did you mean 'x'?``, or the names there are."""
    near = difflib.get_close_matches(str(key), list(names), n=1, cutoff=0.6)
    if near:
        return f"did you mean {near[0]!r}?"
    return f"expected one of {', '.join(names)}" if names else "DeepSpeed does not know it"


@functools.lru_cache(maxsize=1)
def deepspeed_key_names() -> frozenset:
    """Every snake_case name quoted in DeepSpeed's config and constants modules: a superset
    of the keys its config reads (a few hundred, most of them nested), read from the source
    of the installed version (10 ms)."""
    import deepspeed

    names: set = set()
    for file in Path(deepspeed.__file__).parent.rglob("*.py"):
        if re.search(r"(config|constants)\w*\.py$", file.name):
            names.update(re.findall(r"""["']([a-z][a-z0-9_]{2,})["']""", file.read_text(errors="replace")))
    return frozenset(names)


def _get(cfg: dict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _spelled(value) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _require(value, kind: Kind, where: str, path: Path, hint: str = "") -> None:
    if value != AUTO and not kind.accepts(value):
        got = f"{_spelled(value)} (a string)" if isinstance(value, str) else _spelled(value)
        raise UserError(f"{path}: {where}: expected {kind.expected}, got {got}{hint}")


def optimizer_class(cfg: dict) -> Optional[type]:
    """The class DeepSpeed builds for ``cfg``'s optimizer, where it can be told without
    building anything (None for DeepSpeed's rarer optimizers, which are not checked)."""
    name = (cfg.get("optimizer") or {}).get("type")
    if not isinstance(name, str):
        return None
    params = cfg["optimizer"].get("params") or {}
    offloaded = (((cfg.get("zero_optimization") or {}).get("offload_optimizer") or {}).get("device")
                 not in (None, "none"))
    lowered = name.lower()
    if lowered in ("adam", "adamw"):
        if params.get("torch_adam"):
            adam_w = lowered == "adamw" or params.get("adam_w_mode", True)
            return torch.optim.AdamW if adam_w else torch.optim.Adam
        from deepspeed.ops.adam import DeepSpeedCPUAdam, FusedAdam
        return DeepSpeedCPUAdam if offloaded else FusedAdam
    if lowered == "adagrad":
        from deepspeed.ops.adagrad import DeepSpeedCPUAdagrad
        return DeepSpeedCPUAdagrad if offloaded else torch.optim.Adagrad
    if lowered == "lamb":
        from deepspeed.ops.lamb import FusedLamb
        return FusedLamb
    if lowered == "lion":
        from deepspeed.ops.lion import DeepSpeedCPULion, FusedLion
        return DeepSpeedCPULion if offloaded else FusedLion
    from deepspeed.runtime.config import DEEPSPEED_OPTIMIZERS
    if lowered in DEEPSPEED_OPTIMIZERS:
        return None
    return getattr(torch.optim, name, None)


def scheduler_class(cfg: dict) -> Optional[type]:
    """The class DeepSpeed builds for ``cfg``'s scheduler: its own, else torch's."""
    from deepspeed.runtime import lr_schedules

    name = (cfg.get("scheduler") or {}).get("type")
    if not isinstance(name, str):
        return None
    return getattr(lr_schedules, name, None) or getattr(torch.optim.lr_scheduler, name, None)


def _default_kind(parameter: inspect.Parameter) -> Optional[Kind]:
    """What a keyword argument must be, from its default (or, where it has none, its plain
    annotation); None where neither says."""
    value = parameter.default
    if value is inspect.Parameter.empty:
        value = {"int": 0, "float": 0.0, "bool": False, "str": "", int: 0, float: 0.0, bool: False,
                 str: ""}.get(parameter.annotation)
    if isinstance(value, bool):
        return BOOL
    if _number(value):
        return NUMBER
    if isinstance(value, str):
        return TEXT
    if isinstance(value, tuple) and value and all(_number(v) for v in value):
        n = len(value)
        return Kind(f"a list of {n} numbers",
                    lambda v: isinstance(v, list) and len(v) == n and all(_number(x) for x in v))
    return None


def _check_call(cls: type, params: dict, section: str, path: Path) -> None:
    """``params`` as keyword arguments of ``cls`` after its first argument (the parameters,
    or the optimizer): a key it does not take, one it needs and lacks, or a value of the
    wrong type is named."""
    accepted = list(inspect.signature(cls).parameters.values())[1:]
    by_name = {p.name: p for p in accepted if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    open_ended = any(p.kind == p.VAR_KEYWORD for p in accepted)
    for key, value in params.items():
        if key not in by_name:
            if open_ended:
                continue
            raise UserError(f"{path}: {section}.params.{key}: {cls.__name__} takes no {key!r} "
                            f"(it takes {', '.join(by_name)})")
        kind = _default_kind(by_name[key])
        if kind is not None:
            _require(value, kind, f"{section}.params.{key}", path)
    missing = [name for name, p in by_name.items()
               if p.default is p.empty and name not in params and name not in FILLED_BY_CRILD[section]]
    if missing:
        raise UserError(f"{path}: {section}.params: {cls.__name__} needs {', '.join(map(repr, missing))}")


def check_by_building(cfg: dict, path: Path) -> None:
    """The filled optimizer and scheduler, built on a stand-in parameter where that builds
    nothing of DeepSpeed's (torch's optimizers; every scheduler, on torch's SGD where the
    optimizer is DeepSpeed's own): the range checks they make (a negative eps, ...) are named
    now, not at engine build."""
    with deepspeed_quiet():
        _build(cfg, path)


def _build(cfg: dict, path: Path) -> None:
    weight = torch.nn.Parameter(torch.zeros(1))
    opt_cls = optimizer_class(cfg)
    optimizer = None
    if opt_cls is not None and opt_cls.__module__.startswith("torch."):
        params = {k: v for k, v in cfg["optimizer"].get("params", {}).items() if k not in DEEPSPEED_OWN_PARAMS}
        optimizer = _built(lambda: opt_cls([weight], **params), "optimizer.params", opt_cls, path)
    sched_cls = scheduler_class(cfg)
    if sched_cls is not None:
        optimizer = optimizer or torch.optim.SGD([weight], lr=1e-3)
        _built(lambda: sched_cls(optimizer, **cfg["scheduler"].get("params", {})), "scheduler.params", sched_cls,
               path)


def _built(make: Callable, where: str, cls: type, path: Path):
    try:
        return make()
    except (ValueError, TypeError, AssertionError, ZeroDivisionError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{path}: {where}: {cls.__name__} rejects them ({reason})") from None


DTYPE_KEYS = ("grad_accum_dtype", "param_dtype", "buffer_dtype")  # data_types keys DeepSpeed reads as a type


def _check_data_types(cfg: dict, path: Path, stage: int) -> None:
    """``data_types``: names DeepSpeed's DtypeEnum knows (a ValueError at engine build
    otherwise), a parameter type that is the training precision's (an assertion), and at
    ZeRO-0 a gradient accumulation type that is too (a NotImplementedError: only the ZeRO
    optimizers accumulate in another type, bf16 with fp32 from ZeRO-1)."""
    from deepspeed.runtime.config import DtypeEnum

    types = cfg.get("data_types") or {}
    model = "fp16" if (cfg.get("fp16") or {}).get("enabled") is True else \
        "bf16" if (cfg.get("bf16") or {}).get("enabled") is True else "fp32"
    names = [k for k in DtypeEnum._value2member_map_ if isinstance(k, str) and "." not in k]
    for key in DTYPE_KEYS:
        value = types.get(key)
        if value is None:
            continue
        try:
            kind = DtypeEnum(value).name
        except (ValueError, TypeError):
            raise UserError(f"{path}: data_types.{key}: {json.dumps(value)} is not a type DeepSpeed knows; expected "
                            f"one of {', '.join(names)}") from None
        if key == "param_dtype" and kind != model:
            raise UserError(f"{path}: data_types.param_dtype: {json.dumps(value)}, and the training precision is "
                            f"{model} (fp16.enabled / bf16.enabled); DeepSpeed keeps parameters in that type: leave the "
                            f"key out or make them agree")
        if key == "grad_accum_dtype" and kind != model and stage == 0:
            raise UserError(f"{path}: data_types.grad_accum_dtype: {json.dumps(value)} with ZeRO-0, and the training "
                            f"precision is {model}; DeepSpeed accumulates gradients in another type than the "
                            f"parameters' only with ZeRO-1 or above: set zero_optimization.stage to 1, or leave the "
                            f"key out")


def check_combinations(cfg: dict, path: Path) -> None:
    """Settings DeepSpeed accepts together and then ignores or fails on: an offload the ZeRO
    stage does not do, data types the precision does not allow, and an optimizer DeepSpeed's
    ZeRO calls untested, which fails at engine build unless allowed."""
    zero = cfg.get("zero_optimization") or {}
    stage = zero.get("stage", 0)
    if not isinstance(stage, int):
        return  # DeepSpeed's own check names it
    _check_data_types(cfg, path, stage)
    for key in ("offload_optimizer", "offload_param"):
        device = (zero.get(key) or {}).get("device", "none")
        if device in (None, "none"):
            continue
        if device == "nvme" and not (zero.get(key) or {}).get("nvme_path"):
            raise UserError(f"{path}: zero_optimization.{key}.nvme_path: NVMe offload needs the folder on the NVMe "
                            f"drive to write to")
        if key == "offload_param" and stage < 3:
            why = "only ZeRO-3 offloads parameters; DeepSpeed ignores it below"
        elif stage == 0:
            why = "ZeRO-0 offloads nothing; DeepSpeed would step its CPU Adam on parameters left on the device"
        elif device == "nvme" and stage < 3:
            why = "NVMe offload needs ZeRO-3; below it DeepSpeed offloads to CPU memory instead"
        else:
            continue
        raise UserError(f"{path}: zero_optimization.{key}: {device} offload with ZeRO-{stage}: {why}; change "
                        f"zero_optimization.stage or set the device to \"none\"")
    opt = optimizer_class(cfg)
    if opt is not None and stage > 0 and cfg.get("zero_allow_untested_optimizer") is not True:
        from deepspeed.runtime.zero.utils import ZERO_SUPPORTED_OPTIMIZERS

        if opt not in ZERO_SUPPORTED_OPTIMIZERS:
            raise UserError(f"{path}: optimizer.type: {cfg['optimizer']['type']} ({opt.__name__}) is not one DeepSpeed's "
                            f"ZeRO supports ({', '.join(sorted({c.__name__ for c in ZERO_SUPPORTED_OPTIMIZERS}))}); "
                            f"use one of those, or set \"zero_allow_untested_optimizer\": true to try it")


# DeepSpeed's optimizers that run a compiled op, and the op builder each loads
OP_BUILDERS = {"FusedAdam": "FusedAdamBuilder", "FusedLamb": "FusedLambBuilder", "FusedLion": "FusedLionBuilder",
               "DeepSpeedCPUAdam": "CPUAdamBuilder", "DeepSpeedCPUAdagrad": "CPUAdagradBuilder",
               "DeepSpeedCPULion": "CPULionBuilder"}


# DeepSpeed's monitors that log to a service through a package of their own
MONITOR_PACKAGES = {"wandb": "wandb", "comet": "comet_ml"}


def check_runs_here(cfg: dict, path: Path) -> None:
    """What DeepSpeed needs of the machine that trains, there: the package of an enabled
    monitor (wandb, comet; a ModuleNotFoundError at engine build), and the optimizer's op
    for this machine's accelerator (FusedLamb and FusedLion have none on a CPU: "not
    implemented on CPU backend")."""
    import importlib.util

    for section, package in MONITOR_PACKAGES.items():
        if (cfg.get(section) or {}).get("enabled") and importlib.util.find_spec(package) is None:
            raise UserError(f"{path}: {section}.enabled: DeepSpeed's {section} monitor needs the {package} package, "
                            f"which is not installed here; pip install {package}, or disable it (crild writes "
                            f"every loss component to TensorBoard itself)")
    opt = optimizer_class(cfg)
    if opt is None or opt.__name__ not in OP_BUILDERS:
        return
    from deepspeed.accelerator import get_accelerator
    from deepspeed.ops.op_builder.cpu import NotImplementedBuilder

    accelerator = get_accelerator()
    builder = accelerator.get_op_builder(OP_BUILDERS[opt.__name__])
    if builder is None or (isinstance(builder, type) and issubclass(builder, NotImplementedBuilder)):
        raise UserError(f"{path}: optimizer.type: {cfg['optimizer']['type']} ({opt.__name__}) has no "
                        f"implementation on this machine's accelerator ({accelerator.device_name()}); use AdamW here, "
                        f"or run on a GPU")
