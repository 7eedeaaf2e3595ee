"""The run configuration: one YAML file, validated into typed sections.

Every key is declared here with its type, range, default and help text (``crild config
--explain`` prints them). Unknown keys are errors that name the nearest valid key; wrong
types, values out of range, NaN and infinities name what was expected. ``section.key=value``
overrides are applied to the raw mapping before validation, so they are checked the same way.
"""
from __future__ import annotations

import os
import re
from typing import Annotated, Literal, Optional

from pydantic import AfterValidator, Field, PrivateAttr, ValidationInfo, create_model, model_validator

from pipeline.data.tasks import MAIN_METRIC, TASKS, table_files, task_spec
from pipeline.distill.presets import PHASES, PRESETS, resolve_phases
from pipeline.distill.terms import TERMS
from pipeline.errors import UserError
from pipeline.runtime import hub
from pipeline.schema.hashing import BOOKKEEPING, config_hash, to_dict
from pipeline.schema.loading import read_yaml, validate
from pipeline.schema.messages import Expect, field_error, suggest
from pipeline.schema.types import (
    Float,
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    PathText,
    PositiveFloat,
    PositiveInt,
    Probability,
    Ratio,
    Seed,
    Strict,
    check_read,
    listing,
    one_of,
)
from pipeline.stages import BASELINE_OUTPUT, RESERVED_FOLDERS, STAGES
from pipeline.training.nonfinite import ON_NONFINITE, READ_ONLY_WITH

PhaseName = one_of(PHASES, "phase")
_FOLDER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _output_name(value: str) -> str:
    """An output is a plain folder name inside output_dir that belongs to no other stage."""
    if not _FOLDER_NAME.fullmatch(value) or value in (".", ".."):
        raise field_error(f"expected a plain folder name (letters, digits, '_', '-', '.'), got {value!r}: "
                          f"outputs go inside output_dir")
    if value in RESERVED_FOLDERS or value.endswith((".phases", ".shards")) or ".stale-" in value:
        raise field_error(f"'{value}' is a folder crild uses for something else; choose another name")
    return value


OutputName = Annotated[str, AfterValidator(_output_name), Expect("a folder name")]


def _task_label(value: str) -> str:
    """A task's name: a built-in task, or one of the user's own, which names folders and
    report rows and so is a plain name."""
    if value not in TASKS and not _FOLDER_NAME.fullmatch(value):
        raise field_error(f"expected a task name (letters, digits, '_', '-', '.'), got {value!r}")
    return value


def _label_name(value: str) -> str:
    if not value.strip():
        raise field_error("expected a label name, got an empty string")
    return value


def _hub_name(value: str) -> str:
    if not value.strip():
        raise field_error("expected a name from the dataset, got an empty string")
    return value


TaskLabel = Annotated[str, AfterValidator(_task_label), Expect("a task name")]
LabelName = Annotated[str, AfterValidator(_label_name), Expect("a label name")]
HubName = Annotated[str, AfterValidator(_hub_name), Expect("a name")]


def _commit(value: str) -> str:
    """A dataset revision pinned by its commit: a branch or tag can move, so only the commit
    names the same data tomorrow, and only it can be found in the datasets cache offline."""
    if not hub.COMMIT.fullmatch(value):
        raise field_error(f"expected the full commit hash of a revision of the dataset (40 hex digits, as the "
                          f"hub's history lists), got {value!r}: a branch or tag can move")
    return value


CommitHash = Annotated[str, AfterValidator(_commit), Expect("a commit hash")]


def _column(value: str) -> str:
    if not value.strip():
        raise field_error(f"expected a column name, got {value!r} (leave the key out for the task's default)")
    return value


ColumnName = Annotated[str, AfterValidator(_column), Expect("a column name")]


class ColumnMap(Strict):
    """Names of the columns in data files and hub datasets (defaults: the task's own; where a
    file has none of the text columns, those besides the label, when as many as the task's)."""

    text_a: Optional[ColumnName] = Field(None, description="column of the first text (default: the task's, "
                                         "sentence or sentence1; where absent, the one column besides the label and "
                                         "ids)")
    text_b: Optional[ColumnName] = Field(None, description="column of the second text of a pair task (default: "
                                         "sentence2; where absent, the second column besides the label and ids)")
    label: Optional[ColumnName] = Field(None, description="column of the label (default: label)")


class HubSplits(Strict):
    """Which split of a hub dataset each of crild's splits is (a task of your own read from
    the hub); null: the task has no such split."""

    train: HubName = Field("train", description="the split the models train on")
    dev: Optional[HubName] = Field("validation", description="the held-out split scored during training")
    test: Optional[HubName] = Field("test", description="the held-out split scored at the end")


