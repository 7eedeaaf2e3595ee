"""The DeepSpeed engine crild builds: at one data-parallel rank and ZeRO-0 it skips the
gradient all-reduce (flatten, reduce, copy back: no change at one rank), with results
bitwise equal to the engine that does it; a DeepSpeed config that names no optimizer or
scheduler trains as the shipped configs do."""
import json
from pathlib import Path

import pytest
import torch
from helpers import REPO

from pipeline.config import TrainConfig
from pipeline.data.tasks import TASKS
from pipeline.models.loading import build_classifier


@pytest.fixture(scope="module")
def dist():
    from pipeline.runtime.distributed import init_distributed

    return init_distributed()


def trained(tiny_bert, all_reduce: bool | None, ds_config: str):
    from pipeline.training.ds_config import build_ds_config
    from pipeline.training.engine import build_engine

    torch.manual_seed(0)
    model = build_classifier(str(tiny_bert), TASKS["rotten_tomatoes"], "student")
    train = TrainConfig(batch_size=4, learning_rate=1e-3, gradient_accumulation_steps=2)
    path = ds_config if isinstance(ds_config, Path) else REPO / "ds_configs" / ds_config
    engine = build_engine(model, 0.01, build_ds_config(str(path), train, 1, 10, "test", "teacher", hidden_size=32))
    built = engine.enable_backward_allreduce
    before = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
    if all_reduce is not None:
        engine.enable_backward_allreduce = all_reduce
    calls = []
    original = engine.allreduce_gradients
    engine.allreduce_gradients = lambda *a, **k: (calls.append(1), original(*a, **k))[1]
    g = torch.Generator().manual_seed(1)
    for _ in range(6):  # three optimizer steps of two micro-steps (the first two at warm-up lr 0)
        ids = torch.randint(7, 50, (4, 10), generator=g)
        loss = engine(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1, 0, 1])).loss
        engine.backward(loss)
        engine.step()
    after = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained
    return built, len(calls), after


@pytest.mark.parametrize("ds_config", ["zero0_fp32.json", "zero0_bf16.json"])
def test_one_rank_at_zero0_skips_the_all_reduce_and_trains_the_same(dist, tiny_bert, ds_config):
    built, calls, skipped = trained(tiny_bert, None, ds_config)
    assert built is False and calls == 0
    _, calls, reduced = trained(tiny_bert, True, ds_config)
    assert calls > 0  # the comparison really ran the all-reduce
    assert all(torch.equal(skipped[k], reduced[k]) for k in skipped)


def test_bf16_at_zero1_steps_with_deepspeeds_bf16_optimizer(dist, tiny_bert):
    """zero1_bf16.json: bf16 weights, fp32 gradients accumulated and stepped by DeepSpeed's
    BF16_Optimizer, which reads 2 values on the host per step where ZeRO-0's unfused
    optimizer reads one per parameter tensor (tools/count_host_syncs.py)."""
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer

    from pipeline.training.ds_config import build_ds_config
    from pipeline.training.engine import build_engine

    model = build_classifier(str(tiny_bert), TASKS["rotten_tomatoes"], "student")
    ds_cfg = build_ds_config(str(REPO / "ds_configs" / "zero1_bf16.json"), TrainConfig(batch_size=4), 1, 10, "test",
                             "teacher")
    engine = build_engine(model, 0.01, ds_cfg)
    assert isinstance(engine.optimizer, BF16_Optimizer)
    assert next(engine.module.parameters()).dtype == torch.bfloat16
    _, _, after = trained(tiny_bert, None, "zero1_bf16.json")
    assert all(v.dtype == torch.bfloat16 for k, v in after.items() if v.is_floating_point())


@pytest.mark.parametrize("minimal, shipped", [({"zero_optimization": {"stage": 0}}, "zero0_fp32.json"),
                                              ({"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}},
                                               "zero2_bf16.json")])
def test_a_config_without_optimizer_or_scheduler_trains_as_the_shipped_ones(dist, tiny_bert, tmp_path, minimal,
                                                                             shipped):
    """Without these sections DeepSpeed built an engine that failed at its first backward
    (ZeRO-0) or step (ZeRO-2, ZeRO-3), or, with an optimizer and no scheduler, kept the
    learning rate constant and ignored warmup_ratio. crild adds the stage's AdamW and linear
    warmup and decay, as ds_configs/ spell them out: the weights are bitwise those of the
    shipped config."""
    path = tmp_path / "minimal.json"
    path.write_text(json.dumps(minimal))
    _, _, own = trained(tiny_bert, None, path)
    _, _, reference = trained(tiny_bert, None, shipped)
    assert all(torch.equal(own[k], reference[k]) for k in own)


def test_an_offloaded_optimizer_defaults_to_deepspeeds_cpu_adam():
    """Where ZeRO offloads the optimizer, the default is DeepSpeed's CPU Adam (no torch_adam),
    as in ds_configs/zero3_bf16_offload.json; elsewhere torch's fused AdamW."""
    from pipeline.training.ds_config import default_sections

    offloaded = default_sections({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}})
    shipped = json.loads((REPO / "ds_configs" / "zero3_bf16_offload.json").read_text())
    assert offloaded["optimizer"] == shipped["optimizer"] and offloaded["scheduler"] == shipped["scheduler"]
    plain = default_sections({})
    assert plain["optimizer"] == json.loads((REPO / "ds_configs" / "zero0_fp32.json").read_text())["optimizer"]
    own = {"optimizer": {"type": "SGD", "params": {"lr": "auto"}}}
    assert default_sections(dict(own))["optimizer"] == own["optimizer"]  # a section given is kept


@pytest.mark.parametrize("ds_config", [p.name for p in sorted((REPO / "ds_configs").glob("*.json"))
                                       if "offload_optimizer" not in p.read_text()])
def test_the_shipped_configs_train_on_a_cpu_with_nothing_to_compile(dist, tiny_bert, ds_config, tmp_path,
                                                                    monkeypatch):
    """Their Adam is torch's (ZeRO-Offload's, left out, is DeepSpeed's CPU Adam), and
    init_distributed left DeepSpeed's shared-memory allreduce unbuilt: a CPU run needs no
    compiler, so a build folder that cannot even exist does not matter."""
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "a-file"))
    trained(tiny_bert, None, ds_config)


def test_transformers_zero3_config_trains_as_it_is(dist, tiny_bert, tmp_path):
    """transformers' stock ZeRO-3 config ("auto" for betas, eps, fp16, bf16, warmup_min_lr and
    the rest) builds a ZeRO-3 engine that trains, in fp32 on this CPU. Its AdamW is made
    torch's: DeepSpeed's own would first compile its C++ CPU op (about 80 s of g++ on a fresh
    machine), DeepSpeed's work and not what this tests."""
    from helpers import TRANSFORMERS_ZERO3

    config = json.loads(json.dumps(TRANSFORMERS_ZERO3))
    config["optimizer"]["params"]["torch_adam"] = True
    path = tmp_path / "ds_config_zero3.json"
    path.write_text(json.dumps(config))
    trained(tiny_bert, None, path)
