"""Parquet splits: read as the same examples as JSON Lines, and every way a Parquet file can
be wrong is one line naming the file and the row."""
import re

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import ColumnMap, TaskConfig
from pipeline.data.sources import load_split
from pipeline.data.tasks import TASKS
from pipeline.errors import UserError

RT = TASKS["rotten_tomatoes"]


def _hub_like(pair: bool) -> datasets.Dataset:
    """A dataset as the hub gives it: a ClassLabel column of ids, texts under the hub's names."""
    names = ["entailment", "neutral", "contradiction"] if pair else ["neg", "pos"]
    rows = {"text": ["a fine film", "dull, and \"long\"", "héllo 🙂", "  spaces  "]}
    if pair:
        rows = {"premise": rows["text"], "hypothesis": [t[::-1] for t in rows["text"]]}
    rows["label"] = [0, 1, len(names) - 1, 0]
    features = datasets.Features({**{k: datasets.Value("string") for k in rows if k != "label"},
                                  "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict(rows, features=features)


@pytest.mark.parametrize("task,columns", [("rotten_tomatoes", ColumnMap(text_a="text")),
                                          ("snli", ColumnMap(text_a="premise", text_b="hypothesis"))])
def test_a_hub_dataset_saved_as_parquet_reads_as_its_json_lines_do(tmp_path, task, columns):
    ds = _hub_like(TASKS[task].pair)
    for fmt in ("parquet", "jsonl"):
        (tmp_path / fmt).mkdir()
        for split in ("train", "dev"):
            getattr(ds, "to_parquet" if fmt == "parquet" else "to_json")(str(tmp_path / fmt / f"{split}.{fmt}"))
    read = {fmt: load_split(TaskConfig(name=task, data_dir=str(tmp_path / fmt), columns=columns), TASKS[task], "dev")
            for fmt in ("parquet", "jsonl")}
    assert read["parquet"].text_a == read["jsonl"].text_a == ds[columns.text_a]
    assert read["parquet"].text_b == read["jsonl"].text_b
    assert read["parquet"].labels.tolist() == read["jsonl"].labels.tolist() == [0, 1, len(TASKS[task].labels) - 1, 0]
    assert read["parquet"].notes == [n.replace("jsonl", "parquet") for n in read["jsonl"].notes] != []


def test_pandas_categorical_labels_read_as_names(tmp_path):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"sentence": ["good", "bad", ""], "label": pd.Categorical(["fresh", "rotten", "fresh"])})
    frame.to_parquet(tmp_path / "train.parquet")
    ex = load_split(TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path)), RT, "train")
    assert ex.text_a == ["good", "bad", ""] and ex.labels.tolist() == [1, 0, 1]
    assert ex.notes == [f"note: {tmp_path}/train.parquet: 1 of 3 examples have an empty text field (the first in "
                        f"row 3); their input is the special tokens alone"]


def _table(**columns) -> pa.Table:
    return pa.table(columns)


BAD = {
    "not Parquet": (b"sentence,label\ngood,fresh\n", r"train\.parquet: not a Parquet file crild can read \(Parquet "
                                                     r"magic bytes not found"),
    "a column twice": (pa.table([pa.array(["a"]), pa.array(["b"]), pa.array(["fresh"])],
                                names=["sentence", "sentence", "label"]),
                       r"train\.parquet: column 'sentence' appears twice in the file's schema; expected each column once"),
    "binary text": (_table(sentence=pa.array([b"ok", b"x"], pa.binary()), label=["fresh", "rotten"]),
                    r"train\.parquet: row 1: column 'sentence' is binary data; expected text"),
    "a string column not UTF-8": (
        _table(sentence=pa.array([b"ok", b"\xffbad"], pa.binary()).cast(pa.string(), safe=False),
               label=["fresh", "rotten"]),
        r"train\.parquet: row 2: column 'sentence' is not UTF-8 text \(byte 0xff at offset 0\); expected text"),
    "null text": (_table(sentence=["ok", None], label=["fresh", "rotten"]),
                  r"train\.parquet: row 2: column 'sentence' is null; expected text"),
    "a list column": (_table(sentence=[["a", "b"]], label=["fresh"]),
                      r"train\.parquet: row 1: column 'sentence' is an array; expected text"),
    "a struct column": (_table(sentence=[{"t": "a"}], label=["fresh"]),
                        r"train\.parquet: row 1: column 'sentence' is an object; expected text"),
    "a timestamp column": (_table(sentence=pa.array([0], pa.timestamp("s")), label=["fresh"]),
                           r"train\.parquet: row 1: column 'sentence' is datetime; expected text"),
    "null label": (_table(sentence=["ok", "fine"], label=[1, None]),
                   r"train\.parquet: row 2: missing value for label column 'label'"),
    "label outside the set": (_table(sentence=["ok", "fine"], label=["fresh", "meh"]),
                              r"train\.parquet: row 2: label 'meh' is not one of rotten, fresh"),
    "label id past the classes": (_table(sentence=["ok"], label=[7]),
                                  r"train\.parquet: row 1: label 7 is not one of rotten, fresh"),
    "no label column": (_table(sentence=["ok"], y=["fresh"]),
                        r"train\.parquet: missing column 'label' \(has: sentence, y\)"),
    "no rows": (_table(sentence=pa.array([], pa.string()), label=pa.array([], pa.string())),
                r"train\.parquet: no examples \(empty dataset\)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_parquet_file_that_is_wrong_is_one_line_naming_file_and_row(tmp_path, case):
    content, message = BAD[case]
    if isinstance(content, bytes):
        (tmp_path / "train.parquet").write_bytes(content)
    else:
        pq.write_table(content, tmp_path / "train.parquet")
    with pytest.raises(UserError, match=message) as err:
        load_split(TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path)), RT, "train")
    assert "\n" not in str(err.value)


