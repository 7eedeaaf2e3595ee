"""A task of the user's own: a name crild does not know, its label names (or regression) and
files in a folder, through the stages that train and score on it, down to the label names
of the models it writes (which export copies as they are)."""
import json

import pytest
import yaml
from helpers import TONES, tiny_run_config, write_tone_task

from pipeline.cli import main
from pipeline.config import from_dict
from pipeline.errors import UserError


def test_a_three_class_task_of_ones_own_trains_distils_and_scores_under_its_label_names(
        tmp_path, tiny_bert, capfd):
    data = write_tone_task(tmp_path / "tone")
    raw = tiny_run_config(tmp_path, tiny_bert, data, epochs=1)
    raw["task"] = {"name": "tone", "labels": TONES, "metric": "macro_f1", "data_dir": str(data), "max_length": 32,
                   "columns": {"text_a": "review", "label": "tone"}}
    raw["pipeline"] = ["teacher", "distill", "evaluate"]
    raw["stages"]["distill"] = {"preset": "kd", "kd": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3}}
    (path := tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(SystemExit) as done:
        main(["run", str(path)])
    assert done.value.code == 0, capfd.readouterr().err[-3000:]
    out = tmp_path / "run"
    for model in ("teacher", "student"):
        config = json.loads((out / model / "config.json").read_text())
        assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}, model
    results = json.loads((out / "eval" / "results.json").read_text())["models"]
    for model in ("teacher", "student"):
        for split in ("dev", "test"):
            scores = results[model]["splits"][split]
            assert set(scores) >= {"macro_f1", "accuracy"} and 0 <= scores["macro_f1"] <= 1, (model, split, scores)
    assert "Evaluation on tone" in capfd.readouterr().out


def test_a_regression_and_a_pair_task_of_ones_own_read_their_files_as_such(tmp_path, tiny_bert):
    from pipeline.data.task_data import load_task_data
    from pipeline.models.loading import load_tokenizer

    folder = tmp_path / "scores"
    folder.mkdir()
    for split in ("train", "dev"):
        (folder / f"{split}.jsonl").write_text("".join(
            json.dumps({"sentence1": f"good film {i}", "sentence2": "a film", "score": i / 4}) + "\n"
            for i in range(8)))
    raw = tiny_run_config(tmp_path, tiny_bert, folder)
    raw["task"] = {"name": "similarity", "regression": True, "pair": True, "data_dir": str(folder),
                   "columns": {"label": "score"}}
    cfg = from_dict(raw)
    data = load_task_data(cfg, load_tokenizer(str(tiny_bert), "teacher.model"))
    assert data.spec.regression and data.spec.pair and data.spec.main_metric == "pearson"
    assert [float(v) for v in data.train_examples.labels][:3] == [0.0, 0.25, 0.5]
    assert data.train_examples.text_b[0] == "a film"


@pytest.mark.parametrize("task, message", [
    ({"name": "sst-3"}, "task.name: unknown task 'sst-3'; did you mean 'sst2'? (known: cola, "),
    ({"name": "tone"}, "for a task of your own, give task.labels (its label names) or task.regression: true"),
    ({"name": "tone", "labels": TONES}, "task.data_dir: task tone is a task of your own: it reads train, dev and "
                                        "test files"),
    ({"name": "tone", "labels": TONES, "data_dir": "/tmp", "source": "hub"}, "task.source: task tone is a task of "
                                                                             "your own"),
    ({"name": "sst2", "labels": ["no", "yes"]}, "task.labels: task sst2 is built in and defines its own labels"),
    ({"name": "rotten_tomatoes", "metric": "macro_f1"}, "task.metric: task rotten_tomatoes is built in"),
    ({"name": "tone", "labels": ["only"], "data_dir": "/tmp"}, "task.labels: expected at least 2 label names, got 1"),
    ({"name": "tone", "labels": TONES, "regression": True, "data_dir": "/tmp"},
     "task.labels: a regression task has no label names"),
    ({"name": "tone", "labels": TONES, "metric": "accuracy_f1", "data_dir": "/tmp"},
     "task.metric: accuracy_f1 is the F1 of the second of two labels, and task tone has 3; use macro_f1"),
    ({"name": "tone", "labels": TONES, "metric": "pearson_spearman", "data_dir": "/tmp"},
     "task.metric: metric pearson_spearman is for a regression; a classification task is scored by accuracy, "),
    ({"name": "tone", "labels": ["a", "a"], "data_dir": "/tmp"}, "task.labels: 'a' is listed twice"),
    ({"name": "../tone", "labels": TONES, "data_dir": "/tmp"}, "task.name: expected a task name (letters, digits"),
    ({"name": "tone", "labels": TONES, "data_dir": "/tmp", "columns": {"text_b": "other"}},
     "task.columns.text_b: task tone classifies single texts and reads no second column"),
])
def test_a_task_of_ones_own_that_cannot_work_is_one_line(task, message):
    with pytest.raises(UserError) as err:
        from_dict({"task": task})
    assert message in str(err.value) and "\n" not in str(err.value)