class TaskConfig(Strict):
    name: TaskLabel = Field("rotten_tomatoes", description="a built-in task (see pipeline/data/tasks.py), or the "
                                                           "name of a task of your own (with labels or regression)")
    labels: Optional[listing(LabelName, "label")] = Field(
        None, description="a task of your own: its label names, in the order of the model's outputs (ids 0, 1, ... "
                          "in data files)")
    regression: bool = Field(False, description="a task of your own whose label is a number (one output)")
    pair: Optional[bool] = Field(None, description="a task of your own: each example is a pair of texts (columns "
                                                   "sentence1 and sentence2 by default); null: single texts")
    metric: Optional[one_of(MAIN_METRIC, "metric")] = Field(
        None, description="a task of your own: accuracy, macro_f1, accuracy_f1 (two labels), matthews, or "
                          "pearson_spearman (regression); null: accuracy, or pearson_spearman for a regression")
    source: Literal["auto", "offline", "glue", "files", "hub"] = Field(
        "auto", description="auto: data_dir given -> GLUE TSVs or the split files found there; offline task -> "
                            "the prepared offline data; otherwise the hub through datasets.load_dataset (a task of "
                            "your own: the dataset task.hub names)")
    data_dir: Optional[PathText] = Field(None, description="folder of the task's files: train, dev (or "
                                         "validation) and test, each as .jsonl, .csv, .tsv or .parquet (or GLUE's TSVs)")
    hub: Optional[PathText] = Field(
        None, description="a task of your own: a Hugging Face hub dataset (owner/name), or a local copy of one (a "
                          "folder), read through datasets.load_dataset")
    hub_config: Optional[HubName] = Field(None, description="the hub dataset's configuration (subset), where it has "
                                                            "several")
    hub_revision: Optional[CommitHash] = Field(
        None, description="the hub dataset's commit to read (40 hex digits), also from the datasets cache where "
                          "the hub cannot be reached; null: its newest, or offline the newest cached")
    hub_splits: HubSplits = Field(default_factory=HubSplits)
    columns: ColumnMap = Field(default_factory=ColumnMap)
    max_length: PositiveInt = Field(128, description="tokens per example after truncation")
    few_sample: Optional[PositiveInt] = Field(
        None, description="the paper's few-sample setting: a seeded subset of this many training examples")
    label_noise: Ratio = Field(0.0, description="the paper's label-noise setting: share of training labels flipped")
    imbalance_ratio: Optional[Annotated[Float, Field(ge=1), Expect("a ratio >= 1 (largest/smallest class)")]] = \
        Field(None, description="class imbalance: training subsampled to this largest/smallest class ratio")
    max_eval_examples: Optional[PositiveInt] = Field(None, description="score at most this many of each held-out split")

    @model_validator(mode="after")
    def _columns_the_task_reads(self):
        _check_own_task(self)
        if self.columns.text_b is not None and not task_spec(self).pair:
            raise field_error(f"task {self.name} classifies single texts and reads no second column; expected "
                              f"text_b only for a pair task", "columns.text_b")
        _check_distinct_columns(self.columns, task_spec(self).canonical_columns)
        return self


def _check_distinct_columns(columns: ColumnMap, defaults: tuple) -> None:
    """No column is read as two things (the label read as the text too): the columns a task
    reads, as set or by default, are distinct where one of a pair is set. The error is the set
    key's."""
    keys = ("text_a", "text_b", "label")
    named = {key: getattr(columns, key) or default for key, default in zip(keys, defaults) if default is not None}
    for i, key in enumerate(keys):
        for other in keys[:i]:
            given = [k for k in (other, key) if getattr(columns, k)]
            if key in named and other in named and named[key] == named[other] and given:
                shown = {k: f"columns.{k}" + ("" if k in given else " (its default)") for k in (other, key)}
                raise field_error(f"'{named[key]}' is both {shown[other]} and {shown[key]}; expected a column for each",
                                  f"columns.{given[-1]}")


