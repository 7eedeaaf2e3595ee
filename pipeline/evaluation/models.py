"""Loading a model folder to evaluate it: any sequence classifier transformers can load,
with SDPA attention, checked against the task."""
from __future__ import annotations

import torch

from pipeline.errors import UserError
from pipeline.models.loading import check_max_length, load_pretrained, resolve_model


def load_eval_model(path: str, spec, dtype: torch.dtype, device: torch.device, max_length: int):
    from transformers import AutoModelForSequenceClassification

    folder = resolve_model(path, "stages.evaluate.models")
    model = load_pretrained(AutoModelForSequenceClassification, folder, "stages.evaluate.models", dtype=dtype)
    if model.config.num_labels != spec.num_labels:
        raise UserError(f"{path}: model has {model.config.num_labels} output(s), task {spec.name} needs "
                        f"{spec.num_labels}")
    check_max_length(model.config, max_length, path)
    return model.to(device).eval()
