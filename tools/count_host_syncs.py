"""Host synchronisations in one optimizer step of crild's CR-ILD phase, counted on a CPU.

On a GPU, every read of a device value on the host (``.item()``, ``bool(t)``, ``float(t)``)
makes the CPU wait until every kernel queued before it has run, so the GPU idles while the
next ones are launched. This counts those reads (``aten::_local_scalar_dense``, through a
TorchDispatchMode) in one optimizer step at BERT-base shapes, apart for crild's step (teacher
and student forwards, terms, consistency target), DeepSpeed's backward and DeepSpeed's
optimizer step, under each shipped DeepSpeed config, and names where they come from. The
counts follow from code paths and the number of parameters, not from the device, so a CPU
shows what a GPU run will do. What a kernel reads inside itself is not seen here (a CPU
kernel may read a scalar that its CUDA counterpart keeps on the device): the GPU check's
profile counts every synchronisation there.

    python tools/count_host_syncs.py --json reports/bench/host_syncs_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

CONFIGS = ("zero0_fp32", "zero0_bf16", "zero1_bf16", "zero2_bf16", "zero3_bf16")  # in ds_configs/
OWN = ("deepspeed/", "transformers/", "pipeline/")
HOST_COPIES = ("has_padding",)  # crild's functions that read the batch's host copy: no synchronisation


class HostReads(TorchDispatchMode):
    """Counts reads of tensor values on the host, by the first line of DeepSpeed,
    transformers or crild under them."""

    def __init__(self):
        super().__init__()
        self.where: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ == "_local_scalar_dense":
            frames = [f for f in traceback.extract_stack()[:-1] if any(o in f.filename for o in OWN)]
            frame = frames[-1] if frames else None
            if frame is not None and frame.name in HOST_COPIES:
                return func(*args, **(kwargs or {}))
            where = "?" if frame is None else \
                f"{frame.filename.split('site-packages/')[-1].split(str(REPO) + '/')[-1]}:{frame.lineno} ({frame.name})"
            self.where[where] += 1
        return func(*args, **(kwargs or {}))


def count(name: str, a) -> dict:
    from bench_distill import make_model

    from pipeline.config import TrainConfig, from_dict
    from pipeline.distill.layers import layer_layout
    from pipeline.distill.objective import DistillObjective
    from pipeline.distill.presets import resolve_phases
    from pipeline.distill.student import DistillModule
    from pipeline.training.ds_config import build_ds_config
    from pipeline.training.engine import build_engine

    path = REPO / "ds_configs" / f"{name}.json"
    cfg = from_dict({"seed": 0, "stages": {"distill": {"preset": "cr-ild"}}})
    phase = resolve_phases(cfg.stages.distill)[0]
    teacher = make_model(a.vocab, a.hidden, a.heads, 4 * a.hidden, a.teacher_layers, "sdpa", 0).eval()
    teacher.requires_grad_(False)
    student = make_model(a.vocab, a.hidden, a.heads, 4 * a.hidden, a.student_layers, "sdpa", 1)
    train = TrainConfig(batch_size=len(a.lengths), learning_rate=1e-4)
    ds_cfg = build_ds_config(str(path), train, 1, 100, "count", "count", hidden_size=a.hidden)
    engine = build_engine(DistillModule(student, [], a.hidden), 0.01, ds_cfg)
    if ds_cfg.get("bf16", {}).get("enabled"):
        teacher.to(torch.bfloat16)
    layout = layer_layout(cfg.stages.distill, phase, student.config, teacher.config)
    objective = DistillObjective(cfg, phase, engine.module, teacher, layout, torch.device("cpu"), 100)
    width = max(a.lengths)
    ids = torch.randint(5, a.vocab, (len(a.lengths), width))
    mask = (torch.arange(width)[None, :] < torch.tensor(a.lengths)[:, None]).long()
    batch = {"input_ids": ids * mask, "token_type_ids": torch.zeros_like(ids), "attention_mask": mask,
             "labels": torch.arange(len(a.lengths)) % 2, "index": torch.arange(len(a.lengths))}
    parts = {}
    for micro in range(3):  # two steps to warm up, the third counted
        engine.train()
        modes = {part: HostReads() for part in ("crild step", "DeepSpeed backward", "DeepSpeed step")}
        with modes["crild step"]:
            total, _ = objective(engine, batch, micro)
        with modes["DeepSpeed backward"]:
            engine.backward(total)
        with modes["DeepSpeed step"]:
            engine.step()
        parts = {part: dict(mode.where.most_common()) for part, mode in modes.items()}
    params = sum(1 for p in engine.module.parameters() if p.requires_grad)
    result = {"config": f"ds_configs/{name}.json", "trainable_tensors": params,
              "per_part": {part: sum(w.values()) for part, w in parts.items()}, "where": parts}
    result["total"] = sum(result["per_part"].values())
    return result


def main() -> None:
    from pipeline.outputs.atomic import replace_text
    from pipeline.schema.arguments import OneLineParser, at_least, heads_divide, output_file

    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=at_least(1), default=768)
    p.add_argument("--heads", type=at_least(1), default=12)
    p.add_argument("--teacher-layers", type=at_least(1), default=12)
    p.add_argument("--student-layers", type=at_least(1), default=6)
    p.add_argument("--vocab", type=at_least(8), default=30522)
    p.add_argument("--lengths", type=at_least(3), nargs="+", default=[16, 11, 7, 16], help="the batch's sentence lengths")
    p.add_argument("--only", action="append", choices=CONFIGS)
    p.add_argument("--json", type=output_file, help="also write the results here")
    a = p.parse_args()
    heads_divide(p, a.hidden, a.heads)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from pipeline.models.loading import quiet_libraries
    from pipeline.runtime.distributed import init_distributed

    quiet_libraries()
    init_distributed()
    results = {}
    for name in a.only or CONFIGS:
        results[name] = r = count(name, a)
        print(f"{name}: {r['total']} host reads per optimizer step ({r['per_part']}; "
              f"{r['trainable_tensors']} trainable tensors)", flush=True)
        for part, where in r["where"].items():
            for line, n in where.items():
                print(f"    {part}: {n} x {line}")
    if a.json:
        shapes = {k: getattr(a, k) for k in ("hidden", "heads", "teacher_layers", "student_layers", "vocab", "lengths")}
        replace_text(a.json, json.dumps({"what": "host reads of device values in one optimizer step of the CR-ILD "
                                                    "phase (tools/count_host_syncs.py)",
                                            "torch": torch.__version__, "deepspeed": __import__("deepspeed").__version__,
                                            "transformers": __import__("transformers").__version__,
                                            "shapes": shapes, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    from pipeline.errors import cli_entry

    cli_entry(main)()  # a user error, a full disk or a refused path: one line, exit 2
