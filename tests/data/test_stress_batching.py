"""Synthetic overfitting settings, GLUE metrics against known values, batching."""
import numpy as np
import pytest
import torch

from pipeline.config import TaskConfig
from pipeline.data.batching import Collator, epoch_batches, eval_shards, steps_per_epoch
from pipeline.data.sources import Examples
from pipeline.data.stress import apply_settings, few_sample, imbalance, label_noise
from pipeline.data.tasks import TASKS
from pipeline.errors import UserError


def examples(labels):
    labels = np.asarray(labels, dtype=np.int64)
    return Examples([f"s{i}" for i in range(len(labels))], None, labels)


def test_few_sample_count_and_seed():
    ex = examples(np.arange(5000) % 3)
    a, b, c = few_sample(ex, 1000, 1), few_sample(ex, 1000, 1), few_sample(ex, 1000, 2)
    assert len(a) == 1000 and len(set(a.text_a)) == 1000
    assert a.text_a == b.text_a and a.text_a != c.text_a
    assert [f"s{i}" for i in a.ids] == a.text_a  # provenance kept
    assert few_sample(ex, 5000, 1).text_a == ex.text_a  # exactly all of them: the set as it is


def test_few_sample_beyond_the_training_set_names_the_key():
    """Asking for more than there are would train on everything under a few-sample label."""
    with pytest.raises(UserError) as exc:
        few_sample(examples(np.arange(50) % 2), 64, 1, "stages.distill.supplementary[0].task")
    assert str(exc.value) == ("stages.distill.supplementary[0].task.few_sample: 64 examples asked for, and the "
                              "training set has 50 (after any imbalance subsampling); expected at most 50, or no "
                              "few_sample")


def test_label_noise_rate_and_flips_to_other_class():
    ex = examples(np.arange(20000) % 3)
    noisy, flipped = label_noise(ex, 0.3, 3, seed=0)
    assert abs(flipped.mean() - 0.3) < 0.015
    changed = noisy.labels != ex.labels
    assert (changed == flipped).all()  # a flip never lands on the same class
    # symmetric: flipped labels spread evenly over the two other classes
    shift = (noisy.labels[flipped] - ex.labels[flipped]) % 3
    assert abs((shift == 1).mean() - 0.5) < 0.03


def test_imbalance_ratio_binary_and_multiclass():
    ex = examples(np.repeat([0, 1], [500, 400]))
    out = imbalance(ex, 10.0, 2, seed=0)
    counts = np.bincount(out.labels)
    assert counts.tolist() == [500, 50]
    ex3 = examples(np.repeat([0, 1, 2], [300, 400, 500]))
    counts3 = np.bincount(imbalance(ex3, 100.0, 3, seed=0).labels, minlength=3)
    assert counts3[2] == 500 and counts3[1] == 50 and counts3[0] == 5  # 500 * 100^(-i/2)


def test_apply_settings_order_and_regression_guard():
    ex = examples(np.repeat([0, 1], [600, 600]))
    cfg = TaskConfig(name="sst2", few_sample=100, label_noise=0.2, imbalance_ratio=2.0)
    out = apply_settings(ex, cfg, TASKS["sst2"], seed=0)
    assert len(out) == 100
    reg = Examples(["a", "b"], ["c", "d"], np.array([0.5, 1.0], dtype=np.float32))
    with pytest.raises(UserError, match="regression"):
        apply_settings(reg, TaskConfig(name="stsb", label_noise=0.1), TASKS["stsb"], 0)


def test_epoch_batches_cover_every_example_once_per_epoch():
    lengths = np.random.default_rng(0).integers(5, 60, size=103)
    b0 = epoch_batches(lengths, 8, seed=1, epoch=0, world_size=1, rank=0)
    flat = [i for b in b0 for i in b]
    assert sorted(flat) == list(range(103)) and len(b0) == steps_per_epoch(103, 8, 1)
    assert b0 == epoch_batches(lengths, 8, seed=1, epoch=0, world_size=1, rank=0)  # deterministic
    assert b0 != epoch_batches(lengths, 8, seed=1, epoch=1, world_size=1, rank=0)  # reshuffled


def test_length_grouping_reduces_padding():
    lengths = np.random.default_rng(0).integers(5, 120, size=2000)
    def padded(batches):
        return sum(len(b) * lengths[b].max() for b in batches)
    grouped = epoch_batches(lengths, 16, 0, 0, 1, 0, group_by_length=True)
    plain = epoch_batches(lengths, 16, 0, 0, 1, 0, group_by_length=False)
    assert padded(grouped) < 0.7 * padded(plain)


def test_ranks_get_disjoint_batches_and_equal_step_counts():
    lengths = np.ones(50, dtype=int)
    r0 = epoch_batches(lengths, 8, 0, 0, 2, 0)
    r1 = epoch_batches(lengths, 8, 0, 0, 2, 1)
    assert len(r0) == len(r1) == 4
    seen = [i for b in r0 + r1 for i in b]
    assert set(seen) == set(range(50))  # every example, the wrap-around repeats a few


def test_eval_shards_equal_batch_counts():
    shards = [eval_shards(10, 3, 3, r) for r in range(3)]
    assert [len(s) for s in shards] == [2, 2, 2]
    assert sorted(i for s in shards for b in s for i in b) == list(range(10))


def test_collator_pads_dynamically():
    collate = Collator(pad_token_id=0, regression=False, pad_to_multiple_of=8)
    out = collate({"input_ids": [[2, 5, 3], [2, 6, 7, 8, 9, 3]], "token_type_ids": [[0, 0, 0], [0] * 6],
                   "label": [1, 0]})
    assert out["input_ids"].shape == (2, 8)
    assert out["attention_mask"].sum(1).tolist() == [3, 6]
    assert out["labels"].dtype == torch.long


def test_imbalance_keeps_the_ratio_asked_for_when_a_class_is_short():
    """100 of one class, 20 of the other, ratio 2: the short class cannot give 50, so the
    largest keeps 40 (ratio 2, with a note), not 100 (ratio 5, without a word)."""
    ex = Examples([f"t{i}" for i in range(120)], None, np.array([0] * 100 + [1] * 20, dtype=np.int64))
    out = imbalance(ex, 2.0, 2, seed=0, names=("rotten", "fresh"))
    assert np.bincount(out.labels).tolist() == [40, 20]
    assert out.notes == ["note: task.imbalance_ratio 2: class 'fresh' has 20 training examples, too few for its "
                         "share at ratio 2, so the largest class keeps 40 of its 100"]
    roomy = imbalance(ex, 10.0, 2, seed=0)  # 100 and 10: every share fits, nothing to say
    assert np.bincount(roomy.labels).tolist() == [100, 10] and roomy.notes == []
