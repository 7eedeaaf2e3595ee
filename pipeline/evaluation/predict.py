"""Sharded, order-preserving prediction over a tokenized split, and its GLUE metrics."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from pipeline.data.batching import Collator, eval_shards, fetch
from pipeline.data.sources import UNLABELLED
from pipeline.data.tasks import TaskSpec
from pipeline.evaluation.metrics import compute_metrics
from pipeline.models.attention_masks import has_padding, ready_inputs
from pipeline.models.families import family_of
from pipeline.runtime.distributed import DistInfo

MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")
MODEL_INPUTS_NO_TYPES = ("input_ids", "attention_mask")


def model_inputs(batch: dict, device: torch.device, model=None) -> dict:
    """The batch's model inputs on ``device``. With a ``model``: ready for its forward, token
    types only where its family takes them (DistilBERT and ModernBERT do not) and its attention
    masks built from the host's copy (:mod:`pipeline.models.attention_masks`); without, the 2D
    attention mask as it is."""
    keys = MODEL_INPUTS if model is None or family_of(model).token_types else MODEL_INPUTS_NO_TYPES
    inputs = {k: batch[k].to(device, non_blocking=True) for k in keys}
    return inputs if model is None else ready_inputs(model, inputs, has_padding(batch["attention_mask"]))


@torch.no_grad()
def predict_logits(forward: Callable[[dict], torch.Tensor], ds, collate: Collator, batch_size: int,
                   dist: DistInfo) -> np.ndarray:
    """Logits for every row of ``ds`` in order. Each rank predicts a contiguous shard in
    batches of similar lengths; all ranks run the same number of forwards (ZeRO-3 gathers
    parameters collectively)."""
    idx_parts, logit_parts = [], []
    lengths = np.asarray(ds["length"]) if "length" in ds.column_names else None
    for indices in eval_shards(len(ds), batch_size, dist.world_size, dist.rank, lengths):
        logits = forward(fetch(ds, indices or [0], collate)).float().cpu()
        if indices:
            idx_parts.append(np.asarray(indices))
            logit_parts.append(logits.numpy())
    local = (np.concatenate(idx_parts) if idx_parts else np.zeros(0, dtype=np.int64),
             np.concatenate(logit_parts) if logit_parts else None)
    if dist.world_size > 1:
        gathered = [None] * dist.world_size
        torch.distributed.all_gather_object(gathered, local)
    else:
        gathered = [local]
    idx = np.concatenate([g[0] for g in gathered])
    logits = np.concatenate([g[1] for g in gathered if g[1] is not None])
    out = np.empty_like(logits)
    out[idx] = logits
    return out


def split_metrics(spec: TaskSpec, logits: np.ndarray, labels: np.ndarray) -> dict:
    """Metrics of one split, or {} for an unlabelled split (GLUE test sets)."""
    if len(labels) == 0 or (not spec.regression and (labels == UNLABELLED).any()):
        return {}
    return compute_metrics(spec.metric, logits, labels, spec.regression)


def classifier_forward(model, device: torch.device) -> Callable[[dict], torch.Tensor]:
    def forward(batch: dict) -> torch.Tensor:
        model.eval()
        return model(**model_inputs(batch, device, model)).logits

    return forward
