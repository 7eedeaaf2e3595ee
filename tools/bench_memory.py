"""Memory per rank of the distillation stage at world size 2, for each ZeRO setting:
the student's training state (weights, gradients, optimizer state, ZeRO buffers) and the
frozen teacher (replicated, or partitioned with ZeRO-3), measured separately.

    python tools/bench_memory.py [--student-layers 6 --teacher-layers 12 --hidden 768] [--json out.json]

Each configuration runs as its own 2-rank DeepSpeed job (the deepspeed launcher) doing two
CR-ILD steps. Reported per rank: bytes of the distinct tensor storages the student engine
holds after the steps, the same for the teacher, and on GPUs the peak allocated memory of
each; on CPUs the process's peak resident set size instead (it includes the libraries).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CONFIGS = {  # name -> (student DeepSpeed config, teacher partitioned with ZeRO-3?)
    "zero0": ("ds_configs/zero0_bf16.json", False),
    "zero1": ("zero1", False),  # written from zero2_bf16.json with stage 1
    "zero2": ("ds_configs/zero2_bf16.json", False),
    "zero3": ("ds_configs/zero3_bf16.json", False),
    "zero3+offload": ("ds_configs/zero3_bf16_offload.json", False),
    "zero3, teacher zero3": ("ds_configs/zero3_bf16.json", True),
}


def tensor_bytes(roots, seen: set | None = None, depth: int = 5) -> int:
    """Bytes of the distinct storages of every tensor reachable from ``roots`` (lists, dicts,
    parameters with their ZeRO partitions, optimizer objects)."""
    import torch

    seen = set() if seen is None else seen
    total = 0
    stack = [(r, depth) for r in roots]
    visited = set()
    while stack:
        obj, d = stack.pop()
        if obj is None or id(obj) in visited:
            continue
        visited.add(id(obj))
        if isinstance(obj, torch.Tensor):
            for t in (obj, getattr(obj, "grad", None), getattr(obj, "ds_tensor", None)):
                if isinstance(t, torch.Tensor) and t.numel():
                    s = t.untyped_storage()
                    key = (s.device.type, s.data_ptr())
                    if key not in seen:
                        seen.add(key)
                        total += s.nbytes()
            continue
        if d == 0:
            continue
        if isinstance(obj, dict):
            stack += [(v, d - 1) for v in obj.values()]
        elif isinstance(obj, (list, tuple, set)):
            stack += [(v, d - 1) for v in obj]
        elif isinstance(obj, torch.nn.Module):
            stack += [(p, d - 1) for p in obj.parameters()] + [(b, d - 1) for b in obj.buffers()]
        elif type(obj).__module__.split(".")[0] in ("deepspeed", "torch") and hasattr(obj, "__dict__"):
            stack += [(v, d - 1) for v in vars(obj).values()]
    return total


def worker(args) -> None:
    import torch

    from pipeline.config import RandomInit, TrainConfig, from_dict
    from pipeline.data.tasks import get_task
    from pipeline.distill.layers import LayerLayout
    from pipeline.distill.objective import DistillObjective
    from pipeline.distill.presets import Phase
    from pipeline.distill.student import DistillModule
    from pipeline.distill.teacher import FrozenTeacher
    from pipeline.models.loading import build_classifier, quiet_libraries
    from pipeline.runtime.distributed import init_distributed
    from pipeline.training.ds_config import build_ds_config, precision_dtype
    from pipeline.training.engine import build_engine

    quiet_libraries()
    dist = init_distributed()
    spec = get_task("rotten_tomatoes")
    cuda = dist.device.type == "cuda"
    out = {}

    # the teacher first, alone
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    raw = {"stages": {"distill": {"teacher_model": args.teacher}}}
    if args.teacher_zero3:
        raw["stages"]["distill"]["teacher_deepspeed_config"] = "ds_configs/zero3_bf16.json"
    teacher = FrozenTeacher(from_dict(raw, str(REPO / "bench")), Path(args.teacher), spec, dist)
    teacher.set_dtype(torch.bfloat16)
    out["teacher_state_bytes"] = tensor_bytes([teacher.model])
    if cuda:
        out["teacher_peak_allocated"] = torch.cuda.max_memory_allocated()

    # then the student's engine and two CR-ILD steps
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    shape = RandomInit(num_layers=args.student_layers, hidden_size=args.hidden, num_heads=args.heads,
                       intermediate_size=4 * args.hidden)
    student = build_classifier(args.base, spec, "student", random_init=shape)
    module = DistillModule(student, [], args.hidden)
    train = TrainConfig(batch_size=4, learning_rate=1e-4)
    ds_cfg = build_ds_config(args.ds, train, dist.world_size, 10, "bench", "bench", hidden_size=args.hidden)
    engine = build_engine(module, 0.01, ds_cfg)
    assert precision_dtype(ds_cfg) == torch.bfloat16
    phase = Phase("ild", {"qkv_relation": 1.0}, True, 0.1)
    cfg = from_dict({"seed": 0, "stages": {"distill": {"temperature": 1.0}}})
    objective = DistillObjective(cfg, phase, module, teacher.model,
                                 LayerLayout([(args.student_layers, args.teacher_layers)], args.heads), dist.device, 10)
    g = torch.Generator().manual_seed(dist.rank)
    for step in range(2):
        ids = torch.randint(1000, 2000, (4, 64), generator=g)
        batch = {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": torch.ones_like(ids),
                 "labels": torch.randint(0, 2, (4,), generator=g)}
        total, _ = objective(engine, batch, step)
        engine.backward(total)
        engine.step()
    gc.collect()
    teacher_seen: set = set()
    tensor_bytes([teacher.model], teacher_seen)
    out["student_state_bytes"] = tensor_bytes([engine.module, engine.optimizer], set(teacher_seen))
    if cuda:
        out["student_peak_allocated"] = torch.cuda.max_memory_allocated()
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(args.out, f"rank{dist.rank}.json").write_text(json.dumps(out))


def save_teacher(folder: Path, layers: int, hidden: int, heads: int, base: str = "all-MiniLM-L6-v2") -> None:
    from pipeline.config import RandomInit
    from pipeline.data.tasks import get_task
    from pipeline.models.loading import build_classifier, load_tokenizer, resolve_model

    shape = RandomInit(num_layers=layers, hidden_size=hidden, num_heads=heads, intermediate_size=4 * hidden)
    model = build_classifier(base, get_task("rotten_tomatoes"), "teacher", random_init=shape)
    model.save_pretrained(str(folder), safe_serialization=True)
    load_tokenizer(resolve_model(base, "tokenizer"), "tokenizer").save_pretrained(str(folder))


def main() -> None:
    from pipeline.schema.arguments import OneLineParser, at_least, heads_divide, output_file

    p = OneLineParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student-layers", type=at_least(1), default=6)
    p.add_argument("--teacher-layers", type=at_least(1), default=12)
    p.add_argument("--hidden", type=at_least(1), default=768)
    p.add_argument("--heads", type=at_least(1), default=12)
    p.add_argument("--only", action="append", choices=list(CONFIGS))
    p.add_argument("--json", type=output_file)
    p.add_argument("--ranks", type=at_least(1), default=2, help="ranks per configuration (1 on a single GPU)")
    p.add_argument("--base", default="all-MiniLM-L6-v2", help="model folder or alias giving vocabulary and tokenizer")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ds", help=argparse.SUPPRESS)
    p.add_argument("--teacher", help=argparse.SUPPRESS)
    p.add_argument("--teacher-zero3", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    heads_divide(p, args.hidden, args.heads)
    if args.worker:
        worker(args)
        return

    from pipeline.launch.command import DEEPSPEED_LAUNCHER
    from pipeline.runtime.distributed import free_port

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_teacher(tmp / "teacher", args.teacher_layers, args.hidden, args.heads, args.base)
        zero1 = json.loads((REPO / "ds_configs" / "zero2_bf16.json").read_text())
        zero1["zero_optimization"]["stage"] = 1
        (tmp / "zero1.json").write_text(json.dumps(zero1))
        print(f"student {args.student_layers}x{args.hidden}, teacher {args.teacher_layers}x{args.hidden}, bf16, "
              f"world size {args.ranks}; MiB per rank (rank 0 / rank 1 ...)", flush=True)
        print(f"{'config':>22} | {'student state':>15} | {'teacher':>15} | {'peak RSS':>15}")
        for name, (ds, teacher_zero3) in CONFIGS.items():
            if args.only and name not in args.only:
                continue
            out = tmp / name.replace(" ", "_").replace(",", "")
            out.mkdir()
            ds_path = str(tmp / "zero1.json") if ds == "zero1" else str(REPO / ds)
            cmd = [*DEEPSPEED_LAUNCHER, "--num_gpus", str(args.ranks), "--master_port", str(free_port()), str(Path(__file__).resolve()),
                   "--worker", "--ds", ds_path, "--teacher", str(tmp / "teacher"), "--out", str(out),
                   "--student-layers", str(args.student_layers), "--teacher-layers", str(args.teacher_layers),
                   "--hidden", str(args.hidden), "--heads", str(args.heads), "--base", args.base] + (
                       ["--teacher-zero3"] if teacher_zero3
                                                                                 else [])
            env = dict(os.environ, OMP_NUM_THREADS="1")
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(REPO))
            if proc.returncode != 0:
                print(f"{name:>22} | failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}")
                results[name] = {"error": proc.stderr[-2000:]}
                write_results(args.json, results)
                continue
            ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(args.ranks)]
            results[name] = ranks
            key = "peak_allocated" if "student_peak_allocated" in ranks[0] else None

            def mib(k, ranks=ranks):
                return " / ".join(f"{r[k] / 2**20:.0f}" for r in ranks)

            print(f"{name:>22} | {mib('student_state_bytes'):>15} | {mib('teacher_state_bytes'):>15} | "
                  f"{mib('peak_rss_bytes'):>15}" + (f" | GPU peak {mib('student_' + key)}" if key else ""),
                  flush=True)
            write_results(args.json, results)


def write_results(path: str | None, results: dict) -> None:
    """The rows measured so far, written after each one: a run stopped by a time limit (the
    GPU check's) keeps them."""
    from pipeline.outputs.atomic import replace_text

    if path:
        replace_text(path, json.dumps(results, indent=1))


if __name__ == "__main__":
    from pipeline.errors import cli_entry

    cli_entry(main)()  # a user error, a full disk or a refused path: one line, exit 2