def _check_task_source(task: TaskConfig) -> None:
    """Where a task's data comes from: a built-in task knows; a task of one's own reads a
    folder of files (``data_dir``) or a dataset through ``datasets.load_dataset`` (``hub``),
    one of the two, and the ``hub_*`` keys only with ``hub``."""
    hub_keys = [k for k, unset in (("hub_config", None), ("hub_revision", None), ("hub_splits", HubSplits()))
                if getattr(task, k) != unset]
    if task.hub is None and hub_keys:
        raise field_error(f"{hub_keys[0]} is for a task read from a hub dataset; set task.hub too", hub_keys[0])
    if task.name in TASKS:
        if task.hub is not None:
            spec = TASKS[task.name]
            reads = (f"reads {'/'.join(spec.hub)} from the hub" if spec.hub else
                     "reads its prepared offline data" if spec.offline else "reads its own files")
            raise field_error(f"task {task.name} is built in and {reads}; task.hub is for a task of your own (a name "
                              f"crild does not know)", "hub")
        return
    if task.labels is None and not task.regression:
        return  # an unknown name: _check_own_task says so
    if task.hub is not None:
        if task.data_dir is not None:
            raise field_error(f"task {task.name} reads the hub dataset {task.hub}; expected data_dir or hub, not both",
                              "data_dir")
        if task.source not in ("auto", "hub"):
            raise field_error(f"task {task.name} reads the hub dataset {task.hub}; expected source auto or hub, got "
                              f"{task.source!r}", "source")
    elif task.source not in ("auto", "files") or task.data_dir is None:
        raise field_error(f"task {task.name} is a task of your own: it reads train, dev and test files "
                          f"({table_files('')}) from task.data_dir, or a dataset (task.hub: a hub name or a local "
                          f"copy); set data_dir (and source auto or files) or hub",
                          "data_dir" if task.data_dir is None else "source")


def _check_own_task(task: TaskConfig) -> None:
    """A built-in task takes its labels, metric and pairing from the registry; a name crild
    does not know is a task of the user's own, which needs its labels (or regression), a
    folder of files or a hub dataset, and a metric that fits it."""
    own = {"labels": task.labels is not None, "regression": task.regression, "pair": task.pair is not None,
           "metric": task.metric is not None}
    _check_task_source(task)
    if task.name in TASKS:
        given = [key for key, set_ in own.items() if set_]
        if given:
            raise field_error(f"task {task.name} is built in and defines its own labels, metric and pairing; "
                              f"{given[0]} is for a task of your own (a name crild does not know)", given[0])
        return
    if task.labels is None and not task.regression:
        raise field_error(f"unknown task '{task.name}'{suggest(task.name, TASKS)} (known: {', '.join(TASKS)}); for "
                          f"a task of your own, give task.labels (its label names) or task.regression: true", "name")
    if task.labels is not None and task.regression:
        raise field_error("a regression task has no label names; give labels or regression: true, not both",
                          "labels")
    if task.labels is not None and len(task.labels) < 2:
        raise field_error(f"expected at least 2 label names, got {len(task.labels)}", "labels")
    metric = task.metric
    if metric is not None and (metric == "pearson_spearman") != task.regression:
        raise field_error(f"metric {metric} is for {'classification' if task.regression else 'a regression'}; a "
                          f"{'regression' if task.regression else 'classification'} task is scored by "
                          f"{'pearson_spearman' if task.regression else 'accuracy, macro_f1, accuracy_f1 or matthews'}",
                          "metric")
    if metric == "accuracy_f1" and len(task.labels) != 2:
        raise field_error(f"accuracy_f1 is the F1 of the second of two labels, and task {task.name} has "
                          f"{len(task.labels)}; use macro_f1", "metric")


class RandomInit(Strict):
    """Random weights of this shape instead of pretrained ones (tests, smoke runs)."""

    num_layers: PositiveInt = Field(2, description="encoder layers")
    hidden_size: PositiveInt = Field(32, description="hidden width")
    num_heads: PositiveInt = Field(4, description="attention heads (must divide hidden_size)")
    intermediate_size: PositiveInt = Field(64, description="feed-forward width")


class TeacherConfig(Strict):
    model: PathText = Field("all-MiniLM-L6-v2", description="a model folder, an offline alias or a hub name")
    random_init: Optional[RandomInit] = Field(None, description="a random encoder of this shape instead")


class StudentConfig(Strict):
    init: Literal["truncated", "folder", "random"] = Field(
        "truncated", description="truncated: bottom num_layers layers, embeddings and pooler of backbone; "
                                 "folder: backbone as it is; random: random_init's shape with backbone's tokenizer")
    backbone: PathText = Field("all-MiniLM-L6-v2", description="model folder, offline alias or hub name")
    num_layers: PositiveInt = Field(3, description="layers kept by the truncated initialisation")
    random_init: Optional[RandomInit] = Field(None, description="shape of a random student")
    read_only_with = {"num_layers": ("init", ("truncated",)), "random_init": ("init", ("random",))}

    @model_validator(mode="after")
    def _random_needs_shape(self):
        if self.init == "random" and self.random_init is None:
            raise field_error("required when student.init is 'random'", "random_init")
        return self


