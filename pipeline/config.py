"""Run configuration: one YAML file validated into typed dataclasses.

Unknown keys are errors that name the key and the nearest valid one; wrong
types name the expected type. ``section.key=value`` overrides are applied to
the raw mapping before validation, so they are checked the same way.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from pipeline.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- schema


@dataclass
class ColumnMap:
    """Names of the columns in local CSV/JSONL files (defaults: the task's own)."""

    text_a: Optional[str] = None
    text_b: Optional[str] = None
    label: Optional[str] = None


@dataclass
class TaskConfig:
    name: str = "rotten_tomatoes"
    # auto: data_dir given -> GLUE TSVs or CSV/JSONL files found there; offline task -> the
    # prepared offline data; otherwise the hub through datasets.load_dataset.
    source: str = "auto"
    data_dir: Optional[str] = None
    columns: ColumnMap = field(default_factory=ColumnMap)
    max_length: int = 128
    # The paper's synthetic overfitting settings (training split only, seed-controlled).
    few_sample: Optional[int] = None
    label_noise: float = 0.0
    imbalance_ratio: Optional[float] = None
    max_eval_examples: Optional[int] = None


@dataclass
class RandomInit:
    """Random weights of this shape instead of pretrained ones (tests, smoke runs)."""

    num_layers: int = 2
    hidden_size: int = 32
    num_heads: int = 4
    intermediate_size: int = 64


@dataclass
class TeacherConfig:
    # A model folder, an offline alias (see pipeline/models.py) or a hub name.
    model: str = "all-MiniLM-L6-v2"
    random_init: Optional[RandomInit] = None


@dataclass
class StudentConfig:
    # truncated: bottom num_layers layers, embeddings and pooler of `backbone`;
    # folder: load `backbone` as is; random: random_init shape with backbone's tokenizer.
    init: str = "truncated"
    backbone: str = "all-MiniLM-L6-v2"
    num_layers: int = 3
    random_init: Optional[RandomInit] = None


@dataclass
class TrainConfig:
    epochs: int = 3
    max_steps: Optional[int] = None  # optimizer steps; caps epochs when set
    batch_size: int = 32  # per rank, per micro-step
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    eval_every: int = 0  # optimizer steps; 0: at the end of every epoch
    eval_batch_size: int = 64
    # also score this many training examples (a fixed seeded subset, labels as trained on) at
    # every evaluation: the train-dev gap over training, the paper's overfitting view
    eval_train_examples: int = 0
    checkpoint_every: int = 200  # optimizer steps
    keep_checkpoints: int = 2
    log_every: int = 10
    group_by_length: bool = True
    # a NaN/inf loss: stop (the last checkpoint stays good) or skip the micro-batch (zero
    # gradient from it), count it in TensorBoard, and stop after max_nonfinite_skips of them
    on_nonfinite: str = "stop"
    max_nonfinite_skips: int = 10
    deepspeed_config: Optional[str] = None  # overrides the run's deepspeed_config


@dataclass
class EvaluateConfig:
    # Model folders to evaluate; empty: every model the run produced (teacher, student).
    models: list = field(default_factory=list)
    splits: list = field(default_factory=lambda: ["dev", "test"])
    batch_size: int = 64


@dataclass
class MixupConfig:
    """The interpolated view of CR-ILD (None: as the preset says)."""

    enabled: Optional[bool] = None
    alpha: float = 1.0  # lambda ~ Beta(alpha, alpha), then lambda = max(lambda, 1 - lambda)


@dataclass
class ConsistencyConfig:
    """The consistency regulariser of CR-ILD (weight None: as the preset says)."""

    weight: Optional[float] = None  # w_ic; the applied weight ramps linearly from 0 to w_ic
    target: str = "clean"  # clean: stop-gradient clean pass of the student; ema: an EMA copy
    ema_decay: float = 0.999
    distance: str = "relation"  # relation: Q/K/V self-relation KL; hidden: last-layer hidden MSE


@dataclass
class SupplementaryConfig:
    """Inputs of another dataset for ILD (labels unused)."""

    task: TaskConfig = field(default_factory=lambda: TaskConfig(name="snli"))
    ratio: float = 1.0  # examples drawn per target-task training example


@dataclass
class DistillConfig:
    preset: str = "cr-ild"
    output: str = "student"  # folder under output_dir
    teacher_model: Optional[str] = None  # default: <output_dir>/teacher from stage 1
    phases: Optional[list[str]] = None  # default: the preset's phases
    ild_terms: dict[str, float] = field(default_factory=dict)  # re-weight (0 removes) or add ILD terms
    kd_terms: dict[str, float] = field(default_factory=dict)  # same for the prediction-layer phase
    temperature: float = 2.0
    layer_map: Optional[str] = None  # last | upper_middle | uniform | pairs (None: the preset's)
    layer_pairs: list[list[int]] = field(default_factory=list)  # [[student, teacher], ...], 1-based
    relation_heads: Optional[int] = None  # default: the teacher's attention heads
    mixup: MixupConfig = field(default_factory=MixupConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    supplementary: list[SupplementaryConfig] = field(default_factory=list)
    supplementary_mode: str = "before"  # before: its own ILD phase first; mixed: merged into target ILD
    augmented_phases: list[str] = field(default_factory=list)  # phases trained on stage 2's augmented set
    teacher_deepspeed_config: Optional[str] = None  # e.g. ZeRO-3 to partition a large teacher
    ild_supplementary: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1, learning_rate=3e-5))
    ild: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10, learning_rate=3e-5))
    kd: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=4, batch_size=16, learning_rate=3e-5,
                                                                   eval_every=50))


