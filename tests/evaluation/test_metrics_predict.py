"""Evaluation: GLUE metrics on known values, and sharded prediction in row order."""
import numpy as np
import pytest
import torch

from pipeline.data.batching import Collator, eval_shards
from pipeline.evaluation.metrics import compute_metrics


def test_metrics_known_values():
    labels = np.array([1, 0, 1, 1, 0, 0, 1, 0])
    preds = np.array([1, 0, 0, 1, 0, 1, 1, 0])
    logits = np.eye(2)[preds]
    m = compute_metrics("accuracy_f1", logits, labels, False)
    assert m["accuracy"] == pytest.approx(0.75) and m["f1"] == pytest.approx(0.75)
    # MCC: tp=3 tn=3 fp=1 fn=1 -> (9-1)/sqrt(4*4*4*4) = 0.5
    assert compute_metrics("matthews", logits, labels, False)["matthews_corr"] == pytest.approx(0.5)
    scores = np.array([[1.0], [2.0], [3.0], [4.0]])
    gold = np.array([1.0, 3.0, 2.0, 4.0])
    m = compute_metrics("pearson_spearman", scores, gold, True)
    assert m["pearson"] == pytest.approx(0.8) and m["spearman"] == pytest.approx(0.8)
    # macro F1 over three classes: class 0 1.0; class 1 P=1 R=1/2 -> 2/3; class 2 P=1/2 R=1 -> 2/3
    m = compute_metrics("macro_f1", np.eye(3)[[0, 1, 2, 2]], np.array([0, 1, 1, 2]), False)
    assert m == {"macro_f1": pytest.approx(7 / 9), "accuracy": pytest.approx(0.75)}
    from pipeline.data.tasks import MAIN_METRIC
    from pipeline.evaluation.metrics import METRICS

    assert set(MAIN_METRIC) == set(METRICS)  # every metric has the number that ranks models


@pytest.mark.parametrize("value", [0.1234567, 0.3, -2.5])
def test_constant_scores_correlate_with_nothing_not_nan(value):
    """A regression that predicts one score everywhere (a model that learnt nothing) scores a
    correlation of 0, never NaN: float32 scores all equal have a standard deviation of a few
    1e-9, which the check took for variation, and scipy returned NaN, which no best dev
    score and no table can compare."""
    import warnings

    gold = np.arange(12) / 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's ConstantInputWarning too
        for preds in (np.full((12, 1), value, dtype=np.float32), np.full((12, 1), value)):
            assert compute_metrics("pearson_spearman", preds, gold, True) == {"pearson": 0.0, "spearman": 0.0}
        assert compute_metrics("pearson_spearman", gold[:, None] * 2, np.full(12, value), True) == \
            {"pearson": 0.0, "spearman": 0.0}
        assert compute_metrics("pearson_spearman", np.array([[1.0]]), np.array([2.0]), True)["pearson"] == 0.0


def test_eval_batches_group_lengths_and_logits_come_back_in_row_order():
    """Sorted by length within each rank's shard, a batch pads to similar lengths; the logits
    are put back in the rows' order."""
    import datasets

    from pipeline.evaluation.predict import predict_logits
    from pipeline.runtime.distributed import DistInfo

    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, size=37)
    ds = datasets.Dataset.from_dict({"input_ids": [[2] + [100 + i] * (n - 2) + [3] for i, n in enumerate(lengths)],
                                     "token_type_ids": [[0] * n for n in lengths],
                                     "label": [0] * 37, "length": lengths.tolist()})
    widths = []

    def forward(batch):  # logit = the row's own token, so order mistakes show
        widths.append(batch["input_ids"].shape[1])
        return batch["input_ids"][:, 1:2].float()

    logits = predict_logits(forward, ds, Collator(0, False, pad_to_multiple_of=0), 8, DistInfo(0, 1, 0, torch.device("cpu")))
    assert logits[:, 0].tolist() == [100.0 + i for i in range(37)]
    assert widths == sorted(widths, reverse=True) and widths[0] == lengths.max()
    padded = sum(widths[:-1]) * 8 + widths[-1] * (37 - 8 * (len(widths) - 1))
    unsorted = sum(max(lengths[i:i + 8]) * len(lengths[i:i + 8]) for i in range(0, 37, 8))
    assert padded < 0.75 * unsorted  # what sorting is for
    shards = [eval_shards(37, 8, 2, r, lengths) for r in range(2)]  # still contiguous halves, equal counts
    assert len(shards[0]) == len(shards[1]) and sorted(i for b in shards[0] for i in b) == list(range(19))