class TrainConfig(Strict):
    """One training stage or distillation phase."""

    epochs: PositiveInt = Field(3, description="passes over the training data")
    max_steps: Optional[PositiveInt] = Field(None, description="optimizer steps; caps epochs when set")
    batch_size: PositiveInt = Field(32, description="examples per rank per micro-step")
    gradient_accumulation_steps: PositiveInt = Field(1, description="micro-steps per optimizer step")
    learning_rate: PositiveFloat = Field(2e-5, description="peak learning rate (linear warm-up, then decay)")
    weight_decay: NonNegativeFloat = Field(0.01, description="AdamW weight decay (not on biases and LayerNorm)")
    warmup_ratio: Fraction = Field(0.1, description="share of the optimizer steps spent warming up")
    max_grad_norm: NonNegativeFloat = Field(1.0, description="gradient clipping (0: none)")
    eval_every: NonNegativeInt = Field(0, description="optimizer steps between evaluations; 0: every epoch")
    eval_batch_size: PositiveInt = Field(64, description="examples per evaluation batch")
    eval_train_examples: NonNegativeInt = Field(
        0, description="also score this many training examples (a fixed seeded subset, labels as trained on) "
                       "at every evaluation: the train-dev gap over training")
    checkpoint_every: PositiveInt = Field(200, description="optimizer steps between checkpoints",
                                          json_schema_extra=BOOKKEEPING)
    checkpoint_minutes: Optional[PositiveFloat] = Field(
        None, description="also checkpoint once this many minutes have passed since the last checkpoint (null: by "
                          "steps only); bounds what a kill without warning (out of memory, a failed node) loses",
        json_schema_extra=BOOKKEEPING)
    keep_checkpoints: PositiveInt = Field(2, description="checkpoints kept while training",
                                          json_schema_extra=BOOKKEEPING)
    log_every: PositiveInt = Field(10, description="optimizer steps between TensorBoard points",
                                   json_schema_extra=BOOKKEEPING)
    group_by_length: bool = Field(True, description="batch examples of similar length (less padding)")
    on_nonfinite: Literal[ON_NONFINITE] = Field(
        "stop", description="a NaN/inf loss: stop (the last checkpoint stays good), or skip the micro-batch and "
                            "count it, stopping after max_nonfinite_skips")
    max_nonfinite_skips: NonNegativeInt = Field(10, description="skipped micro-batches allowed")
    deepspeed_config: Optional[PathText] = Field(None, description="a DeepSpeed JSON for this stage only")
    read_only_with = READ_ONLY_WITH


class EvaluateConfig(Strict):
    models: listing(PathText, "model folder") = Field(
        default_factory=list, description="model folders to evaluate; empty: the run's teacher and students")
    splits: Optional[listing(str, "split", non_empty=True)] = Field(
        None, description="held-out splits to score; null: every one the task's data has (dev and test where both "
                          "exist, MNLI's matched and mismatched)")
    batch_size: PositiveInt = Field(64, description="examples per batch")


class ExportTolerance(Strict):
    """How close the ONNX export must stay to PyTorch (fp32) on the held-out split."""

    max_logit_diff: PositiveFloat = Field(1e-4, description="largest absolute logit difference allowed")
    min_agreement: Fraction = Field(0.999, description="share of examples that must get the same prediction")


class BenchmarkConfig(Strict):
    """The latency benchmark of the exported models against the teacher."""

    enabled: bool = Field(True, description="run it (off: export and parity check only)")
    threads: Optional[PositiveInt] = Field(None, description="threads for PyTorch and ONNX Runtime (default: every "
                                                             "core this process may use)")
    batch1_examples: PositiveInt = Field(200, description="examples timed one by one (p50, p95)")
    batch32_batches: PositiveInt = Field(10, description="batches of 32 timed for throughput")
    warmup: NonNegativeInt = Field(10, description="untimed runs per model first")
    read_only_with = {key: ("enabled", (True,)) for key in ("batch1_examples", "batch32_batches", "warmup")}