def test_a_truncated_parquet_file_is_one_line(tmp_path):
    pq.write_table(_table(sentence=["ok"] * 50, label=["fresh"] * 50), tmp_path / "train.parquet")
    data = (tmp_path / "train.parquet").read_bytes()
    (tmp_path / "train.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"train\.parquet: not a Parquet file crild can read"):
        load_split(TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path)), RT, "train")


def test_a_parquet_file_beside_another_file_of_its_split_is_refused(tmp_path):
    pq.write_table(_table(sentence=["new"], label=["fresh"]), tmp_path / "train.parquet")
    (tmp_path / "train.csv").write_text("sentence,label\nold,fresh\n")
    with pytest.raises(UserError, match=r"train\.csv and train\.parquet are both the train split"):
        load_split(TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path)), RT, "train")


@pytest.mark.parametrize("names,shown_as", [(["train.json"], "train.json"), (["train.jsonl.gz"], "train.jsonl.gz"),
                                            (["train.parquet/"], "train.parquet/"), (["Train.CSV"], "Train.CSV"),
                                            (["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"],
                                             "train-00000-of-00002.parquet, train-00001-of-00002.parquet")])
def test_a_split_in_a_form_crild_does_not_read_is_named(tmp_path, names, shown_as):
    """``Dataset.to_json('train.json')`` writes JSON Lines under another suffix, Spark writes a
    folder of parts, and a hub snapshot holds shards: the error names what is there, not only
    what is missing; a name in capitals (``Train.CSV``, which a case-insensitive Mac file system
    reads as ``train.csv``) too."""
    (tmp_path / "dev.jsonl").write_text('{"sentence": "ok", "label": "fresh"}\n')
    for name in names:
        if name.endswith("/"):
            (tmp_path / name).mkdir()
        else:
            (tmp_path / name).write_text('{"sentence": "ok", "label": "fresh"}\n')
    with pytest.raises(UserError, match=rf"no train\.jsonl, train\.csv, train\.tsv or train\.parquet for task "
                                        rf"rotten_tomatoes \(found {re.escape(shown_as)}: crild reads one "
                                        rf"\.jsonl, \.csv, \.tsv or \.parquet file per split, named train, dev \(or validation\) or test\)$"):
        load_split(TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path)), RT, "train")


def test_the_hubs_validation_split_is_the_dev_split(tmp_path):
    """A folder a hub dataset was saved to (``validation.parquet``) has its dev split under the
    hub's name; beside a ``dev`` file, which one is meant is not guessed."""
    from pipeline.data.sources import available_eval_splits, checked_eval_splits

    task = TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path))
    pq.write_table(_table(sentence=["ok"], label=["fresh"]), tmp_path / "train.parquet")
    pq.write_table(_table(sentence=["fine"], label=["rotten"]), tmp_path / "validation.parquet")
    pq.write_table(_table(sentence=["bad"], label=["rotten"]), tmp_path / "test.parquet")
    assert checked_eval_splits(task, RT, None, "run.yaml") == ["dev"] and available_eval_splits(task, RT) == ["dev", "test"]
    assert load_split(task, RT, "dev").text_a == ["fine"]
    pq.write_table(_table(sentence=["ok"], label=["fresh"]), tmp_path / "dev.parquet")
    with pytest.raises(UserError, match=r"dev\.parquet and validation\.parquet are both the dev split; crild reads one "
                                        r"file per split: remove or rename the others$"):
        load_split(task, RT, "dev")
    for name in ("dev.parquet", "validation.parquet", "test.parquet"):
        (tmp_path / name).unlink()
    (tmp_path / "validation.json").write_text('{"sentence": "ok", "label": "fresh"}\n')
    with pytest.raises(UserError, match=r"no held-out split for task rotten_tomatoes: expected dev\.jsonl, dev\.csv, "
                                        r"dev\.tsv or dev\.parquet \(or validation\.\*, or test\.\*\) beside the training "
                                        r"file \(found validation\.json: crild reads one .* file per split, named train, "
                                        r"dev \(or validation\) or test\)$"):
        checked_eval_splits(task, RT, None, "run.yaml")


def test_a_schema_name_that_is_not_utf8_is_one_line(tmp_path):
    """pyarrow decodes a damaged schema's names without checking them (found by fuzzing)."""
    pq.write_table(_table(sentence=["ok"], label=["fresh"]), tmp_path / "train.parquet")
    data = (tmp_path / "train.parquet").read_bytes()
    (tmp_path / "train.parquet").write_bytes(data.replace(b"sentence", b"sent\xc3nce"))
    with pytest.raises(UserError, match=r"train\.parquet: not a Parquet file crild can read \(a name in its schema "
                                        r"is not UTF-8: byte 0xc3\)"):
        load_split(TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path)), RT, "train")
