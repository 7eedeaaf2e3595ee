"""Samples/s of one CR-ILD training step, three ways, on the same models, data and batch size:

  crild      this project's step: DeepSpeed engine, SDPA attention, hooks that capture only the
             last layer's Q/K/V, length-grouped dynamic padding, torch fused AdamW
  reference  the paper's code structure: eager attention, every layer's hidden states and
             attention maps returned, fixed padding to max_length, per-parameter AdamW
  textbrewer TextBrewer's GeneralDistiller with the closest losses it has (last-layer attention
             CE + hidden MSE; it has no Q/K/V relations and no mixup/consistency), fed fixed-length
             batches as its examples build them (TensorDataset of features padded to max_length)

and, to separate the method from the machinery, two equal-work rows: crild's step without
mixup and consistency (L-ILD: the work TextBrewer's step does) against TextBrewer fed crild's
own dynamic batches; and crild's step on fixed-length batches (``crild-fixed``), whose
fraction of the matmul peak is the one at the given length.

Every variant first runs one untimed pass over all its batches, so each batch shape has met
its kernels (cuBLAS heuristics, lazily loaded CUDA modules, compilation) before the timed pass;
the first pass's time is reported too. ``--profile FILE`` writes torch.profiler's table of
crild's step (top operators by device and host time, and the host synchronisations per step).

Also the machine's matmul peak (best of square matmuls) and crild's model FLOPs/s as a
fraction of it. Models are random BERTs of the shape given (default: BERT-base layer shapes,
4-layer teacher, 2-layer student) with the offline tokenizer; the data is Rotten Tomatoes.

    python tools/bench_distill.py [--steps 8] [--batch-size 32] [--json out.json] [--profile FILE]
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.outputs.atomic import replace_text  # noqa: E402


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 2048, seconds: float = 2.0) -> float:
    """FLOP/s of the best of repeated n x n matmuls."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        sync(device)
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        sync(device)
        best = max(best, 4 * 2 * n ** 3 / (time.perf_counter() - t))
    return best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_model(vocab: int, hidden: int, heads: int, ffn: int, layers: int, attn: str, seed: int):
    from transformers import AutoModelForSequenceClassification, BertConfig

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_attention_heads=heads, intermediate_size=ffn,
                     num_hidden_layers=layers, num_labels=2, max_position_embeddings=512)
    return AutoModelForSequenceClassification.from_config(cfg, attn_implementation=attn)


def layer_flops(tokens_per_seq: np.ndarray, hidden: int, ffn: int) -> float:
    """Forward FLOPs of one encoder layer over sequences of these lengths."""
    t = tokens_per_seq.astype(np.float64)
    return float(np.sum(2 * t * (4 * hidden * hidden + 2 * hidden * ffn) + 4 * t * t * hidden))


def step_flops(lengths: np.ndarray, a) -> float:
    """Model FLOPs of one CR-ILD step at these padded lengths: teacher forward, student
    forward + backward (3x), the student's clean pass for the consistency target, and the
    Q/K/V relation matrices (teacher, student, clean)."""
    per_layer = layer_flops(lengths, a.hidden, a.ffn)
    relations = float(np.sum(3 * 3 * 2 * lengths.astype(np.float64) ** 2 * a.hidden))
    return per_layer * (a.teacher_layers + 3 * a.student_layers + a.student_layers) + relations


def load_batches(a, tokenizer):
    from pipeline.config import TaskConfig
    from pipeline.data.sources import load_split
    from pipeline.data.tasks import get_task

    ex = load_split(TaskConfig(name="rotten_tomatoes"), get_task("rotten_tomatoes"), "train")
    rng = np.random.default_rng(0)
    n = a.batch_size * a.steps
    idx = rng.choice(len(ex), size=n, replace=False)
    texts = [ex.text_a[i] for i in idx]
    labels = torch.as_tensor(np.asarray(ex.labels)[idx])
    # length-grouped like crild's sampler: sort a window by length, cut into batches
    enc = tokenizer(texts, truncation=True, max_length=a.max_length)
    order = np.argsort([len(x) for x in enc["input_ids"]], kind="stable")
    dynamic, fixed = [], []
    for b in range(a.steps):
        rows = order[b * a.batch_size:(b + 1) * a.batch_size]
        batch_texts = [texts[i] for i in rows]
        # dynamic: to the batch's longest, rounded up to a multiple of 8 as crild's Collator pads
        for out, pad, multiple in ((dynamic, "longest", 8), (fixed, "max_length", None)):
            t = tokenizer(batch_texts, truncation=True, max_length=a.max_length, padding=pad,
                          pad_to_multiple_of=multiple, return_tensors="pt")
            out.append({"input_ids": t["input_ids"], "token_type_ids": t["token_type_ids"],
                        "attention_mask": t["attention_mask"], "labels": labels[rows]})
    rng.shuffle(perm := np.arange(len(dynamic)))
    return [dynamic[i] for i in perm], [fixed[i] for i in perm]


