"""``compile: true``: encoder layers compiled in place give the eager model's captures and
training, hooks added after the compile are seen, and ZeRO-3 is refused in one line."""
import json
from pathlib import Path

import pytest
import torch
from helpers import tiny_run_config, write_tiny_bert
from safetensors.torch import load_file

from pipeline import stage1_teacher, stage3_distill
from pipeline.config import from_dict
from pipeline.distill.hooked import HookedModel
from pipeline.errors import UserError
from pipeline.models.compiling import compile_layers
from pipeline.training.stop import StopRequest


def tiny_classifier(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, attn_implementation="sdpa")
    return BertForSequenceClassification(config).eval()


def batch(length: int) -> dict:
    ids = torch.randint(1, 50, (3, length), generator=torch.Generator().manual_seed(length))
    mask = torch.ones_like(ids)
    mask[0, length // 2:] = 0  # padding in the batch
    return {"input_ids": ids, "attention_mask": mask}


def detached(caps: dict) -> dict:
    return {layer: {kind: v.detach().clone() for kind, v in kinds.items()} for layer, kinds in caps.items()}


def test_compiled_layers_capture_what_eager_layers_do_with_hooks_added_after_the_compile():
    model = tiny_classifier()
    eager = HookedModel(model, {1, 2}, {"q", "k", "v", "hidden"})
    expected = {n: (lambda out: (out[0].detach().clone(), detached(out[1])))(eager.run(batch(n))) for n in (5, 9)}
    eager.capture.remove()
    keys = list(model.state_dict())

    compile_layers(model)
    model(**batch(4))  # compiled before any capture hook exists
    assert list(model.state_dict()) == keys  # checkpoints and saved models are unchanged
    hooked = HookedModel(model, {1, 2}, {"q", "k", "v", "hidden"})
    for n in (5, 9):  # two lengths: dynamic shapes
        logits, caps = hooked.run(batch(n))
        assert torch.allclose(logits, expected[n][0], atol=1e-5)
        assert sorted(caps) == [1, 2] and all(sorted(caps[i]) == ["hidden", "k", "q", "v"] for i in caps)
        for layer, kinds in caps.items():
            for kind, value in kinds.items():
                assert torch.allclose(value, expected[n][1][layer][kind], atol=1e-5), (layer, kind)
    hooked.capture.remove()
    fewer = HookedModel(model, {2}, {"hidden"})  # a later phase's hooks: recompiled, not the old graph
    _, caps = fewer.run(batch(5))
    assert {i: sorted(k) for i, k in caps.items()} == {2: ["hidden"]}


def test_compile_with_zero3_is_refused():
    with pytest.raises(UserError, match="run.yaml: compile: true is not supported with ZeRO-3"):
        compile_layers(tiny_classifier(), {"zero_optimization": {"stage": 3}}, "run.yaml: compile")


def test_distillation_with_compile_trains_the_same_student(tmp_path, sentiment_dir):
    """Without dropout (whose compiled masks come from another generator) a CR-ILD run with
    compiled layers ends with the eager run's student, within float rounding."""
    model = write_tiny_bert(tmp_path / "no-dropout")
    config = json.loads((model / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model / "config.json").write_text(json.dumps(config))
    raw = tiny_run_config(tmp_path / "teacher", model, sentiment_dir, epochs=1)
    raw["task"]["few_sample"] = 32
    assert stage1_teacher.run(from_dict(raw), stop=StopRequest(install_handlers=False)) == 0
    short = {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "eval_batch_size": 16}
    students = {}
    from torch._dynamo.utils import counters

    for compiled in (False, True):
        counters.clear()
        raw_d = dict(raw, output_dir=str(tmp_path / f"compile-{compiled}"), compile=compiled)
        raw_d["stages"] = {"distill": {"preset": "cr-ild", "ild": short, "kd": short,
                                       "teacher_model": str(Path(raw["output_dir"]) / "teacher")}}
        assert stage3_distill.run(from_dict(raw_d), stop=StopRequest(install_handlers=False)) == 0
        assert bool(counters["stats"]["unique_graphs"]) == compiled  # the setting did compile
        students[compiled] = load_file(str(Path(raw_d["output_dir"]) / "student" / "model.safetensors"))
    initial = load_file(str(model / "model.safetensors"))
    moved = [k for k in students[False] if k.startswith("bert.encoder") and k.removeprefix("bert.") in initial
             and not torch.equal(students[False][k], initial[k.removeprefix("bert.")])]
    assert moved  # training changed the layers, so agreeing below means something
    for k, v in students[False].items():
        assert torch.allclose(students[True][k], v, atol=1e-4), k