class ExportConfig(Strict):
    models: listing(PathText, "model folder") = Field(
        default_factory=list, description="model folders to export; empty: the run's teacher and students")
    opset: Annotated[int, Field(ge=14, le=21), Expect("an ONNX opset in [14, 21]")] = Field(
        17, description="ONNX opset of the export")
    quantize: bool = Field(True, description="also an INT8 copy (ONNX Runtime dynamic quantization) of every "
                                             "model but a teacher (the run's, or one a crild teacher stage wrote)")
    split: Optional[str] = Field(None, description="held-out split for parity, accuracy and timing (default: test "
                                                   "if the task has one, else its first)")
    int8_max_drop: Optional[NonNegativeFloat] = Field(
        0.01, description="largest drop of the task's main metric an INT8 copy may show against its fp32 model on "
                          "the split (0.01: one point of accuracy); one that drops more is scored and timed but not "
                          "kept (null: always kept)")
    tolerance: ExportTolerance = Field(default_factory=ExportTolerance)
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)
    read_only_with = {"int8_max_drop": ("quantize", (True,))}


class MixupConfig(Strict):
    """The interpolated view of CR-ILD."""

    enabled: Optional[bool] = Field(None, description="null: as the preset says")
    alpha: PositiveFloat = Field(1.0, description="lambda ~ Beta(alpha, alpha), then lambda = max(lambda, 1 - lambda)")
    # null leaves mixup to the preset: a base configuration shared by several presets may set alpha
    read_only_with = {"alpha": ("enabled", (True, None))}


class ConsistencyConfig(Strict):
    """The consistency regulariser of CR-ILD."""

    weight: Optional[NonNegativeFloat] = Field(
        None, description="w_ic; the applied weight ramps linearly from 0 to it over the phase (null: the preset's)")
    target: Literal["clean", "clean_no_dropout", "ema"] = Field(
        "clean", description="clean: stop-gradient clean pass of the student (dropout on, as the reference code); "
                             "clean_no_dropout: the same pass in eval mode; ema: an EMA copy of the student")
    ema_decay: Fraction = Field(0.999, description="decay of the EMA copy")
    distance: Literal["relation", "hidden"] = Field(
        "relation", description="relation: Q/K/V self-relation KL; hidden: last-layer hidden-state MSE")
    read_only_with = {"ema_decay": ("target", ("ema",))}


class SupplementaryConfig(Strict):
    """Inputs of another dataset for ILD (labels unused)."""

    task: TaskConfig = Field(default_factory=lambda: TaskConfig(name="snli"), description="the other dataset")
    ratio: PositiveFloat = Field(1.0, description="examples drawn per target-task training example")