def to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def timed(step, batches, device, profile: str | None = None) -> tuple[float, float]:
    """(seconds of a first pass over ``batches``, seconds of a second pass): the first meets
    every batch shape once, the second is the measurement. With ``profile``, three more
    steps run under torch.profiler and its tables are written there."""
    times = []
    for _ in range(2):
        sync(device)
        t = time.perf_counter()
        for b in batches:
            step(b)
        sync(device)
        times.append(time.perf_counter() - t)
    if profile:
        write_profile(step, batches[:3], device, profile)
    return times[0], times[1]


def write_profile(step, batches, device, path: str) -> None:
    """torch.profiler over ``batches``: the top operators by device and by host time, and the
    host synchronisations (calls that wait for the device) per step."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for b in batches:
            step(b)
        sync(device)
    events = prof.key_averages()
    syncs = {e.key: e.count / len(batches) for e in events
             if e.key in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize",
                          "aten::item", "aten::_local_scalar_dense")}
    device_sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    replace_text(path, f"{len(batches)} steps profiled; host synchronisations per step: {syncs}\n\n"
                          f"by {device_sort}:\n{events.table(sort_by=device_sort, row_limit=25)}\n\n"
                          f"by cpu_time_total:\n{events.table(sort_by='cpu_time_total', row_limit=25)}\n")
    print(f"profile of {len(batches)} crild steps in {path}; host synchronisations per step: {syncs}", flush=True)


# --------------------------------------------------------------------------- (a) crild


# the DeepSpeed config of crild's rows: at bf16, ZeRO-1's BF16_Optimizer (2 host reads per
# optimizer step) rather than ZeRO-0's unfused one (one per parameter tensor;
# tools/count_host_syncs.py)
ENGINE_CONFIGS = {"bf16": "ds_configs/zero1_bf16.json", "fp32": "ds_configs/zero0_fp32.json"}


def bench_crild(a, teacher, student, batches, device, precision: str, consistency: bool = True,
                compiled: bool = False, profile: str | None = None):
    from pipeline.config import TrainConfig, from_dict
    from pipeline.distill.layers import LayerLayout
    from pipeline.distill.objective import DistillObjective
    from pipeline.distill.presets import Phase
    from pipeline.distill.student import DistillModule
    from pipeline.runtime.distributed import init_distributed
    from pipeline.training.ds_config import build_ds_config
    from pipeline.training.engine import build_engine

    init_distributed()
    if compiled:  # what compile: true does; the warm-up steps include the compile
        from pipeline.models.compiling import compile_layers

        compile_layers(student)
        compile_layers(teacher)
    module = DistillModule(student, [], teacher.config.hidden_size)
    train = TrainConfig(batch_size=a.batch_size, learning_rate=1e-4)
    ds_cfg = build_ds_config(ENGINE_CONFIGS[precision], train, 1, 1000, "bench", "bench")
    engine = build_engine(module, 0.01, ds_cfg)
    if precision == "bf16":
        teacher.to(torch.bfloat16)
    phase = Phase("ild", {"qkv_relation": 1.0}, consistency, 0.1 if consistency else 0.0)
    cfg = from_dict({"seed": 0, "stages": {"distill": {"temperature": 1.0}}})
    objective = DistillObjective(cfg, phase, module, teacher,
                                 LayerLayout([(a.student_layers, a.teacher_layers)], a.heads), device, 1000)
    micro = [0]

    def step(batch):
        engine.train()
        total, _ = objective(engine, batch, micro[0])
        engine.backward(total)
        engine.step()
        micro[0] += 1

    return timed(step, batches, device, profile)


# --------------------------------------------------------------------------- (b) reference


def _relations(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, h = x.shape
    x = x.view(b, t, heads, h // heads).transpose(1, 2)
    return torch.softmax(x @ x.transpose(-1, -2) / (h // heads) ** 0.5, dim=-1)


def _qkv(model, hidden_in: torch.Tensor):
    attn = model.bert.encoder.layer[-1].attention.self
    return attn.query(hidden_in), attn.key(hidden_in), attn.value(hidden_in)


def bench_reference(a, teacher, student, batches, device, precision: str):
    """The paper's code structure: all hidden states and attention maps returned, the last
    layer's Q/K/V recomputed from its input, unmasked relation KL, fixed padding."""
    from pipeline.distill.mixup import EmbeddingMixer, MixedView

    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, foreach=False)
    t_mix, s_mix = EmbeddingMixer(teacher), EmbeddingMixer(student)
    rng = np.random.default_rng(0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def kl(t, s):
        return (t * (torch.log(t + 1e-9) - torch.log(s + 1e-9))).sum(-1).mean()

    def step(batch):
        batch = to(batch, device)
        inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
        lam = float(max(draw := rng.beta(1.0, 1.0), 1 - draw))
        partner = torch.randperm(inputs["input_ids"].shape[0], device=device)
        inputs["attention_mask"] = inputs["attention_mask"] | inputs["attention_mask"][partner]
        view = MixedView(lam, partner, inputs["attention_mask"])
        student.train()
        with autocast:
            with torch.no_grad():
                t_mix.view = view
                t_out = teacher(**inputs, output_hidden_states=True, output_attentions=True)
                t_mix.view = None
                t_rel = [_relations(x, a.heads) for x in _qkv(teacher, t_out.hidden_states[-2])]
            s_mix.view = view
            s_out = student(**inputs, output_hidden_states=True, output_attentions=True)
            s_mix.view = None
            s_rel = [_relations(x, a.heads) for x in _qkv(student, s_out.hidden_states[-2])]
            loss = sum(kl(t, s) for t, s in zip(t_rel, s_rel))
            with torch.no_grad():
                c_out = student(**{k: batch[k] for k in inputs}, output_hidden_states=True, output_attentions=True)
                c_rel = [_relations(x, a.heads) for x in _qkv(student, c_out.hidden_states[-2])]
            cons = sum(lam * kl(c, s) + (1 - lam) * kl(c[partner], s) for c, s in zip(c_rel, s_rel))
            loss = loss + 0.1 * cons
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    return timed(step, batches, device)


# --------------------------------------------------------------------------- (c) TextBrewer


def bench_textbrewer(a, teacher, student, batches, device, precision: str):
    from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig

    for m in (teacher, student):
        m.config.output_hidden_states = True
        m.config.output_attentions = True

    def adaptor(batch, out):
        return {"logits": out.logits, "hidden": out.hidden_states, "attention": out.attentions,
                "inputs_mask": batch["attention_mask"]}

    matches = [{"layer_T": a.teacher_layers - 1, "layer_S": a.student_layers - 1, "feature": "attention",
                "loss": "attention_ce", "weight": 1},
               {"layer_T": a.teacher_layers, "layer_S": a.student_layers, "feature": "hidden", "loss": "hidden_mse",
                "weight": 1}]
    with tempfile.TemporaryDirectory() as tmp:
        distiller = GeneralDistiller(TrainingConfig(device=device, output_dir=tmp, log_dir=None),
                                     DistillationConfig(intermediate_matches=matches, kd_loss_weight=0.0),
                                     teacher, student, adaptor, adaptor)
        opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

        def step(batch):  # the body of TextBrewer's own training loop
            student.train()
            with autocast:
                total, _ = distiller.train_on_batch({k: v for k, v in batch.items() if k != "labels"}, {})
            total.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            opt.zero_grad()

        return timed(step, batches, device)


VARIANTS = ["crild", "crild-fixed", "reference", "textbrewer", "crild-l-ild", "textbrewer-dynamic", "crild-compiled"]


def main() -> None:
    from pipeline.schema.arguments import OneLineParser, at_least, heads_divide, output_file

    p = OneLineParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=at_least(1), default=768)
    p.add_argument("--heads", type=at_least(1), default=12)
    p.add_argument("--ffn", type=at_least(1), default=3072)
    p.add_argument("--teacher-layers", type=at_least(1), default=4)
    p.add_argument("--student-layers", type=at_least(1), default=2)
    p.add_argument("--batch-size", type=at_least(1), default=32)
    p.add_argument("--max-length", type=at_least(3), default=128)
    p.add_argument("--steps", type=at_least(1), default=8, help="batches per variant, each run twice (warm-up, timed)")
    p.add_argument("--only", action="append", choices=VARIANTS)
    p.add_argument("--json", type=output_file, help="also write the results here")
    p.add_argument("--profile", type=output_file, help="write torch.profiler's tables of crild's step here")
    p.add_argument("--tokenizer", default="all-MiniLM-L6-v2", help="a model folder or offline alias")
    a = p.parse_args()
    heads_divide(p, a.hidden, a.heads)

    from pipeline.models.loading import load_tokenizer, quiet_libraries, resolve_model

    quiet_libraries()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    tokenizer = load_tokenizer(resolve_model(a.tokenizer, "--tokenizer"), "--tokenizer")
    dynamic, fixed = load_batches(a, tokenizer)
    if device.type == "cuda":  # in page-locked host memory, as crild's training loop hands batches over
        dynamic, fixed = ([{k: v.pin_memory() for k, v in b.items()} for b in batches] for batches in (dynamic, fixed))
    peak = max(matmul_peak(torch.bfloat16 if precision == "bf16" else torch.float32, device, n, seconds=1.0)
               for n in ((2048, 4096, 8192) if device.type == "cuda" else (1024, 2048)))
    lengths = [b["input_ids"].shape[1] for b in dynamic]
    print(f"device {device} ({os.cpu_count()} cores), {precision}, torch {torch.__version__}; matmul peak "
          f"{peak / 1e9:.1f} GFLOP/s; batch {a.batch_size}, dynamic lengths mean {np.mean(lengths):.1f} vs fixed "
          f"{a.max_length}; teacher {a.teacher_layers}x{a.hidden}, student {a.student_layers}x{a.hidden}", flush=True)

    results = {}
    variants = {"crild": (lambda *x: bench_crild(*x, profile=a.profile), dynamic, "sdpa"),
                # the same step at the fixed length: the fraction of the peak at --max-length
                "crild-fixed": (bench_crild, fixed, "sdpa"),
                "reference": (bench_reference, fixed, "eager"),
                "textbrewer": (bench_textbrewer, fixed, "eager"),
                # the same work as TextBrewer does (no mixup, no consistency pass), on the same batches
                "crild-l-ild": (lambda *x: bench_crild(*x, consistency=False), dynamic, "sdpa"),
                "textbrewer-dynamic": (bench_textbrewer, dynamic, "eager"),
                # compile: true (each encoder layer torch.compiled, dynamic shapes)
                "crild-compiled": (lambda *x: bench_crild(*x, compiled=True), dynamic, "sdpa")}
    for name, (fn, batches, attn) in variants.items():
        if a.only and name not in a.only:
            continue
        vocab = tokenizer.vocab_size
        teacher = make_model(vocab, a.hidden, a.heads, a.ffn, a.teacher_layers, attn, 0).to(device).eval()
        teacher.requires_grad_(False)
        student = make_model(vocab, a.hidden, a.heads, a.ffn, a.student_layers, attn, 1).to(device)
        first, seconds = fn(a, teacher, student, batches, device, precision)
        sps = a.batch_size * a.steps / seconds
        results[name] = {"samples_per_s": sps, "seconds": seconds, "first_pass_seconds": first}
        print(f"{name:>18}: {sps:8.1f} samples/s ({seconds:.2f} s for {a.steps} steps; first pass {first:.2f} s)",
              flush=True)
        del teacher, student
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for name, step_lengths in (("crild", lengths), ("crild-fixed", [a.max_length] * a.steps)):
        if name in results:
            flops = sum(step_flops(np.full(a.batch_size, n), a) for n in step_lengths)
            results[name]["model_flops_per_s"] = flops / results[name]["seconds"]
            results[name]["fraction_of_matmul_peak"] = mfu = flops / results[name]["seconds"] / peak
            print(f"{name} model FLOPs: {flops / results[name]['seconds'] / 1e9:.1f} GFLOP/s = {mfu:.1%} of the "
                  f"matmul peak (mean length {np.mean(step_lengths):.0f})")
    for mine, other, target in (("crild", "reference", 2.0), ("crild", "textbrewer", 2.0),
                                ("crild-compiled", "crild", None),
                                ("crild-l-ild", "textbrewer-dynamic", None)):
        if mine in results and other in results:
            r = results[mine]["samples_per_s"] / results[other]["samples_per_s"]
            results[f"{mine}_vs_{other}"] = r
            note = f" (target {target}x)" if target else " (equal work, equal batches)"
            print(f"{mine} / {other}: {r:.2f}x{note}")
    results["matmul_peak_flops"] = peak
    results["setup"] = vars(a) | {"device": str(device), "precision": precision, "torch": torch.__version__}
    if a.json:
        replace_text(a.json, json.dumps(results, indent=1))


if __name__ == "__main__":
    from pipeline.errors import cli_entry

    cli_entry(main)()  # a user error, a full disk or a refused path: one line, exit 2