@dataclass
class VectorsConfig:
    path: str = "glove-6b-50d"  # offline alias, a GloVe .txt file, or a .npy matrix
    vocab: Optional[str] = None  # the words of a .npy matrix (.parquet or .txt)


@dataclass
class AugmentConfig:
    """TinyBERT's augmentation (defaults: the paper's N, p, M)."""

    copies: int = 20  # N attempts per example
    replace_prob: float = 0.4  # p
    candidates: int = 15  # M
    masked_lm: Optional[str] = None  # a masked-LM folder; None: word vectors for every word
    vectors: VectorsConfig = field(default_factory=VectorsConfig)
    batch_size: int = 256  # masked-LM sequences per forward
    num_shards: int = 16  # units of work and of restart; the result does not depend on it
    teacher_logits: bool = False  # also store the teacher's logits for the KD phase


@dataclass
class StagesConfig:
    teacher: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


@dataclass
class RunConfig:
    output_dir: str = "runs/default"
    seed: int = 42
    deepspeed_config: str = "ds_configs/zero0_fp32.json"
    num_ranks: int = 1  # ranks per stage when `crild run` launches the stages
    pipeline: list = field(default_factory=lambda: ["teacher", "evaluate"])
    task: TaskConfig = field(default_factory=TaskConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)

    # Not part of the schema: where the config came from (for error messages).
    source: str = field(default="<config>", compare=False, repr=False, metadata={"internal": True})


STAGE_NAMES = ("teacher", "augment", "distill", "baseline", "evaluate")

# --------------------------------------------------------------------------- validation

_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               list: "a list", dict: "a mapping"}


def _describe(tp) -> str:
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return _TYPE_WORDS.get(tp, getattr(tp, "__name__", str(tp)))


