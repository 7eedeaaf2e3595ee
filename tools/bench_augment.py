#!/usr/bin/env python
"""Augmentation speed: TinyBERT's original structure against crild's batched implementation.

Both run the same algorithm (pipeline/augment.py) on the same sentences with the same seed:
the original structure makes one masked-LM forward per word (batch size 1, predictions at
every position) and one full word-vector search per word; the batched one groups masked
variants of many sentences per forward, applies the LM head at the masked position only, and
searches each distinct word once. The script checks that the outputs are identical and
prints the speed ratio.

    .venv/bin/python tools/bench_augment.py [--sentences 40] [--layers 2] [--hidden 128]

No real masked-LM weights install offline, so the masked LM is a small random
BertForMaskedLM with all-MiniLM-L6-v2's vocabulary (speed does not depend on the weights);
the word vectors are the real GloVe 6B 50d.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def main() -> None:
    from pipeline.schema.arguments import OneLineParser, at_least

    parser = OneLineParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sentences", type=at_least(1), default=80)
    parser.add_argument("--layers", type=at_least(1), default=1)
    parser.add_argument("--hidden", type=at_least(1), default=64)
    parser.add_argument("--copies", type=at_least(1), default=20)
    parser.add_argument("--seed", type=at_least(0), default=0)
    args = parser.parse_args()

    from transformers import BertConfig, BertForMaskedLM

    from pipeline.config import TaskConfig
    from pipeline.data.augment import AugmentParams, BatchedAugmenter, MaskedLM, OriginalAugmenter, load_vectors
    from pipeline.data.sources import load_split
    from pipeline.data.stress import few_sample
    from pipeline.data.tasks import TASKS
    from pipeline.models.loading import load_tokenizer, quiet_libraries, resolve_model

    quiet_libraries()
    tokenizer = load_tokenizer(resolve_model("all-MiniLM-L6-v2", "bench"), "bench")
    ex = few_sample(load_split(TaskConfig(name="rotten_tomatoes"), TASKS["rotten_tomatoes"], "train"),
                    args.sentences, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(args.seed)
        cfg = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=max(1, args.hidden // 64), intermediate_size=4 * args.hidden)
        BertForMaskedLM(cfg).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        mlm = MaskedLM(tmp, torch.device("cpu"))
    vectors = load_vectors("glove-6b-50d", None)
    params = AugmentParams(copies=args.copies)
    words = sum(len(t.split()) for t in ex.text_a)
    print(f"{len(ex)} Rotten Tomatoes sentences ({words} words), N={params.copies} p={params.replace_prob} "
          f"M={params.candidates}; masked LM: {args.layers} layers x {args.hidden}, vocab {cfg.vocab_size}; "
          f"GloVe 6B 50d ({len(vectors.words)} words); {torch.get_num_threads()} threads")

    timings, outputs = {}, {}
    for name, augmenter in (("batched", BatchedAugmenter(tokenizer, vectors, mlm, params, args.seed)),
                            ("original", OriginalAugmenter(tokenizer, vectors, mlm, params, args.seed))):
        start = time.perf_counter()
        outputs[name] = augmenter.augment(ex.text_a, ex.text_b, ex.ids)
        timings[name] = time.perf_counter() - start
        rows = sum(len(r) for r in outputs[name])
        print(f"{name:>8}: {timings[name]:8.2f} s  ({len(ex) / timings[name]:7.2f} sentences/s, {rows} rows)")
    identical = outputs["batched"] == outputs["original"]
    differing = sum(a != b for a, b in zip(outputs["batched"], outputs["original"]))
    print(f"outputs identical: {identical}" + ("" if identical else f" ({differing} examples differ)"))
    print(f"speed-up of the batched implementation: {timings['original'] / timings['batched']:.1f}x")
    sys.exit(0 if identical else 1)


if __name__ == "__main__":
    from pipeline.errors import cli_entry

    cli_entry(main)()  # a user error, a full disk or a refused path: one line, exit 2
