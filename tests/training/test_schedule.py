"""How many micro-steps a stage runs: epochs over the data, capped by max_steps, rounded
down to whole optimizer steps; accumulation longer than the whole stage is refused."""
import pytest

from pipeline.config import TrainConfig
from pipeline.errors import UserError
from pipeline.training.schedule import make_schedule


def schedule(n, world_size=1, **train):
    return make_schedule(n, TrainConfig(**train), world_size, "stages.teacher")


@pytest.mark.parametrize("n, world, train, micro, optimizer", [
    (100, 1, dict(batch_size=8, epochs=2), 26, 26),  # 13 batches per epoch
    (100, 2, dict(batch_size=8, epochs=2), 14, 14),  # 7 per rank per epoch
    (100, 1, dict(batch_size=8, epochs=2, gradient_accumulation_steps=4), 24, 6),  # 26 rounded down
    (100, 1, dict(batch_size=8, epochs=2, gradient_accumulation_steps=26), 26, 1),  # the whole stage, one step
    (100, 1, dict(batch_size=8, epochs=2, gradient_accumulation_steps=4, max_steps=3), 12, 3),
])
def test_micro_and_optimizer_steps(n, world, train, micro, optimizer):
    s = schedule(n, world, **train)
    assert (s.total_micro_steps, s.total_optimizer_steps) == (micro, optimizer)


def test_accumulation_longer_than_the_stage_is_one_line_naming_the_key():
    """Rounding up to one optimizer step would silently run many more epochs than configured
    (a million micro-steps of accumulation over 13 batches: 77,000 epochs)."""
    with pytest.raises(UserError) as exc:
        schedule(100, batch_size=8, epochs=2, gradient_accumulation_steps=27)
    assert str(exc.value) == ("stages.teacher.gradient_accumulation_steps: 27 micro-steps per optimizer step, and "
                              "2 epochs of 100 examples in batches of 8 on 1 rank make 26; expected at most 26")
