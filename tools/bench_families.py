"""Time one CR-ILD step (teacher forward on the mixup view with captures, student forward and
backward with captures, the consistency target, AdamW) on a tiny model of every encoder
family, so that no family is pathologically slow: 4-layer teacher, 2-layer student, hidden
32, 4 heads, batch 8 of the same two sentences in each family's tokenizer, one thread.

    python tools/bench_families.py [--json reports/bench/bench_families_cpu.json]
"""
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def main() -> None:
    from pipeline.outputs.atomic import replace_text
    from pipeline.schema.arguments import OneLineParser, at_least, output_file

    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=at_least(1), default=50, help="timed steps per family (their median)")
    parser.add_argument("--warmup", type=at_least(0), default=10, help="untimed steps first, per family")
    parser.add_argument("--json", type=output_file, default=None)
    args = parser.parse_args()

    import torch
    from helpers import FAMILY_TOKENIZERS, write_tiny_family

    from pipeline.config import from_dict
    from pipeline.data.tasks import TASKS
    from pipeline.distill.layers import layer_layout
    from pipeline.distill.objective import DistillObjective
    from pipeline.distill.presets import resolve_phases
    from pipeline.distill.student import DistillModule
    from pipeline.models.loading import build_classifier, load_tokenizer, quiet_libraries

    quiet_libraries()
    torch.set_num_threads(1)
    spec = TASKS["rotten_tomatoes"]
    cfg = from_dict({"stages": {"distill": {"preset": "cr-ild"}}})
    phase = resolve_phases(cfg.stages.distill)[0]

    class Engine:
        global_steps = 0

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model_type in sorted(FAMILY_TOKENIZERS):
            folder = write_tiny_family(Path(tmp) / model_type, model_type)
            tok = load_tokenizer(str(folder), model_type)
            teacher = build_classifier(str(folder), spec, "teacher").eval().requires_grad_(False)
            student = build_classifier(str(folder), spec, "student", num_layers=2)
            layout = layer_layout(cfg.stages.distill, phase, student.config, teacher.config)
            module = DistillModule(student, [], teacher.config.hidden_size)
            objective = DistillObjective(cfg, phase, module, teacher, layout, torch.device("cpu"), 10**6)
            optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
            enc = tok(["the film was good and the story was moving .", "a dull movie with weak actors ."] * 4,
                      padding=True, return_tensors="pt", return_token_type_ids=True)
            batch = {**enc, "labels": torch.tensor([1, 0] * 4), "index": torch.arange(8)}
            times = []
            for step in range(args.warmup + args.steps):
                start = time.perf_counter()
                total, _ = objective(Engine(), batch, step)
                total.backward()
                optimizer.step()
                optimizer.zero_grad()
                times.append(time.perf_counter() - start)
            results[model_type] = {"ms_per_step": statistics.median(times[args.warmup:]) * 1000,
                                   "tokens_per_row": int(enc["input_ids"].shape[1])}
            print(f"{model_type:12s} {results[model_type]['ms_per_step']:6.1f} ms per CR-ILD step "
                  f"(batch 8, {results[model_type]['tokens_per_row']} tokens)", flush=True)
    if args.json:
        replace_text(args.json, json.dumps({"torch": torch.__version__, "threads": 1, "results": results},
                                              indent=1) + "\n")


if __name__ == "__main__":
    from pipeline.errors import cli_entry

    cli_entry(main)()  # a user error, a full disk or a refused path: one line, exit 2
