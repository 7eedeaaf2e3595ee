"""A task's data as a stage uses it: the tokenized training split (after the stress
settings) and evaluation splits with their labels, and the collator that pads them."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import datasets
import numpy as np

from pipeline.data.batching import Collator
from pipeline.data.hub_data import is_own_hub
from pipeline.data.sources import Examples, checked_eval_splits, load_split, resolve_source
from pipeline.data.stress import apply_settings
from pipeline.data.tasks import TaskSpec, task_spec
from pipeline.data.tokenized import tokenize_cached
from pipeline.errors import UserError
from pipeline.runtime.distributed import main_rank_first


@dataclass
class TaskData:
    spec: TaskSpec
    train: Optional[datasets.Dataset]
    train_examples: Optional[Examples]  # the raw rows of ``train``, in its order (other tokenizers read them)
    eval: dict  # split -> datasets.Dataset
    eval_labels: dict  # split -> np.ndarray
    collate: Collator
    notes: list = field(default_factory=list)  # what the stage should say about the data it trains on
    eval_examples: dict = field(default_factory=dict)  # split -> the raw Examples of ``eval``

    @property
    def main_split(self) -> str:
        """The split periodic evaluation scores (the first)."""
        return next(iter(self.eval))


def load_task_data(cfg, tokenizer, eval_splits: Optional[list[str]] = None, with_train: bool = True,
                   splits_key: Optional[str] = None) -> TaskData:
    """Tokenized training split and evaluation splits (default: the first available;
    ``splits_key``: the setting that named them, for an error). Rank 0 tokenizes and caches;
    the other ranks then read the cache."""
    with main_rank_first():
        return _load_task_data(cfg, tokenizer, eval_splits, with_train, splits_key)


def check_max_length(tokenizer, max_length: int, pair: bool, where: str = "task.max_length") -> None:
    """``max_length`` must leave room for the tokenizer's special tokens and one token of
    text (below that, the tokenizer silently stops truncating)."""
    special = tokenizer.num_special_tokens_to_add(pair=pair)
    needed = special + (2 if pair else 1)
    if max_length < needed:
        raise UserError(f"{where}: {max_length} leaves no room for text: the tokenizer adds {special} special "
                        f"tokens to {'a pair' if pair else 'a sentence'}; use at least {needed}")


def _load_task_data(cfg, tokenizer, eval_splits, with_train, splits_key) -> TaskData:
    spec = task_spec(cfg.task)
    check_max_length(tokenizer, cfg.task.max_length, spec.pair)
    train_ex, train_ds = None, None
    if with_train:
        train_ex = apply_settings(load_split(cfg.task, spec, "train"), cfg.task, spec, cfg.seed)
        train_ds = tokenize_cached(train_ex, tokenizer, cfg.task.max_length)
    eval_splits = checked_eval_splits(cfg.task, spec, eval_splits, cfg.source, splits_key)
    evals, labels, examples, capped = {}, {}, {}, []
    for split in eval_splits:
        ex = load_split(cfg.task, spec, split)
        if cfg.task.max_eval_examples is not None and len(ex) > cfg.task.max_eval_examples:
            capped.append(f"note: {split} is scored on its first {cfg.task.max_eval_examples} of {len(ex)} examples "
                          f"(task.max_eval_examples)")
            capped.append(capped_classes_note(ex, cfg.task.max_eval_examples, split, spec))
            ex = ex.select(range(cfg.task.max_eval_examples))
        evals[split] = tokenize_cached(ex, tokenizer, cfg.task.max_length)
        labels[split] = ex.labels
        examples[split] = ex
    notes = once_for_all_files(([train_ex] if with_train else []) + list(examples.values())) + capped
    if with_train:
        train_texts = set(example_texts(train_ex))
        notes += [overlap_note(train_texts, ex, split) for split, ex in examples.items()]
        notes.append(truncation_note(train_ds, cfg.task.max_length))
        notes.append(missing_classes_note(train_ex, spec, cfg.task))
    return TaskData(spec, train_ds, train_ex, evals, labels, Collator(tokenizer.pad_token_id, spec.regression),
                    [n for n in notes if n], examples)


FILES = "\0files\0"  # stands for the files a note is said of, while they are gathered


def once_for_all_files(splits: list[Examples]) -> list[str]:
    """The notes of ``splits``, each said once: a note that says the same of several files
    (labels given as numbers in train.csv, dev.csv and test.csv) names them all in one line,
    and a dataset's note (the commit it is read at) is said once for all its splits."""
    grouped: dict[str, list[str]] = {}
    for ex in splits:
        for note in ex.notes:
            prefix = f"note: {ex.source}: "
            key = FILES + note[len(prefix):] if ex.source and note.startswith(prefix) else note
            grouped.setdefault(key, [])
            if key.startswith(FILES) and ex.source not in grouped[key]:
                grouped[key].append(ex.source)
    return [f"note: {_file_list(sources)}: {key[len(FILES):]}" if key.startswith(FILES) else key
            for key, sources in grouped.items()]


