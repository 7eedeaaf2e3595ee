"""A trained classifier's outputs in the task's label order.

A fine-tuned model from elsewhere may number the same classes differently (an MNLI model from
the hub: entailment, neutral, contradiction; crild's MNLI: GLUE's contradiction, entailment,
neutral). Read by position, its scores, exports and soft labels would give every class
another's name, without a word. Its config's ``id2label`` says the order: where the names are
the task's in another order, the output layer's rows are permuted into the task's order;
where they are other names, transformers' placeholders (``LABEL_0``) among them, a note says
how the outputs are read, by position, and nothing is changed."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Optional

import torch

from pipeline.runtime.progress import note

if TYPE_CHECKING:
    from pipeline.data.tasks import TaskSpec

GENERIC = re.compile(r"label_?\d+")


def output_names(config) -> list[str]:
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    return [id2label.get(i, f"LABEL_{i}") for i in range(config.num_labels)]


def output_layer(model, num_labels: int) -> torch.nn.Linear:
    """The classifier's last linear layer (``classifier``, or RoBERTa's ``classifier.out_proj``)."""
    head = getattr(model, "classifier", None)
    layers = [m for m in (head.modules() if head is not None else ())
              if isinstance(m, torch.nn.Linear) and m.out_features == num_labels]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no classifier layer with {num_labels} outputs")
    return layers[-1]


def head_loaded(model, missing_keys, spec: "TaskSpec") -> bool:
    """Whether the classifier's output layer came from the folder (not initialised anew)."""
    if spec.regression:
        return False
    layer = output_layer(model, spec.num_labels)
    name = next(n for n, m in model.named_modules() if m is layer)
    return not any(key.endswith(f"{name}.weight") for key in missing_keys)


def task_order(names: list[str], spec: "TaskSpec") -> Optional[list[int]]:
    """For outputs named ``names``: the output index of each of the task's labels, when the
    names are the task's (any case) in another order; None when they are in its order, or are
    not its names."""
    folded, task = [n.casefold() for n in names], [label.casefold() for label in spec.labels]
    if folded == task or sorted(folded) != sorted(task) or len(set(task)) != len(task):
        return None
    return [folded.index(label) for label in task]


def align_outputs(model, folder_config, spec: "TaskSpec", path: str, where: str) -> None:
    """Put ``model``'s outputs (loaded from ``path``, whose config is ``folder_config``) in the
    task's label order, and give it the task's label names."""
    if spec.regression:
        return
    names = output_names(folder_config)
    model.config.id2label = dict(enumerate(spec.labels))
    model.config.label2id = {label: i for i, label in enumerate(spec.labels)}
    order = task_order(names, spec)
    if order is not None:
        layer = output_layer(model, spec.num_labels)
        with torch.no_grad():
            layer.weight.copy_(layer.weight[order])
            if layer.bias is not None:
                layer.bias.copy_(layer.bias[order])
        note(f"note: {where}: '{path}' orders its outputs {', '.join(names)}; reordered to task {spec.name}'s "
             f"{', '.join(spec.labels)}")
    elif [n.casefold() for n in names] != [label.casefold() for label in spec.labels]:
        read = ", ".join(f"{n}={label}" for n, label in zip(names, spec.labels))
        placeholders = " (transformers' placeholders: its config names no labels)" if all(
            GENERIC.fullmatch(n.casefold()) for n in names) else ""
        note(f"note: {where}: '{path}' names its outputs {', '.join(names)}{placeholders}, not task {spec.name}'s "
             f"labels; read by position as {read}")