def _unwrap_optional(tp):
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _check_value(value, tp, where: str, source: str):
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise UserError(f"{source}: {where}: expected {_describe(inner)}, got null")
    if dataclasses.is_dataclass(inner):
        if not isinstance(value, dict):
            raise UserError(f"{source}: {where}: expected a mapping, got {value!r}")
        return _build(inner, value, where + ".", source)
    if inner is float:
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            return float(value)  # '2e-4': YAML 1.1 reads exponents without a dot as strings
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{source}: {where}: expected a number, got {value!r} ({type(value).__name__})")
        return float(value)
    if inner is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{source}: {where}: expected an integer, got {value!r} ({type(value).__name__})")
        return value
    origin = typing.get_origin(inner)
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{source}: {where}: expected a list, got {value!r} ({type(value).__name__})")
        (item,) = typing.get_args(inner)
        return [_check_value(v, item, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{source}: {where}: expected a mapping, got {value!r} ({type(value).__name__})")
        _, item = typing.get_args(inner)
        return {str(k): _check_value(v, item, f"{where}.{k}", source) for k, v in value.items()}
    if inner in (str, bool, list, dict):
        if not isinstance(value, inner):
            raise UserError(f"{source}: {where}: expected {_describe(inner)}, got {value!r} ({type(value).__name__})")
        return value
    raise TypeError(f"unsupported schema type {tp!r} at {where}")  # a bug, not a user error


def _schema_fields(cls):
    return {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}


def _build(cls, raw: dict, prefix: str, source: str):
    fields_ = _schema_fields(cls)
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields_:
            near = difflib.get_close_matches(str(key), list(fields_), n=1, cutoff=0.5)
            hint = f"; did you mean '{near[0]}'?" if near else f"; valid keys: {', '.join(fields_)}"
            raise UserError(f"{source}: unknown key '{prefix}{key}'{hint}")
    kwargs = {name: _check_value(raw[name], hints[name], prefix + name, source)
              for name in fields_ if name in raw}
    return cls(**kwargs)


def _set_dotted(raw: dict, dotted: str, value, source: str) -> None:
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"{source}: override '{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text or text.startswith("="):
        raise UserError(f"override '{text}': expected section.key=value")
    key, _, value = text.partition("=")
    try:
        parsed = yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def from_dict(raw: dict, source: str = "<config>", overrides: list[str] | None = None) -> RunConfig:
    raw = json.loads(json.dumps(raw))  # deep copy, plain types only
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(raw, key, value, f"{source} (override '{text}')")
    cfg = _build(RunConfig, raw, "", source)
    cfg.source = source
    _check_semantics(cfg)
    return cfg


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where} is not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return from_dict(raw, str(path), overrides)


def _check_semantics(cfg: RunConfig) -> None:
    src = cfg.source
    from pipeline.tasks import TASKS  # late import: tasks imports nothing from here

    if cfg.task.name not in TASKS:
        near = difflib.get_close_matches(cfg.task.name, list(TASKS), n=1, cutoff=0.4)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise UserError(f"{src}: task.name: unknown task '{cfg.task.name}'{hint} (known: {', '.join(TASKS)})")
    sources = ("auto", "offline", "glue", "files", "hub")
    if cfg.task.source not in sources:
        raise UserError(f"{src}: task.source: expected one of {', '.join(sources)}, got '{cfg.task.source}'")
    if not 0.0 <= cfg.task.label_noise < 1.0:
        raise UserError(f"{src}: task.label_noise: expected a ratio in [0, 1), got {cfg.task.label_noise}")
    if cfg.task.imbalance_ratio is not None and cfg.task.imbalance_ratio < 1.0:
        raise UserError(f"{src}: task.imbalance_ratio: expected a ratio >= 1 (largest/smallest class), "
                        f"got {cfg.task.imbalance_ratio}")
    for name, value in (("task.few_sample", cfg.task.few_sample), ("task.max_length", cfg.task.max_length),
                        ("task.max_eval_examples", cfg.task.max_eval_examples)):
        if value is not None and value < 1:
            raise UserError(f"{src}: {name}: expected a positive integer, got {value}")
    inits = ("truncated", "folder", "random")
    if cfg.student.init not in inits:
        raise UserError(f"{src}: student.init: expected one of {', '.join(inits)}, got '{cfg.student.init}'")
    if cfg.student.init == "random" and cfg.student.random_init is None:
        raise UserError(f"{src}: student.random_init: required when student.init is 'random'")
    for stage in cfg.pipeline:
        if stage not in STAGE_NAMES:
            near = difflib.get_close_matches(str(stage), STAGE_NAMES, n=1, cutoff=0.4)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise UserError(f"{src}: pipeline: unknown stage '{stage}'{hint} (known: {', '.join(STAGE_NAMES)})")
    if cfg.num_ranks < 1:
        raise UserError(f"{src}: num_ranks: expected a positive integer, got {cfg.num_ranks}")
    for f in dataclasses.fields(cfg.stages):
        train = getattr(cfg.stages, f.name)
        if isinstance(train, TrainConfig):
            _check_train(train, f"stages.{f.name}", src)
    aug = cfg.stages.augment
    for name in ("copies", "candidates", "batch_size", "num_shards"):
        if getattr(aug, name) < 1:
            raise UserError(f"{src}: stages.augment.{name}: expected a positive integer, got {getattr(aug, name)}")
    if not 0.0 <= aug.replace_prob <= 1.0:
        raise UserError(f"{src}: stages.augment.replace_prob: expected a probability in [0, 1], got {aug.replace_prob}")
    for phase in ("ild_supplementary", "ild", "kd"):
        _check_train(getattr(cfg.stages.distill, phase), f"stages.distill.{phase}", src)
    from pipeline.objectives import check_distill_config  # late import: objectives imports this module

    check_distill_config(cfg.stages.distill, cfg, src)


def _check_train(train: TrainConfig, where: str, src: str) -> None:
    for name in ("epochs", "batch_size", "gradient_accumulation_steps", "eval_batch_size", "log_every",
                 "checkpoint_every", "keep_checkpoints"):
        if getattr(train, name) < 1:
            raise UserError(f"{src}: {where}.{name}: expected a positive integer, got {getattr(train, name)}")
    if train.on_nonfinite not in ("stop", "skip"):
        raise UserError(f"{src}: {where}.on_nonfinite: expected stop or skip, got '{train.on_nonfinite}'")
    if train.max_nonfinite_skips < 0:
        raise UserError(f"{src}: {where}.max_nonfinite_skips: expected an integer >= 0, "
                        f"got {train.max_nonfinite_skips}")
    if train.eval_train_examples < 0:
        raise UserError(f"{src}: {where}.eval_train_examples: expected 0 (off) or a positive integer, "
                        f"got {train.eval_train_examples}")
    if train.max_steps is not None and train.max_steps < 1:
        raise UserError(f"{src}: {where}.max_steps: expected a positive integer, got {train.max_steps}")
    if not 0.0 <= train.warmup_ratio <= 1.0:
        raise UserError(f"{src}: {where}.warmup_ratio: expected a ratio in [0, 1], got {train.warmup_ratio}")
    if train.learning_rate <= 0:
        raise UserError(f"{src}: {where}.learning_rate: expected a positive number, got {train.learning_rate}")


# --------------------------------------------------------------------------- helpers


def to_dict(cfg) -> dict:
    """Plain data (dicts, lists, scalars) of a config or any section of it."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
                if not f.metadata.get("internal")}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def _default_of(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return to_dict(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return to_dict(f.default_factory())
    return dataclasses.MISSING


def settings_dict(cfg) -> dict:
    """Like to_dict, without the fields left at their defaults: what fingerprints and
    checkpoint hashes are computed from, so that a new option (whose default keeps the old
    behaviour) does not invalidate finished stages and checkpoints after an upgrade."""
    if dataclasses.is_dataclass(cfg):
        out = {}
        for f in dataclasses.fields(cfg):
            if f.metadata.get("internal"):
                continue
            value = getattr(cfg, f.name)
            if to_dict(value) != _default_of(f):
                out[f.name] = settings_dict(value)
        return out
    if isinstance(cfg, (list, tuple)):
        return [settings_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: settings_dict(v) for k, v in cfg.items()}
    return cfg


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def config_hash(obj) -> str:
    """Stable hash of a config (or any section of it)."""
    data = settings_dict(obj) if dataclasses.is_dataclass(obj) else obj
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def resolve_path(path: str, what: str, source: str, must_exist: bool = True) -> Path:
    """Resolve a path from the config: relative to the working directory, falling back to
    the repository's bundled files (ds_configs/, jobs/)."""
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        if must_exist and not p.exists():
            raise UserError(f"{source}: {what}: '{path}' does not exist")
        return p
    bundled = REPO_ROOT / path
    if bundled.exists():
        return bundled
    if must_exist:
        raise UserError(f"{source}: {what}: '{path}' does not exist")
    return p