class DistillConfig(Strict):
    preset: one_of(PRESETS, "preset") = Field("cr-ild", description="the method (see the README's preset table)")
    output: OutputName = Field("student", description="folder of the final student under output_dir")
    teacher_model: Optional[PathText] = Field(None, description="default: <output_dir>/teacher from stage 1")
    phases: Optional[listing(PhaseName, "phase", non_empty=True, order=PHASES)] = Field(
        None, description="default: the preset's phases")
    ild_terms: dict[one_of(TERMS, "term"), NonNegativeFloat] = Field(
        default_factory=dict, description="re-weight (0 removes) or add terms of the ILD phases")
    kd_terms: dict[one_of(TERMS, "term"), NonNegativeFloat] = Field(
        default_factory=dict, description="re-weight (0 removes) or add terms of the prediction-layer phase")
    temperature: PositiveFloat = Field(2.0, description="softmax temperature of logit KD")
    layer_map: Optional[Literal["last", "upper_middle", "uniform", "all", "pairs"]] = Field(
        None, description="student-teacher layer mapping (null: the preset's); all: every student layer with "
                          "every teacher layer")
    layer_pairs: listing(list[NonNegativeInt], "layer pair") = Field(
        default_factory=list, description="[[student, teacher], ...], 1-based, for layer_map: pairs")
    layer_reduction: Optional[Literal["mean", "sum"]] = Field(
        None, description="how layer terms combine their layer pairs (null: the preset's; tinybert and emd-ild sum)")
    pkd_features: Literal["mean", "sum"] = Field(
        "mean", description="the PKD term over the [CLS] features: mean (the PKD authors' code) or sum (its "
                            "paper's formula, D times larger)")
    relation_heads: Optional[PositiveInt] = Field(None, description="default: the teacher's attention heads")
    mixup: MixupConfig = Field(default_factory=MixupConfig)
    consistency: ConsistencyConfig = Field(default_factory=ConsistencyConfig)
    supplementary: listing(SupplementaryConfig, "supplementary dataset") = Field(
        default_factory=list, description="other datasets' inputs for ILD (labels unused)")
    supplementary_mode: Literal["before", "mixed"] = Field(
        "before", description="before: its own ILD phase first; mixed: merged into target ILD")
    augmented_phases: listing(PhaseName, "phase", order=PHASES) = Field(
        default_factory=list, description="phases trained on stage 2's augmented set")
    teacher_deepspeed_config: Optional[PathText] = Field(
        None, description="a DeepSpeed JSON for the teacher, e.g. ZeRO-3 to partition a large teacher")
    teacher_precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="the frozen teacher's weights and activations; auto: bf16 on a GPU that has it, "
                            "else the student engine's precision")
    ild_supplementary: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=1, learning_rate=3e-5),
                                           description="training of the supplementary ILD phase")
    ild: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=10, learning_rate=3e-5),
                             description="training of the target-task ILD phase")
    kd: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=4, batch_size=16, learning_rate=3e-5,
                                                                eval_every=50),
                            description="training of the prediction-layer phase")

    @model_validator(mode="after")
    def _layer_pairs_fit_the_map(self):
        """layer_pairs only with the pairs map, two layers each, the embeddings (0) with the embeddings."""
        layer_map = self.layer_map or PRESETS[self.preset].layer_map
        if self.layer_pairs and layer_map != "pairs":
            raise field_error(f"used only with layer_map: pairs, and the layer map is '{layer_map}'; set "
                              f"layer_map: pairs or remove layer_pairs", "layer_pairs")
        if layer_map == "pairs" and (not self.layer_pairs or any(len(p) != 2 for p in self.layer_pairs)):
            raise field_error("expected a list of [student, teacher] pairs", "layer_pairs")
        for s, t in self.layer_pairs:
            if (s == 0) != (t == 0):
                raise field_error(f"pair [{s}, {t}]: layer 0 is the embedding output, and it pairs only with "
                                  f"layer 0; Transformer layers are numbered from 1", "layer_pairs")
        return self

    @model_validator(mode="after")
    def _every_setting_is_used(self):
        """Each phase has something to train, and what names phases or data is read by one."""
        plans = resolve_phases(self)
        for plan in plans:
            if not plan.terms and plan.consistency == 0:
                raise field_error(f"phase '{plan.name}' of preset '{self.preset}' has no loss terms")
        names = [plan.name for plan in plans]
        if self.mixup.enabled and not any(plan.is_ild for plan in plans):
            raise field_error(f"mixup mixes the inputs of ILD phases, and the phases are {', '.join(names)}; expected "
                              f"an ILD phase, or no mixup", "mixup.enabled")
        if self.consistency.weight and not any(plan.mixup for plan in plans):
            raise field_error(f"{self.consistency.weight}: the term compares the student on mixed and clean inputs, "
                              f"and no phase of preset '{self.preset}' mixes them; set mixup.enabled: true, or "
                              f"use preset cr-ild", "consistency.weight")
        for phase in self.augmented_phases:
            if phase not in names:
                raise field_error(f"'{phase}' is not a phase this stage runs ({', '.join(names)})",
                                  "augmented_phases")
        if "ild_supplementary" in names and not self.supplementary:
            raise field_error("phase 'ild_supplementary' trains on stages.distill.supplementary, which is empty; "
                              "add a supplementary dataset or remove the phase", "phases")
        reader = "ild_supplementary" if self.supplementary_mode == "before" else "ild"
        if self.supplementary and reader not in names:
            raise field_error(f"set, and no phase reads it: with supplementary_mode '{self.supplementary_mode}' "
                              f"the '{reader}' phase does, and the phases are {', '.join(names)}; expected none for these phases "
                              f"(leave the key out, or stages.distill.supplementary=[] on the command line)",
                              "supplementary")
        return self


class VectorsConfig(Strict):
    path: PathText = Field("glove-6b-50d", description="offline alias, a GloVe .txt file, or a .npy matrix")
    vocab: Optional[PathText] = Field(None, description="the words of a .npy matrix (.parquet or .txt)")


class AugmentConfig(Strict):
    """TinyBERT's augmentation (defaults: the paper's N, p, M)."""

    copies: PositiveInt = Field(20, description="N: attempts per example")
    replace_prob: Probability = Field(0.4, description="p: chance each candidate word is replaced")
    candidates: PositiveInt = Field(15, description="M: candidates per word")
    masked_lm: Optional[PathText] = Field(None, description="a masked-LM folder; null: word vectors for every word")
    vectors: VectorsConfig = Field(default_factory=VectorsConfig)
    batch_size: PositiveInt = Field(256, description="masked-LM sequences per forward")
    num_shards: PositiveInt = Field(16, description="units of work and of restart; the result does not depend on it")
    teacher_logits: bool = Field(False, description="also store the teacher's logits for the KD phase")


