"""The catalogue of bad inputs (docs/bad-inputs.md) through the `crild` command: each exits
with code 2 and one line that names the file, key or value, prints no traceback, and leaves
no output that looks complete."""
import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import REPO, tiny_run_config

from pipeline.cli import main
from pipeline.outputs.manifest import is_complete


def write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def case_config(tmp, tiny_bert, data, **edit):
    raw = tiny_run_config(tmp, tiny_bert, data)
    for dotted, value in edit.items():
        node = raw
        keys = dotted.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return raw


def cases(tmp: Path, tiny_bert: Path, data: Path):
    """(name, argv, fragments the message must contain)."""
    cfg = lambda name, **e: str(write(tmp / f"{name}.yaml", case_config(tmp / name, tiny_bert, data, **e)))  # noqa
    bad_dir = tmp / "bad-data"
    bad_dir.mkdir(exist_ok=True)
    (bad_dir / "train.tsv").write_text("index\tsentence1\tlabel\n0\ta\tentailment\n")
    (bad_dir / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    labels_dir = tmp / "bad-labels"
    labels_dir.mkdir(exist_ok=True)
    (labels_dir / "train.jsonl").write_text('{"sentence": "a", "label": "fresh"}\n{"sentence": "b", "label": "meh"}\n')
    empty_dir = tmp / "empty"
    empty_dir.mkdir(exist_ok=True)
    (empty_dir / "train.jsonl").write_text("")
    no_weights = tmp / "no-weights"
    shutil.copytree(tiny_bert, no_weights, dirs_exist_ok=True)
    (no_weights / "model.safetensors").unlink(missing_ok=True)
    pickled = tmp / "pickled"
    shutil.copytree(no_weights, pickled, dirs_exist_ok=True)
    (pickled / "pytorch_model.bin").write_bytes(b"x")
    ds_batch = tmp / "ds_batch.json"
    ds_batch.write_text(json.dumps({"train_batch_size": 999, "zero_optimization": {"stage": 0}}))
    ds_fp16 = tmp / "ds_fp16.json"
    ds_fp16.write_text(json.dumps({"fp16": {"enabled": True}, "zero_optimization": {"stage": 0}}))
    ds_broken = tmp / "ds_broken.json"
    ds_broken.write_text("{ not json")
    other_vocab = tmp / "other-vocab"
    shutil.copytree(tiny_bert, other_vocab, dirs_exist_ok=True)
    from transformers import BertTokenizerFast
    BertTokenizerFast(vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "x"])}
                      ).save_pretrained(str(other_vocab))
    return [
        ("unknown key", ["config", cfg("k1", stages__teacher__colour=1)], ["stages.teacher.colour", "valid keys"]),
        ("misspelled key", ["config", cfg("k2", stages__teacher__learnig_rate=1e-3)], ["did you mean 'learning_rate'"]),
        ("wrong type", ["config", cfg("k3", stages__teacher__epochs="two")], ["stages.teacher.epochs", "an integer"]),
        ("missing config file", ["config", str(tmp / "nope.yaml")], ["nope.yaml: config file not found"]),
        ("invalid YAML", ["config", str(_text(tmp / "broken.yaml", "a: [1\n"))], ["broken.yaml", "not valid YAML"]),
        ("bad override", ["config", cfg("k4"), "seed"], ["override 'seed'", "section.key=value"]),
        ("unknown task", ["config", cfg("k5", task__name="sst3")], ["unknown task 'sst3'", "did you mean 'sst2'"]),
        ("ratio out of range", ["config", cfg("k6", task__label_noise=1.5)], ["task.label_noise", "[0, 1)"]),
        ("unknown preset", ["config", cfg("k7", stages__distill={"preset": "crild"})], ["did you mean 'cr-ild'"]),
        ("unknown loss term", ["config", cfg("k8", stages__distill={"ild_terms": {"hiden_mse": 1}})],
         ["did you mean 'hidden_mse'"]),
        ("missing data directory", ["teacher", cfg("d1", task__data_dir=str(tmp / "nowhere"))],
         ["nowhere' does not exist"]),
        ("TSV without a column", ["teacher", cfg("d2", task__name="rte", task__data_dir=str(bad_dir))],
         ["train.tsv", "missing column 'sentence2'"]),
        ("label outside the label set", ["teacher", cfg("d3", task__data_dir=str(labels_dir))],
         ["train.jsonl:2", "'meh'", "rotten, fresh"]),
        ("empty dataset", ["teacher", cfg("d4", task__data_dir=str(empty_dir))], ["train.jsonl: no examples"]),
        ("max length beyond positions", ["teacher", cfg("m1", task__max_length=512)],
         ["task.max_length: 512 exceeds teacher's 64 position embeddings"]),
        ("model folder without weights", ["teacher", cfg("m2", teacher={"model": str(no_weights)})],
         ["no-weights' has no weights"]),
        ("pickle-only weights", ["teacher", cfg("m3", teacher={"model": str(pickled)})], ["safetensors only"]),
        ("missing model folder", ["teacher", cfg("m4", teacher={"model": str(tmp / "no-model")})],
         ["no-model' does not exist"]),
        ("batch size contradicts world size", ["teacher", cfg("s1", deepspeed_config=str(ds_batch))],
         ["ds_batch.json: train_batch_size=999 contradicts world size 1"]),
        ("fp16 on a CPU", ["teacher", cfg("s2", deepspeed_config=str(ds_fp16))], ["fp16.enabled", "CPU"]),
        ("DeepSpeed JSON not valid", ["teacher", cfg("s3", deepspeed_config=str(ds_broken))],
         ["ds_broken.json: not valid JSON"]),
        ("missing DeepSpeed JSON", ["teacher", cfg("s4", deepspeed_config=str(tmp / "no.json"))],
         ["deepspeed_config", "no.json' does not exist"]),
        ("stage before its inputs", ["distill", cfg("p1")], ["no complete teacher; run the teacher stage first"]),
        ("evaluation with nothing to evaluate", ["evaluate", cfg("p2")], ["no complete teacher or student"]),
        ("different vocabularies", ["distill", cfg("v1", stages__distill={"teacher_model": str(tiny_bert)},
                                                   student={"backbone": str(other_vocab), "init": "folder"})],
         ["different vocabularies"]),
        ("relation heads that do not divide", ["distill", cfg("v2", stages__distill={
            "teacher_model": str(tiny_bert), "preset": "l-ild", "relation_heads": 5})], ["5 relation heads"]),
        ("unknown stage for --only", ["run", cfg("r1"), "--only", "distil"], ["--only distil: unknown stage"]),
        ("unknown non-finite policy", ["config", cfg("n1", stages__teacher__on_nonfinite="ignore")],
         ["stages.teacher.on_nonfinite: expected stop or skip, got 'ignore'"]),
        ("skipping non-finite steps under ZeRO-3", ["teacher", cfg(
            "n2", deepspeed_config=str(REPO / "ds_configs" / "zero3_bf16.json"), stages__teacher__on_nonfinite="skip")],
         ["stages.teacher.on_nonfinite: skip is not supported with ZeRO-3"]),
        ("missing vectors file", ["augment", cfg("a1", stages__augment={"vectors": {"path": str(tmp / "v.txt")}})],
         ["v.txt' does not exist"]),
    ]


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_catalogue_has_every_case_documented(tmp_path, tiny_bert, sentiment_dir):
    doc = (REPO / "docs" / "bad-inputs.md").read_text()
    names = [name for name, _, _ in cases(tmp_path, tiny_bert, sentiment_dir)]
    assert len(names) == CASE_COUNT >= 25 and len(set(names)) == len(names)
    for name in names:
        assert f"| {name} |" in doc, name


CASE_COUNT = 30


@pytest.mark.parametrize("index", range(CASE_COUNT))
def test_bad_input_gives_one_line_and_exit_2(index, tmp_path, tiny_bert, sentiment_dir, capsys):
    name, argv, fragments = cases(tmp_path, tiny_bert, sentiment_dir)[index]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2, name
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("crild: error: "), (name, err)
    assert "Traceback" not in err[0]
    for fragment in fragments:
        assert fragment in err[0], (name, fragment, err[0])
    for out in (tmp_path / p for p in ("d1", "m1", "s1", "p1", "v1")):
        for stage in ("teacher", "student", "eval", "augmented"):
            assert not is_complete(out / "run" / stage)
