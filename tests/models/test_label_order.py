"""A trained classifier whose config numbers the task's classes in another order is read in
the task's order (its output rows permuted), every family alike; other names get a note."""
import json

import pytest
import torch
from helpers import FAMILY_TOKENIZERS, write_tiny_classifier

from pipeline.data.tasks import TASKS
from pipeline.evaluation.models import load_eval_model
from pipeline.models.label_order import task_order
from pipeline.models.loading import build_classifier

SNLI = TASKS["snli"]  # entailment, neutral, contradiction


def renamed(folder, names):
    """The same weights, the config claiming output k is names[k]."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["id2label"] = {str(i): n for i, n in enumerate(names)}
    config["label2id"] = {n: i for i, n in enumerate(names)}
    path.write_text(json.dumps(config))
    return folder


def raw_logits(folder, batch):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        return model(**batch).logits


BATCH = {"input_ids": torch.tensor([[2, 7, 8, 9, 3], [2, 10, 11, 3, 0]]),
         "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])}


@pytest.fixture(params=sorted(FAMILY_TOKENIZERS))
def hub_order_classifier(request, family_models, tmp_path):
    """A fine-tuned SNLI classifier of one family whose outputs are in MNLI-hub-like order."""
    folder = write_tiny_classifier(family_models[request.param], tmp_path / request.param, task="snli")
    return renamed(folder, ["CONTRADICTION", "entailment", "Neutral"])


def test_outputs_in_another_order_are_permuted_into_the_tasks(hub_order_classifier, capsys):
    raw = raw_logits(hub_order_classifier, BATCH)
    model = build_classifier(str(hub_order_classifier), SNLI, "stages.distill.teacher_model", trained=True).eval()
    with torch.no_grad():
        aligned = model(**BATCH).logits
    torch.testing.assert_close(aligned, raw[:, [1, 2, 0]])  # entailment, neutral, contradiction
    assert model.config.id2label == {0: "entailment", 1: "neutral", 2: "contradiction"}
    assert f"'{hub_order_classifier}' orders its outputs CONTRADICTION, entailment, Neutral; reordered to task " \
           f"snli's entailment, neutral, contradiction" in capsys.readouterr().err


def test_scoring_and_export_read_the_same_order(hub_order_classifier):
    raw = raw_logits(hub_order_classifier, BATCH)
    model = load_eval_model(str(hub_order_classifier), SNLI, torch.float32, torch.device("cpu"), 32)
    with torch.no_grad():
        torch.testing.assert_close(model(**BATCH).logits, raw[:, [1, 2, 0]])
    assert model.config.id2label == {0: "entailment", 1: "neutral", 2: "contradiction"}  # what export writes


@pytest.mark.parametrize("names, said", [(["entailment", "neutral", "contradiction"], None),
                                         (["ENTAILMENT", "NEUTRAL", "CONTRADICTION"], None),
                                         (["LABEL_0", "LABEL_1", "LABEL_2"], "names its outputs LABEL_0, LABEL_1, "
                                          "LABEL_2 (transformers' placeholders: its config names no labels), not task "
                                          "snli's labels; read by position as LABEL_0=entailment, LABEL_1=neutral, "
                                          "LABEL_2=contradiction"),
                                         (["yes", "maybe", "no"], "names its outputs yes, maybe, no, not task snli's "
                                          "labels; read by position as yes=entailment, maybe=neutral, "
                                          "no=contradiction")])
def test_outputs_in_the_tasks_order_or_unknown_are_read_by_position(names, said, tiny_bert, tmp_path, capsys):
    folder = renamed(write_tiny_classifier(tiny_bert, tmp_path / "m", task="snli"), names)
    raw = raw_logits(folder, BATCH)
    capsys.readouterr()
    model = build_classifier(str(folder), SNLI, "teacher", trained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**BATCH).logits, raw)
    err = capsys.readouterr().err
    assert (said in err) if said else "note:" not in err


def test_a_backbone_head_is_new_and_left_alone(tiny_bert, capsys):
    """A backbone's head starts random: there is no order to keep, and nothing to say."""
    build_classifier(str(tiny_bert), SNLI, "teacher")
    assert "note:" not in capsys.readouterr().err


def test_task_order():
    assert task_order(["contradiction", "entailment", "neutral"], SNLI) == [1, 2, 0]
    assert task_order(["entailment", "neutral", "contradiction"], SNLI) is None
    assert task_order(["a", "b", "c"], SNLI) is None


def test_an_export_names_its_outputs_in_the_order_the_graph_gives_them(tiny_bert, tmp_path):
    """A classifier exported in the task's order (its rows permuted) gets a config.json that
    names them so: the folder's own config, copied as it was, named every output after
    another class for whoever served the export; a placeholder-named one gets the task's names."""
    import numpy as np
    import onnxruntime as ort

    from pipeline.export.onnx_export import export_classifier
    from pipeline.models.loading import load_tokenizer

    for names in (["CONTRADICTION", "entailment", "Neutral"], ["LABEL_0", "LABEL_1", "LABEL_2"]):
        folder = renamed(write_tiny_classifier(tiny_bert, tmp_path / names[0], task="snli"), names)
        model = load_eval_model(str(folder), SNLI, torch.float32, torch.device("cpu"), 32)
        out = tmp_path / f"{names[0]}-onnx"
        export_classifier(model, load_tokenizer(str(folder), "model"), folder, out, 17)
        config = json.loads((out / "config.json").read_text())
        assert config["id2label"] == {"0": "entailment", "1": "neutral", "2": "contradiction"}
        assert config["label2id"] == {"entailment": 0, "neutral": 1, "contradiction": 2}
        raw = raw_logits(folder, BATCH).numpy()
        served = ort.InferenceSession(str(out / "model.onnx")).run(["logits"], {
            k: v.numpy().astype(np.int64) for k, v in {**BATCH, "token_type_ids": torch.zeros_like(
                BATCH["input_ids"])}.items()})[0]
        # whatever the graph's top output, its name is the class the folder's own config gave that output
        original = {name.casefold(): i for i, name in enumerate(names)}
        for row_raw, row_served in zip(raw, served):
            name = config["id2label"][str(int(row_served.argmax()))]
            if names[0] != "LABEL_0":
                assert original[name] == int(row_raw.argmax())
        assert (out / "tokenizer.json").is_file()
