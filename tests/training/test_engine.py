"""The DeepSpeed engine crild builds: at one data-parallel rank and ZeRO-0 it skips the
gradient all-reduce (flatten, reduce, copy back: no change at one rank), with results
bitwise equal to the engine that does it."""
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
    engine = build_engine(model, 0.01, build_ds_config(str(REPO / "ds_configs" / ds_config), train, 1, 10,
                                                       "test", "teacher", hidden_size=32))
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