class SlurmConfig(Strict):
    """How `crild submit` sizes each stage's job (inside one sbatch allocation, every stage
    uses the whole allocation)."""

    nodes: PositiveInt = Field(1, description="nodes per stage job; num_ranks are spread evenly over them")
    stage_nodes: dict[one_of(STAGES, "stage", always_list=True), PositiveInt] = Field(
        default_factory=dict, description="stage -> its node count, e.g. {distill: 2}")

    def nodes_for(self, stage: str) -> int:
        return self.stage_nodes.get(stage, self.nodes)


BaselineConfig = create_model(
    "BaselineConfig", __base__=Strict,
    __doc__="The no-teacher baseline's training: each key set here replaces the one of "
            "stages.distill.kd, the phase the baseline runs; unset keys keep the student's.",
    **{name: (Optional[Annotated[(field.annotation, *field.metadata)]] if field.metadata
              else Optional[field.annotation],
              Field(None, description=field.description, json_schema_extra=field.json_schema_extra))
       for name, field in TrainConfig.model_fields.items()})
BaselineConfig.read_only_with = TrainConfig.read_only_with  # with a decider left null, judged by StagesConfig


class StagesConfig(Strict):
    teacher: TrainConfig = Field(default_factory=TrainConfig, description="stage 1: teacher fine-tuning")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="stage 2: augmented data")
    distill: DistillConfig = Field(default_factory=DistillConfig, description="stage 3: distillation")
    baseline: BaselineConfig = Field(
        default_factory=BaselineConfig,
        description="the baseline stage (the student fine-tuned without a teacher): its own training length "
                    "and rate, e.g. {epochs: 3} when the student's KD phase runs on augmented data")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="stage 4: evaluation")
    export: ExportConfig = Field(default_factory=ExportConfig, description="stage 5: ONNX export and latency")

    @model_validator(mode="after")
    def _baseline_reads_its_keys(self):
        """A key set under stages.baseline whose decider it leaves to the KD phase (see
        BaselineConfig) is judged by the KD phase's: ``max_nonfinite_skips: 3`` there, beside a
        KD phase that stops on a NaN, would be read by nothing."""
        for key, (decider, _) in TrainConfig.read_only_with.items():
            value = getattr(self.baseline, key)
            if value is not None and getattr(self.baseline, decider) is None:
                check_read(TrainConfig, key, value, decider, getattr(self.distill.kd, decider),
                           " (stages.distill.kd's, which the baseline keeps)", "baseline.")
        return self


class RunConfig(Strict):
    output_dir: PathText = Field("runs/default", description="every stage's output goes under this folder")
    seed: Seed = Field(42, description="fixes data order, initialisation, dropout and mixup draws")
    deepspeed_config: PathText = Field("ds_configs/zero0_fp32.json",
                                       description="the DeepSpeed JSON every stage uses")
    num_ranks: PositiveInt = Field(1, description="ranks per stage when crild run launches the stages")
    tf32: bool = Field(True, description="fp32 matrix products on GPUs that have TF32 (Ampere and later) use it: "
                                         "several times faster, about 1e-3 relative precision; no effect on CPUs")
    compile: bool = Field(False, description="torch.compile each encoder layer of the models that train and of "
                                             "the teacher (not with ZeRO-3): a compile at the start of each stage, "
                                             "then faster steps on GPUs; see tools/bench_distill.py --only "
                                             "crild-compiled")
    pipeline: listing(one_of(STAGES, "stage", always_list=True), "stage", non_empty=True, order=STAGES) = Field(
        default_factory=lambda: ["teacher", "evaluate"], description="stages crild run chains, in order")
    task: TaskConfig = Field(default_factory=TaskConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    stages: StagesConfig = Field(default_factory=StagesConfig)
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)

    _source: str = PrivateAttr("<config>")  # where the configuration came from, for error messages
    _stage: Optional[str] = PrivateAttr(None)  # the stage this configuration is for (stage_config), if one

    @property
    def source(self) -> str:
        return self._source

    @property
    def stage(self) -> Optional[str]:
        """The stage this is the configuration of (``stage_config``): stage3_distill.py runs both
        distill and the baseline, and names the one it runs in what it prints."""
        return self._stage

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo):
        if task_spec(self.task).inputs_only:
            raise field_error(f"'{self.task.name}' is unlabelled text, for stages.distill.supplementary; expected a "
                              f"labelled task", "task.name")
        for stage, nodes in self.slurm.stage_nodes.items():
            if STAGES[stage].one_process and nodes > 1:
                raise field_error(f"{nodes} nodes for stage '{stage}', which runs as one process; expected 1",
                                  f"slurm.stage_nodes.{stage}")
        for stage in self.pipeline:
            if STAGES[stage].one_process:
                continue  # one process on one node, whatever num_ranks and slurm.nodes say
            nodes = self.slurm.nodes_for(stage)
            if self.num_ranks % nodes:
                key = f"slurm.stage_nodes.{stage}" if stage in self.slurm.stage_nodes else "slurm.nodes"
                raise field_error(f"{nodes} nodes for stage '{stage}' do not divide num_ranks {self.num_ranks}; "
                                  f"expected a divisor of it (ranks are spread evenly)", key)
        whole_run = (info.context or {}).get("stage") is None  # not one stage's configuration (stage_config)
        if whole_run and {"distill", "baseline"} <= set(self.pipeline) and self.stages.distill.output == BASELINE_OUTPUT:
            raise field_error(f"'{BASELINE_OUTPUT}' is the baseline stage's output, and this run has a baseline "
                              f"stage; choose another name", "stages.distill.output")
        return self

    def __eq__(self, other) -> bool:  # the same settings, wherever they were read from
        return isinstance(other, RunConfig) and to_dict(self) == to_dict(other)


