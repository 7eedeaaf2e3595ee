"""Deterministic, resumable batching: length-grouped batches split across ranks, and
dynamic padding."""
from __future__ import annotations

import math

import numpy as np
import torch

MEGABATCH_FACTOR = 50  # batches per sort window when grouping by length


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def steps_per_epoch(n: int, batch_size: int, world_size: int) -> int:
    return math.ceil(math.ceil(n / batch_size) / world_size)


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, world_size: int, rank: int,
                  group_by_length: bool = True, shuffle: bool = True) -> list[list[int]]:
    """This rank's micro-batches (lists of example indices) for one epoch.

    A function of (seed, epoch) only, so a resumed run rebuilds exactly the same batches
    and skips the ones already done. With grouping, each window of MEGABATCH_FACTOR
    batches is sorted by length (little padding), and the order of global steps is shuffled;
    the ranks of one step get neighbouring lengths. The batch count is padded by
    wrapping around so every rank runs the same number of steps.
    """
    n = len(lengths)
    g = epoch_generator(seed, epoch)
    order = torch.randperm(n, generator=g).numpy() if shuffle else np.arange(n)
    if group_by_length:
        window = batch_size * MEGABATCH_FACTOR
        chunks = [order[i:i + window] for i in range(0, n, window)]
        order = np.concatenate([c[np.argsort(-lengths[c], kind="stable")] for c in chunks])
    batches = [order[i:i + batch_size].tolist() for i in range(0, n, batch_size)]
    n_steps = steps_per_epoch(n, batch_size, world_size)
    batches += [batches[i % len(batches)] for i in range(n_steps * world_size - len(batches))]
    steps = [batches[s * world_size:(s + 1) * world_size] for s in range(n_steps)]
    if shuffle and group_by_length:
        perm = torch.randperm(n_steps, generator=g).tolist()
        steps = [steps[i] for i in perm]
    return [step[rank] for step in steps]


def eval_shards(n: int, batch_size: int, world_size: int, rank: int,
                lengths=None) -> list[list[int]]:
    """Evaluation batches for this rank's contiguous shard, longest rows first when
    ``lengths`` are given (each batch is padded to its longest row: sorted, rows of one
    batch have similar lengths). Every rank gets the same number of batches (ZeRO-3 needs all
    ranks in every forward). A rank with fewer examples gets empty batches at the end: the
    caller runs a dummy forward for them and keeps nothing."""
    per_rank = math.ceil(n / world_size)
    idx = list(range(rank * per_rank, min(n, (rank + 1) * per_rank)))
    if lengths is not None:
        idx.sort(key=lambda i: -int(lengths[i]))  # stable: equal lengths keep their order
    n_batches = math.ceil(per_rank / batch_size) if n else 0
    return [idx[i * batch_size:(i + 1) * batch_size] for i in range(n_batches)]


class Collator:
    """Pads a list of tokenized rows to the longest in the batch (dynamic padding)."""

    def __init__(self, pad_token_id: int, regression: bool, pad_to_multiple_of: int = 8):
        self.pad_token_id = pad_token_id
        self.regression = regression
        self.multiple = pad_to_multiple_of

    def __call__(self, rows: dict) -> dict:
        ids = rows["input_ids"]
        longest = max(len(x) for x in ids)
        width = int(math.ceil(longest / self.multiple) * self.multiple) if self.multiple else longest
        input_ids = torch.full((len(ids), width), self.pad_token_id, dtype=torch.long)
        token_type_ids = torch.zeros((len(ids), width), dtype=torch.long)
        attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, (x, t) in enumerate(zip(ids, rows["token_type_ids"])):
            input_ids[i, :len(x)] = torch.as_tensor(x)
            token_type_ids[i, :len(t)] = torch.as_tensor(t)
            attention_mask[i, :len(x)] = 1
        label_dtype = torch.float32 if self.regression else torch.long
        return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask,
                "labels": torch.as_tensor(rows["label"], dtype=label_dtype)}


def fetch(dataset, indices: list[int], collate: Collator) -> dict:
    """A padded batch of the given rows; ``index`` holds their row numbers (per-example
    caches such as the KD phase's teacher logits are looked up by it)."""
    batch = collate(dataset[indices])
    batch["index"] = torch.as_tensor(indices, dtype=torch.long)
    if torch.cuda.is_available():  # page-locked: the copies to the GPU (non_blocking) overlap compute
        batch = {k: v.pin_memory() for k, v in batch.items()}
    return batch