def _file_list(sources: list[str]) -> str:
    """data/train.csv, validation.csv and test.csv: the folder named once where it is theirs."""
    parents = {str(Path(s).parent) for s in sources}
    shown = [sources[0]] + [Path(s).name if len(parents) == 1 else s for s in sources[1:]]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} and {shown[-1]}"


def capped_classes_note(ex, cap: int, split: str, spec) -> Optional[str]:
    """A note when the first ``cap`` examples of a split lack classes the rest of it has: a
    file sorted by label (the hub's IMDB test split, say) capped at its start is scored on
    some classes alone, and every score of it says nothing of the others."""
    if spec.regression or not ex.labelled:
        return None
    lacking = sorted(set(ex.labels[cap:].tolist()) - set(ex.labels[:cap].tolist()))
    if not lacking:
        return None
    names = ", ".join(f"'{spec.labels[i]}'" for i in lacking)
    return (f"note: the first {cap} {split} examples hold no example of {names}, which the other {len(ex) - cap} "
            f"do (the file may be sorted by label): its scores are of the other classes alone; raise "
            f"task.max_eval_examples, or shuffle the file")


def held_out_overlap(cfg, data: TaskData) -> list[str]:
    """The overlap notes of a stage that loaded no training split (evaluation), once for all
    the models it scores: the training texts read untokenized, or none where there is no
    local training file (a folder of held-out files only, or the hub)."""
    texts = _training_texts(cfg, data.spec)
    return [n for n in (overlap_note(texts, ex, split) for split, ex in data.eval_examples.items()) if n]


def _training_texts(cfg, spec) -> set:
    try:
        if resolve_source(cfg.task, spec)[0] == "hub" and not is_own_hub(spec):  # GLUE: a download to say it
            return set()
        return set(example_texts(apply_settings(load_split(cfg.task, spec, "train"), cfg.task, spec, cfg.seed)))
    except UserError:
        return set()


def example_texts(ex: Examples):
    """Each example's text: a sentence, or a pair."""
    return zip(ex.text_a, ex.text_b) if ex.text_b is not None else iter(ex.text_a)


def overlap_note(train_texts: set, held_out: Examples, split: str, at_least: float = 0.01) -> Optional[str]:
    """How many of a held-out split's examples are training examples too (the same text, of
    ``train_texts``), when at least ``at_least`` of them are: a dev file copied from the
    training file scores memorisation, not generalisation, without a word. Real corpora repeat
    a few sentences (Rotten Tomatoes and SNLI: under 0.3%), hence the threshold."""
    shared = sum(text in train_texts for text in example_texts(held_out))
    if not shared or shared < at_least * len(held_out):
        return None
    return (f"note: {held_out.source}: {shared} of {len(held_out)} {split} examples ({shared / len(held_out):.1%}) are "
            f"training examples too (the same text); their scores are not held-out scores")


def missing_classes_note(train: Examples, spec, task_cfg) -> Optional[str]:
    """The task's classes that no training example has, or None: a classifier trained on
    them never learns to predict those, and scores on a split that has them say so only
    in part. A file of one class, or a few-sample draw that missed one, trained silently."""
    if spec.regression or not len(train):
        return None
    labels = np.asarray(train.labels)
    counts = np.bincount(labels[labels >= 0], minlength=len(spec.labels))
    missing = [spec.labels[i] for i in np.flatnonzero(counts == 0)]
    if not missing or (labels < 0).all():  # unlabelled text has no classes to miss
        return None
    settings = [key for key in ("imbalance_ratio", "few_sample") if getattr(task_cfg, key) is not None]
    after = f" (after task.{' and task.'.join(settings)})" if settings else ""
    names = ", ".join(repr(name) for name in missing)
    return (f"note: {train.source}: the training set{after} has no example of {names} ({len(missing)} of the "
            f"{len(spec.labels)} classes of task {spec.name}); the model cannot learn to predict "
            f"{'it' if len(missing) == 1 else 'them'}")


def truncation_note(ds: datasets.Dataset, max_length: int) -> Optional[str]:
    """How many training examples fill ``max_length`` (the longer ones are cut there, which
    the tokenizer does without a word), or None when none do."""
    lengths = np.asarray(ds["length"])
    full = int((lengths >= max_length).sum())
    if not full:
        return None
    return (f"note: {full} of {len(lengths)} training examples ({full / len(lengths):.1%}) fill task.max_length "
            f"{max_length} tokens; longer ones are cut there")