def test_the_table_reads_scores_against_the_best_one_class_predictor_and_names_a_collapsed_model():
    """A student that predicts one class everywhere can still score well above chance on a
    skewed split; the table shows the best constant prediction beside it and says so."""
    from pipeline.data.tasks import get_task
    from pipeline.evaluation.metrics import one_class_reference
    from pipeline.evaluation.results import format_table, one_class_rows, predicted_counts

    labels = np.array([0, 0, 1])
    assert one_class_reference("accuracy", "accuracy", labels, 2) == (0, {"accuracy": pytest.approx(2 / 3)})
    label, m = one_class_reference("accuracy_f1", "f1", np.array([1, 1, 0]), 2)
    assert (label, m["accuracy"], m["f1"]) == (1, pytest.approx(2 / 3), pytest.approx(0.8))
    # ranked by the number the table shows (F1), not by accuracy, whose best (the majority,
    # class 0) has an F1 of 0 and would make any model look better than chance
    label, m = one_class_reference("accuracy_f1", "f1", labels, 2)
    assert (label, m["f1"], m["accuracy"]) == (1, pytest.approx(0.5), pytest.approx(1 / 3))
    assert one_class_reference("macro_f1", "macro_f1", np.array([0, 0, 1, 2]), 3)[0] == 0
    assert one_class_reference("matthews", "matthews_corr", labels, 2)[1] == {"matthews_corr": 0.0}

    spec = get_task("rotten_tomatoes")
    gold = np.array([1, 1, 1, 0])
    collapsed, learnt = np.eye(2)[[1, 1, 1, 1]], np.eye(2)[[1, 1, 0, 0]]
    one, two = spec.labels[1], spec.labels[0]
    assert (predicted_counts(collapsed, spec), predicted_counts(learnt, spec)) == ({two: 0, one: 4}, {two: 2, one: 2})
    rows = one_class_rows({"test": gold, "unlabelled": np.full(4, -1)}, spec)
    assert rows == {"test": {"label": spec.labels[1], "accuracy": 0.75}}
    results = {name: {"parameters": 10, "splits": {"test": {"examples": 4, "accuracy": acc,
                                                            "predicted": predicted_counts(logits, spec)}}}
               for name, logits, acc in (("teacher", learnt, 0.75), ("student", collapsed, 0.75))}
    table = format_table("rotten_tomatoes", results, spec, rows).splitlines()
    assert any(line.split()[:4] == ["one", "class", f"('{spec.labels[1]}')", "test"] and "0.7500" in line
               for line in table)
    assert [line for line in table if line.startswith("note:")] == \
        [f"note: student predicts '{one}' for every test example: it has learnt no more than a label"]
    assert "predicted" not in "\n".join(table)  # counts, not a score


def test_folders_of_the_same_name_are_each_reported(tmp_path, tiny_teacher, sentiment_dir, capsys):
    """Two runs' students are both called 'student': each keeps its own row, named by as
    many parent folders as tell them apart, and the same folder twice is refused."""
    import json
    import shutil

    import yaml
    from helpers import tiny_run_config, write_tiny_classifier

    from pipeline.cli import main

    first = shutil.copytree(tiny_teacher, tmp_path / "run1" / "student")
    second = write_tiny_classifier(tiny_teacher, tmp_path / "run2" / "student")  # another head: other scores
    raw = tiny_run_config(tmp_path, tiny_teacher, sentiment_dir)
    raw["stages"]["evaluate"] = {"models": [str(first), str(second), str(tiny_teacher)], "splits": ["dev"]}
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(SystemExit) as done:
        main(["evaluate", str(config)])
    assert done.value.code == 0
    models = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())["models"]
    assert sorted(models) == ["run1-student", "run2-student", "tiny-teacher"]
    assert models["run1-student"]["path"] == str(first) and models["run2-student"]["path"] == str(second)

    raw["stages"]["evaluate"]["models"] = [str(first), str(first) + "/"]
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(SystemExit):
        main(["evaluate", str(config)])
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"crild: error: stages.evaluate.models: '{first}' and '{first}/' are the same folder; expected each model "
        f"folder once")