def from_dict(raw: dict, source: str = "<config>", overrides: list[str] | None = None,
              stage: str | None = None) -> RunConfig:
    """The run's configuration, or with ``stage`` that stage's (see ``stage_config``)."""
    cfg = validate(RunConfig, raw, source, overrides, context={"stage": stage} if stage else None)
    cfg._source, cfg._stage = source, stage
    return cfg


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> RunConfig:
    raw = read_yaml(path)
    if {"base", "methods"} <= raw.keys():  # a study file's two defining keys
        raise UserError(f"{path}: is a study file (it has base and methods), not a run configuration; run it with "
                        f"`crild study {path}`")
    return from_dict(raw, str(path), overrides)


def deepspeed_config_paths(cfg: RunConfig) -> dict[str, str]:
    """Every DeepSpeed config the run reads: dotted key -> path."""
    stages = cfg.stages
    paths = {"deepspeed_config": cfg.deepspeed_config,
             "stages.teacher.deepspeed_config": stages.teacher.deepspeed_config,
             "stages.distill.teacher_deepspeed_config": stages.distill.teacher_deepspeed_config,
             "stages.baseline.deepspeed_config": stages.baseline.deepspeed_config}
    paths.update({f"stages.distill.{phase}.deepspeed_config": getattr(stages.distill, phase).deepspeed_config
                  for phase in PHASES})
    return {key: path for key, path in paths.items() if path}


LAUNCHED_ENV = "CRILD_LAUNCHED_CONFIG"  # the digest of the configuration crild run or submit started with


def launched_digest(cfg: RunConfig) -> str:
    """A digest of everything in the run's configuration (the YAML with its overrides, every
    setting, and the text of each DeepSpeed config it names): ``crild run`` and ``crild
    submit`` hand it to their stages, which refuse to start when the file now says something
    else (see ``check_launched``)."""
    from pipeline.training.ds_files import read_ds_text

    ds = {key: read_ds_text(path, cfg.source)[1] for key, path in deepspeed_config_paths(cfg).items()}
    return config_hash({"settings": to_dict(cfg), "deepspeed": ds})


def check_launched(cfg: RunConfig, launched: Optional[str] = None) -> None:
    """One line when the configuration a stage reads is not the one its run started with
    (``launched``, else the digest its runner handed down): the file, or a DeepSpeed config it
    names, was edited while earlier stages ran or while the job waited in the queue, and the
    run would otherwise mix two configurations."""
    launched = launched or os.environ.get(LAUNCHED_ENV)
    if launched and launched != launched_digest(cfg):
        raise UserError(f"{cfg.source}: changed since this run started (or a DeepSpeed config it names did); its "
                        f"remaining stages would run another configuration than its first: run the command again, "
                        f"which keeps the complete stages that the change leaves valid and redoes the rest")


def stage_config(cfg: RunConfig, name: str) -> RunConfig:
    """The configuration stage ``name`` runs with: the run's, changed as that stage requires
    (the baseline: the distill stage without a teacher, ``stages.baseline`` over its KD
    phase). The one place this is computed: ``crild run``, ``crild status``, the stage
    scripts' ``--stage`` and ``crild <stage>`` all call it."""
    configure = STAGES[name].configure
    if configure is None:
        cfg = cfg.model_copy()
        cfg._stage = name
        return cfg
    raw = to_dict(cfg)
    configure(raw)
    return from_dict(raw, cfg.source, stage=name)
