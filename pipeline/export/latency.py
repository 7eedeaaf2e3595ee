"""The latency benchmark: every candidate (a model in a runtime) timed in the same run and
interleaved example by example, so a noisy machine slows them alike and their ratios hold.
Batch 1 runs examples sampled from the task's held-out split one by one, unpadded, for
p50/p95 over the real length distribution; batch 32 runs padded batches of the same split
for throughput. Warm-up runs first; the thread count is fixed for every runtime."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from pipeline.data.batching import fetch
from pipeline.runtime.progress import counted


@dataclass(frozen=True)
class Candidate:
    model: str  # teacher, student, ...
    runtime: str  # pytorch, onnx, onnx-int8
    forward: Callable[[dict], torch.Tensor]
    ds: object  # the held-out split in this model's own tokens (rows in the same order for every model)
    collate: Callable

    @property
    def label(self) -> str:
        return f"{self.model} ({self.runtime})"


def measure(candidates: list[Candidate], batch1_examples: int, batch32_batches: int, warmup: int,
            seed: int) -> dict[str, dict]:
    """{label: {batch1_p50_ms, batch1_p95_ms, batch32_examples_per_s}}."""
    n = len(candidates[0].ds)
    rng = np.random.default_rng([seed, 0x4C4154])
    singles = [[int(i)] for i in rng.choice(n, min(batch1_examples, n), replace=False)]
    order = rng.permutation(n)
    groups = [[int(i) for i in order[s:s + 32]] for s in range(0, min(n, 32 * batch32_batches), 32)]
    ones = {c.label: [fetch(c.ds, rows, c.collate) for rows in singles] for c in candidates}
    batches = {c.label: [fetch(c.ds, rows, c.collate) for rows in groups] for c in candidates}
    with torch.inference_mode():
        for c in candidates:  # warm-up: allocations, kernel choices, ORT's first-run work
            for batch in ones[c.label][:warmup] + batches[c.label][:2]:
                c.forward(batch)
        one = {c.label: [] for c in candidates}
        for k in range(len(singles)):
            for c in candidates[k % len(candidates):] + candidates[:k % len(candidates)]:  # rotate who goes first
                start = time.perf_counter()
                c.forward(ones[c.label][k])
                one[c.label].append(time.perf_counter() - start)
        many = {c.label: 0.0 for c in candidates}
        for k in range(len(groups)):
            for c in candidates:
                start = time.perf_counter()
                c.forward(batches[c.label][k])
                many[c.label] += time.perf_counter() - start
    rows = sum(len(g) for g in groups)
    return {c.label: {"batch1_p50_ms": float(np.percentile(one[c.label], 50) * 1000),
                      "batch1_p95_ms": float(np.percentile(one[c.label], 95) * 1000),
                      "batch32_examples_per_s": rows / many[c.label] if many[c.label] else None}
            for c in candidates}


def table(rows: list[dict], task: str, split: str, metric: str, threads: int, reference: str,
          is_teacher: bool) -> str:
    """The deployment table in Markdown: accuracy, size, latency and throughput, with the
    ratios to ``reference`` in PyTorch (the teacher, or with no teacher among the models the
    first one, and the table says which); an INT8 copy that was not kept is marked so."""
    base = next(r for r in rows if r["model"] == reference and r["runtime"] == "pytorch")
    against = "teacher" if is_teacher else reference
    said = ("the teacher" if reference == "teacher" else f"the teacher, {reference},") if is_teacher else \
        f"{reference} (none of the models is a teacher)"
    head = (f"| model | runtime | {split} {metric} | size (MB) | size vs {against} | batch-1 p50 (ms) | p95 (ms) "
            f"| batch-1 speed-up | batch-32 (examples/s) | throughput vs {against} |")
    lines = [f"Deployment on {task}, {counted(threads, 'thread')}, ratios to {said} in PyTorch:", "", head,
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        score = "–" if r.get("score") is None else f"{r['score']:.4f}"
        runtime = r["runtime"] + (" (not kept)" if r.get("kept") is False else "")
        lines.append(f"| {r['model']} | {runtime} | {score} | {r['size_mb']:.1f} | "
                     f"{r['size_mb'] / base['size_mb']:.2f}x | {r['batch1_p50_ms']:.2f} | {r['batch1_p95_ms']:.2f} | "
                     f"{base['batch1_p50_ms'] / r['batch1_p50_ms']:.2f}x | {r['batch32_examples_per_s']:.0f} | "
                     f"{r['batch32_examples_per_s'] / base['batch32_examples_per_s']:.2f}x |")
    return "\n".join(lines) + "\n"
