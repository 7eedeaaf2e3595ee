"""Task registry: columns, labels, metric and GLUE file layout of every built-in task, and
the spec of a task of the user's own (its labels, metric and columns from ``task``)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

# a split of a folder of source files: one file with named columns, by any of these suffixes
TABLE_SUFFIXES = (".jsonl", ".csv", ".tsv", ".parquet")


def table_files(split: str) -> str:
    """The file names a split may have, as messages list them (``split`` '': the suffixes)."""
    names = [f"{split}{suffix}" for suffix in TABLE_SUFFIXES]
    return f"{', '.join(names[:-1])} or {names[-1]}"


@dataclass(frozen=True)
class GlueFile:
    """One split of a GLUE-format directory: file name and column names (or indices
    for the header-less CoLA files)."""

    filename: str
    text_a: str | int
    text_b: str | int | None
    label: str | int | None  # None: the split is unlabelled (GLUE test sets)
    header: bool = True


@dataclass(frozen=True)
class TaskSpec:
    name: str
    labels: Optional[tuple[str, ...]]  # None: regression
    metric: str  # key of pipeline.metrics.METRICS
    main_metric: str  # the number used for model selection and summaries
    pair: bool
    glue_files: dict = field(default_factory=dict)  # split -> GlueFile
    hub: Optional[tuple[str, Optional[str]]] = None  # (dataset, config) for datasets.load_dataset
    hub_splits: dict = field(default_factory=dict)  # our split -> hub split
    hub_columns: tuple = ()  # (text_a, text_b or None, label) column names in the hub dataset
    hub_revision: Optional[str] = None  # a task of one's own: the hub dataset's pinned commit
    offline: bool = False  # prepared by `crild prepare-data` from installed packages
    inputs_only: bool = False  # unlabelled text for supplementary ILD, never a task to train on
    # what labels written as numbers (0, 1, ...) mean in data files, where that differs from the
    # order of ``labels``: the Hugging Face dataset's numbering (MNLI's GLUE order is alphabetical)
    id_names: Optional[tuple[str, ...]] = None

    @property
    def regression(self) -> bool:
        return self.labels is None

    @property
    def numbering(self) -> tuple[str, ...]:
        """The label names of ids 0, 1, ... in data files."""
        return self.id_names or self.labels

    @property
    def named_labels(self) -> bool:
        """Whether the labels are words (``fresh``), not the digits GLUE writes (``0``, ``1``)."""
        return self.labels is not None and not all(name.isdigit() for name in self.labels)

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def dev_splits(self) -> tuple[str, ...]:
        """Evaluation splits in order; the first is used for periodic evaluation."""
        names = [s for s in (self.glue_files or self.hub_splits or {"dev": 0, "test": 0}) if s != "train"]
        return tuple(names)

    @property
    def canonical_columns(self) -> tuple[str, Optional[str], str]:
        return ("sentence1", "sentence2", "label") if self.pair else ("sentence", None, "label")


_HUB_COLUMNS = {"cola": ("sentence", None), "sst2": ("sentence", None), "qqp": ("question1", "question2"),
                "mnli": ("premise", "hypothesis"), "qnli": ("question", "sentence")}


def _glue(name, labels, metric, main, pair, files, hub_splits=None, **kw) -> TaskSpec:
    hub_splits = hub_splits or {"train": "train", "dev": "validation", "test": "test"}
    return TaskSpec(name, labels, metric, main, pair, files, hub=("nyu-mll/glue", name), hub_splits=hub_splits,
                    hub_columns=(*_HUB_COLUMNS.get(name, ("sentence1", "sentence2")), "label"), **kw)


_NLI = ("entailment", "not_entailment")

TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    _glue("cola", ("0", "1"), "matthews", "matthews_corr", False, {
        "train": GlueFile("train.tsv", 3, None, 1, header=False),
        "dev": GlueFile("dev.tsv", 3, None, 1, header=False),
        "test": GlueFile("test.tsv", "sentence", None, None)}),
    _glue("sst2", ("0", "1"), "accuracy", "accuracy", False, {
        "train": GlueFile("train.tsv", "sentence", None, "label"),
        "dev": GlueFile("dev.tsv", "sentence", None, "label"),
        "test": GlueFile("test.tsv", "sentence", None, None)}),
    _glue("mrpc", ("0", "1"), "accuracy_f1", "f1", True, {
        "train": GlueFile("train.tsv", "#1 String", "#2 String", "Quality"),
        "dev": GlueFile("dev.tsv", "#1 String", "#2 String", "Quality"),
        "test": GlueFile("test.tsv", "#1 String", "#2 String", None)}),
    _glue("stsb", None, "pearson_spearman", "pearson", True, {
        "train": GlueFile("train.tsv", "sentence1", "sentence2", "score"),
        "dev": GlueFile("dev.tsv", "sentence1", "sentence2", "score"),
        "test": GlueFile("test.tsv", "sentence1", "sentence2", None)}),
    _glue("qqp", ("0", "1"), "accuracy_f1", "accuracy", True, {
        "train": GlueFile("train.tsv", "question1", "question2", "is_duplicate"),
        "dev": GlueFile("dev.tsv", "question1", "question2", "is_duplicate"),
        "test": GlueFile("test.tsv", "question1", "question2", None)}),
    _glue("mnli", ("contradiction", "entailment", "neutral"), "accuracy", "accuracy", True, {
        "train": GlueFile("train.tsv", "sentence1", "sentence2", "gold_label"),
        "dev_matched": GlueFile("dev_matched.tsv", "sentence1", "sentence2", "gold_label"),
        "dev_mismatched": GlueFile("dev_mismatched.tsv", "sentence1", "sentence2", "gold_label"),
        "test_matched": GlueFile("test_matched.tsv", "sentence1", "sentence2", None),
        "test_mismatched": GlueFile("test_mismatched.tsv", "sentence1", "sentence2", None)},
        hub_splits={"train": "train", "dev_matched": "validation_matched",
                    "dev_mismatched": "validation_mismatched", "test_matched": "test_matched",
                    "test_mismatched": "test_mismatched"},
        id_names=("entailment", "neutral", "contradiction")),
    _glue("qnli", _NLI, "accuracy", "accuracy", True, {
        "train": GlueFile("train.tsv", "question", "sentence", "label"),
        "dev": GlueFile("dev.tsv", "question", "sentence", "label"),
        "test": GlueFile("test.tsv", "question", "sentence", None)}),
    _glue("rte", _NLI, "accuracy", "accuracy", True, {
        "train": GlueFile("train.tsv", "sentence1", "sentence2", "label"),
        "dev": GlueFile("dev.tsv", "sentence1", "sentence2", "label"),
        "test": GlueFile("test.tsv", "sentence1", "sentence2", None)}),
    _glue("wnli", ("0", "1"), "accuracy", "accuracy", True, {
        "train": GlueFile("train.tsv", "sentence1", "sentence2", "label"),
        "dev": GlueFile("dev.tsv", "sentence1", "sentence2", "label"),
        "test": GlueFile("test.tsv", "sentence1", "sentence2", None)}),
    # Real offline tasks, prepared from installed packages with fixed-seed splits.
    TaskSpec("snli", ("entailment", "neutral", "contradiction"), "accuracy", "accuracy", True, offline=True),
    TaskSpec("rotten_tomatoes", ("rotten", "fresh"), "accuracy", "accuracy", False, offline=True),
    # the corpus's 1,097 plot-summary sentences, which rotten_tomatoes drops: same-domain
    # unlabelled text, a supplementary task for it
    TaskSpec("rotten_tomatoes_plot", None, "accuracy", "accuracy", False, offline=True, inputs_only=True),
]}


def get_task(name: str) -> TaskSpec:
    return TASKS[name]


# metric (pipeline/evaluation/metrics.py) -> the number it reports that ranks models
MAIN_METRIC = {"accuracy": "accuracy", "accuracy_f1": "f1", "macro_f1": "macro_f1", "matthews": "matthews_corr",
               "pearson_spearman": "pearson"}


def task_spec(task) -> TaskSpec:
    """The spec of a task configuration (``pipeline.config.TaskConfig``): a built-in task's,
    or that of a task of the user's own, which reads its train/dev/test files from
    ``task.data_dir`` or the hub dataset ``task.hub`` and has the labels, metric, pairing and
    columns ``task`` gives it."""
    if task.name in TASKS:
        return TASKS[task.name]
    metric = task.metric or ("pearson_spearman" if task.regression else "accuracy")
    spec = TaskSpec(task.name, None if task.regression else tuple(task.labels), metric, MAIN_METRIC[metric],
                    bool(task.pair))
    if task.hub is None:
        return spec
    a, b, label = spec.canonical_columns
    splits = {split: name for split, name in task.hub_splits.model_dump().items() if name is not None}
    return replace(spec, hub=(task.hub, task.hub_config), hub_revision=task.hub_revision, hub_splits=splits,
                   hub_columns=(task.columns.text_a or a, (task.columns.text_b or b) if spec.pair else None,
                                task.columns.label or label))
