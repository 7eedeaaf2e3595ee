"""Every GLUE task from a GLUE-format fixture directory, local CSV/JSONL files, bad data."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ColumnMap, TaskConfig
from pipeline.data.sources import UNLABELLED, available_eval_splits, load_split
from pipeline.data.tasks import TASKS, task_spec
from pipeline.errors import UserError

# header, one row per label in file order, the label values written
GLUE_FIXTURES = {
    "cola": (None, lambda t, y: ["gj04", y, "", t], ["0", "1"]),
    "sst2": (["sentence", "label"], lambda t, y: [t, y], ["0", "1"]),
    "mrpc": (["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"], lambda t, y: [y, "1", "2", t, t + " too"],
             ["0", "1"]),
    "stsb": (["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
              "score"], lambda t, y: ["0", "g", "f", "y", "0", "s", "s", t, t + " too", y], ["0.5", "4.25"]),
    "qqp": (["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
            lambda t, y: ["0", "1", "2", t, t + "?", y], ["0", "1"]),
    "mnli": (["index", "promptID", "pairID", "genre", "sentence1", "sentence2", "label1", "gold_label"],
             lambda t, y: ["0", "1", "2", "g", t, t + " too", y, y], ["contradiction", "entailment", "neutral"]),
    "qnli": (["index", "question", "sentence", "label"], lambda t, y: ["0", t, t + ".", y],
             ["entailment", "not_entailment"]),
    "rte": (["index", "sentence1", "sentence2", "label"], lambda t, y: ["0", t, t + " too", y],
            ["entailment", "not_entailment"]),
    "wnli": (["index", "sentence1", "sentence2", "label"], lambda t, y: ["0", t, t + " too", y], ["0", "1"]),
}


def write_glue(folder: Path, task: str) -> list[str]:
    header, row, values = GLUE_FIXTURES[task]
    spec = TASKS[task]
    folder.mkdir(parents=True, exist_ok=True)
    for gf in spec.glue_files.values():
        lines = [] if header is None else ["\t".join(header)]
        if gf.label is None:  # unlabelled test file: keep only text columns (plus an index)
            cols = ["index"] + [c for c in (gf.text_a, gf.text_b) if c is not None]
            lines = ["\t".join(cols)] + ["\t".join([str(i)] + [f"text {i} \"quoted" for _ in cols[1:]])
                                         for i in range(3)]
        else:
            lines += ["\t".join(row(f"text {i} \"quoted", y)) for i, y in enumerate(values * 2)]
        (folder / gf.filename).write_text("\n".join(lines) + "\n")
    return values


@pytest.mark.parametrize("task", list(GLUE_FIXTURES))
def test_glue_task_loads_with_right_labels(tmp_path, task):
    values = write_glue(tmp_path / task, task)
    spec = TASKS[task]
    cfg = TaskConfig(name=task, data_dir=str(tmp_path / task))
    train = load_split(cfg, spec, "train")
    assert len(train) == 2 * len(values)
    assert train.text_a[0] == 'text 0 "quoted'  # quotes are literal in GLUE TSVs
    assert (train.text_b is not None) == spec.pair
    if spec.regression:
        np.testing.assert_allclose(train.labels, [float(v) for v in values] * 2)
    else:
        expected = [spec.labels.index(v) for v in values] * 2
        assert train.labels.tolist() == expected
        assert [spec.labels[i] for i in train.labels[:len(values)]] == values
    splits = available_eval_splits(cfg, spec)
    assert splits == [s for s in spec.glue_files if s != "train"]
    dev = load_split(cfg, spec, splits[0])
    assert dev.labelled
    test = load_split(cfg, spec, splits[-1])
    assert len(test) == 3 and not test.labelled and (test.labels == UNLABELLED).all()


def test_mnli_has_matched_and_mismatched_dev(tmp_path):
    write_glue(tmp_path / "mnli", "mnli")
    cfg = TaskConfig(name="mnli", data_dir=str(tmp_path / "mnli"))
    assert available_eval_splits(cfg, TASKS["mnli"])[:2] == ["dev_matched", "dev_mismatched"]


def test_tsv_missing_column_names_file_and_column(tmp_path):
    (tmp_path / "train.tsv").write_text("index\tsentence1\tlabel\n0\ta\tentailment\n")
    with pytest.raises(UserError) as err:
        load_split(TaskConfig(name="rte", data_dir=str(tmp_path), source="glue"), TASKS["rte"], "train")
    assert "train.tsv" in str(err.value) and "missing column 'sentence2'" in str(err.value)


def test_a_header_that_swallowed_a_line_break_is_shown_escaped_on_one_line(tmp_path):
    """A stray quote before the header makes its one cell run into the next line: the
    columns it has are listed as the file holds them (hypothesis found this one)."""
    (tmp_path / "train.csv").write_bytes(b'"sentence,label\r\n",x\r\nfine,fresh\r\n')
    with pytest.raises(UserError) as err:
        load_split(TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path)), TASKS["rotten_tomatoes"], "train")
    assert "\n" not in str(err.value) and str(err.value).endswith(
        "missing column 'sentence' (has: sentence,label\\r\\n, x); name the file's column in task.columns.text_a")


@pytest.mark.parametrize("name, sep", [("train.csv", ","), ("train.tsv", "\t")])
def test_a_quote_never_closed_is_refused_at_the_record_that_opened_it(tmp_path, name, sep):
    """Python's csv module reads the rest of the file into the open quote's field without a
    word: the records after it would silently vanish (or the error would be a field count)."""
    (tmp_path / name).write_text(f"sentence{sep}label\ngood{sep}fresh\n\"bad{sep}rotten\nfine{sep}fresh\nok{sep}fresh\n")
    with pytest.raises(UserError) as err:
        load_split(TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path)), TASKS["rotten_tomatoes"], "train")
    assert str(err.value) == (f"{tmp_path / name}:3: a quote (\") opened in this record is never closed; expected a "
                              f"closing quote before the end of the file (line 5)")


@pytest.mark.parametrize("name, sep", [("train.csv", ","), ("train.tsv", "\t")])
def test_a_text_that_starts_with_a_quote_it_does_not_close_is_refused_where_it_swallows_records(tmp_path, name, sep):
    """A hand-written file whose text starts with a quote (``"Quoted" he said``) opens a quoted
    field that runs over the next records to a later quote: before, those three records were
    read as one text under the third one's label, with no error at all."""
    (tmp_path / name).write_text(f'sentence{sep}label\ngood{sep}fresh\n"bad one{sep}rotten\nfine{sep}fresh\n'
                                 f'"ok" he said{sep}fresh\nnice{sep}fresh\n')
    with pytest.raises(UserError) as err:
        load_split(TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path)), TASKS["rotten_tomatoes"], "train")
    assert str(err.value) == (f"{tmp_path / name}:3: a quote (\") opens a field here that runs over the line breaks "
                              f"to line 5, where it closes in mid-field, so lines 3-5 would read as one record; "
                              f"expected a field that starts with a quote to end with one (write a quote in the text "
                              f"as \"\" inside a quoted field)")


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_header_repeated_inside_the_file_is_refused_at_its_line(tmp_path, split):
    """Two files joined with cat: in an unlabelled split the second header was an example,
    the text "sentence", scored without a word."""
    header = "sentence,label" if split == "train" else "sentence"
    row = "good film,fresh" if split == "train" else "good film"
    (tmp_path / f"{split}.csv").write_text(f"{header}\n{row}\n{header}\n{row}\n")
    with pytest.raises(UserError) as err:
        load_split(TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path)), TASKS["rotten_tomatoes"], split)
    assert str(err.value) == (f"{tmp_path / split}.csv:3: repeats the header (line 1); expected it once, at the top "
                              f"(were files joined with cat? join them without their headers: tail -n +2)")


def test_quoted_fields_over_lines_and_a_quote_inside_a_field_are_read_as_spreadsheets_write_them(tmp_path):
    (tmp_path / "train.csv").write_text('sentence,label\n"two\nlines",fresh\n"ab"c,rotten\nsaid "hi",fresh\n'
                                        '"a ""quoted""\nword",fresh\n')
    examples = load_split(TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path)), TASKS["rotten_tomatoes"], "train")
    assert examples.text_a == ["two\nlines", "abc", 'said "hi"', 'a "quoted"\nword']


def test_label_outside_label_set_names_line_and_value(tmp_path):
    (tmp_path / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\tmaybe\n")
    with pytest.raises(UserError) as err:
        load_split(TaskConfig(name="rte", data_dir=str(tmp_path), source="glue"), TASKS["rte"], "train")
    assert "train.tsv:3" in str(err.value) and "'maybe'" in str(err.value) and "not_entailment" in str(err.value)


@pytest.mark.parametrize("written, said", [
    ('"Fresh"', "label 'Fresh' is not one of rotten, fresh, or their ids 0-1 (task rotten_tomatoes); did you mean "
                "'fresh'?"),
    ('"meh"', "label 'meh' is not one of rotten, fresh, or their ids 0-1 (task rotten_tomatoes)"),
    ("true", "label true is a boolean, and the labels of task rotten_tomatoes are rotten, fresh; write the label's "
             "name or id"), ("NaN", "label NaN is not one of"), ('["fresh"]', 'label ["fresh"] is not'),
    (str(list(range(100))), "label [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, ... is not"),
])
def test_a_label_outside_the_set_is_quoted_as_the_file_writes_it(tmp_path, written, said):
    """JSON's true, NaN and lists as JSON writes them, not as Python prints them; a long one cut;
    a name that differs from one of the labels by case or a letter gets a suggestion."""
    (tmp_path / "train.jsonl").write_text(f'{{"sentence": "a", "label": "fresh"}}\n{{"sentence": "b", "label": {written}}}\n')
    with pytest.raises(UserError) as err:
        load_split(TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path)), TASKS["rotten_tomatoes"], "train")
    assert str(err.value).startswith(f"{tmp_path / 'train.jsonl'}:2: {said}")


def test_empty_dataset_is_an_error(tmp_path):
    (tmp_path / "train.jsonl").write_text("")
    with pytest.raises(UserError, match="no examples"):
        load_split(TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path)), TASKS["rotten_tomatoes"], "train")


def test_jsonl_and_csv_with_named_columns(tmp_path):
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps({"review": f"r{i}", "y": ["rotten", "fresh"][i % 2]})
                                                    for i in range(4)) + "\n")
    (tmp_path / "dev.csv").write_text("review,y\nnice one,fresh\n\"bad, really\",rotten\n")
    cfg = TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path), columns=ColumnMap(text_a="review", label="y"))
    spec = TASKS["rotten_tomatoes"]
    train = load_split(cfg, spec, "train")
    assert train.labels.tolist() == [0, 1, 0, 1]
    dev = load_split(cfg, spec, "dev")
    assert dev.text_a == ["nice one", "bad, really"] and dev.labels.tolist() == [1, 0]
    assert available_eval_splits(cfg, spec) == ["dev"]


def test_missing_data_dir(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_split(TaskConfig(name="sst2", data_dir=str(tmp_path / "nope")), TASKS["sst2"], "train")


def test_offline_task_not_prepared_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("CRILD_HOME", str(tmp_path))
    with pytest.raises(UserError, match="crild prepare-data"):
        load_split(TaskConfig(name="snli"), TASKS["snli"], "train")


def test_training_examples_cut_by_max_length_are_counted_in_a_note(tmp_path, tiny_bert, sentiment_dir):
    """The tokenizer truncates without a word; the stage says how many examples fill
    max_length, and says nothing when none do."""
    from helpers import tiny_run_config

    from pipeline.config import from_dict
    from pipeline.data.task_data import load_task_data
    from pipeline.models.loading import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_bert), "teacher.model")
    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
    roomy = load_task_data(from_dict(raw), tokenizer)
    assert roomy.notes == [] and max(roomy.train["length"]) < 32
    raw["task"]["max_length"] = 8
    cut = load_task_data(from_dict(raw), tokenizer)
    full = sum(length == 8 for length in cut.train["length"])
    assert 0 < full <= len(cut.train) and cut.notes == [
        f"note: {full} of {len(cut.train)} training examples ({full / len(cut.train):.1%}) fill task.max_length 8 "
        f"tokens; longer ones are cut there"]


def test_labels_given_as_numbers_follow_the_hub_numbering_and_say_so(tmp_path):
    """MNLI's GLUE order is alphabetical, the hub's is entailment, neutral, contradiction: a
    file exported from the hub numbers the classes that way, and every id must land on the
    class it means (or the exported model names every class after another)."""
    spec = TASKS["mnli"]
    rows = [{"sentence1": f"p{k}", "sentence2": f"h{k}", "label": k} for k in (0, 1, 2)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train = load_split(TaskConfig(name="mnli", data_dir=str(tmp_path), source="files"), spec, "train")
    assert [spec.labels[i] for i in train.labels] == ["entailment", "neutral", "contradiction"]
    assert train.notes == [f"note: {tmp_path / 'train.jsonl'}: labels given as numbers, read as 0=entailment, "
                           f"1=neutral, 2=contradiction (the Hugging Face dataset's numbering for mnli); where a file "
                           f"numbers them otherwise, write the label names in it"]
    assert train.select([2, 0]).notes == train.notes  # carried through subsets (few-sample, noise, ...)


def test_digits_in_a_csv_are_ids_and_names_need_no_note(tmp_path):
    spec = TASKS["rotten_tomatoes"]
    cfg = TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path))
    (tmp_path / "train.csv").write_text("sentence,label\ngood,1\nbad,0\nfine,fresh\n")
    train = load_split(cfg, spec, "train")
    assert train.labels.tolist() == [1, 0, 1] and len(train.notes) == 1
    (tmp_path / "train.csv").write_text("sentence,label\ngood,fresh\nbad,rotten\n")
    assert load_split(cfg, spec, "train").notes == []
    (tmp_path / "train.csv").write_text("sentence,label\ngood,2\n")
    with pytest.raises(UserError, match=r"train.csv:2: label '2' is not one of rotten, fresh, or their ids 0-1"):
        load_split(cfg, spec, "train")


def test_digit_labels_of_glue_tasks_are_names_not_ids(tmp_path):
    write_glue(tmp_path / "sst2", "sst2")
    train = load_split(TaskConfig(name="sst2", data_dir=str(tmp_path / "sst2")), TASKS["sst2"], "train")
    assert train.notes == []


@pytest.mark.parametrize("name, header", [("train.csv", "sentence,label,sentence"),
                                          ("train.tsv", "sentence\tlabel\tsentence")])
def test_a_column_named_twice_in_the_header_is_refused(tmp_path, name, header):
    sep = "," if name.endswith("csv") else "\t"
    (tmp_path / name).write_text(f"{header}\n" + sep.join(["a", "fresh", "b"]) + "\n")
    with pytest.raises(UserError) as err:
        load_split(TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path)), TASKS["rotten_tomatoes"], "train")
    assert str(err.value) == f"{tmp_path / name}:1: column 'sentence' appears twice in the header; expected each " \
                             f"column once"


def test_a_glue_header_naming_a_column_twice_is_refused(tmp_path):
    (tmp_path / "train.tsv").write_text("index\tsentence1\tsentence2\tsentence2\tlabel\n0\ta\tb\tc\tentailment\n")
    with pytest.raises(UserError, match="train.tsv:1: column 'sentence2' appears twice"):
        load_split(TaskConfig(name="rte", data_dir=str(tmp_path), source="glue"), TASKS["rte"], "train")


@pytest.mark.parametrize("value, what", [(None, "is null"), (["a"], "is an array"), ({"t": 1}, "is an object"),
                                         (True, "is a boolean")])
def test_text_that_is_not_text_is_refused(tmp_path, value, what):
    (tmp_path / "train.jsonl").write_text(json.dumps({"sentence": "ok", "label": "fresh"}) + "\n"
                                          + json.dumps({"sentence": value, "label": "fresh"}) + "\n")
    with pytest.raises(UserError) as err:
        load_split(TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path)), TASKS["rotten_tomatoes"], "train")
    assert str(err.value) == f"{tmp_path / 'train.jsonl'}:2: column 'sentence' {what}; expected text"


def test_half_a_utf16_pair_is_refused_with_its_line(tmp_path):
    """JSON can escape half of a UTF-16 pair ("\\ud83d", text cut inside an emoji); the
    tokenizer failed on it with a TypeError in the middle of the stage."""
    rows = [{"sentence": "ok", "label": "fresh"}, {"sentence": "ok \U0001F600", "label": "fresh"},
            {"sentence": "cut \ud83d", "label": "rotten"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(UserError) as err:
        load_split(TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path)), TASKS["rotten_tomatoes"], "train")
    assert str(err.value) == (f"{tmp_path / 'train.jsonl'}:3: column 'sentence' holds '\\ud83d', half of a UTF-16 pair "
                              f"without its other half (text cut inside an emoji, say); expected whole characters")


def test_a_held_out_split_made_of_training_examples_is_noted(tmp_path, tiny_bert, sentiment_dir):
    """A dev file copied from the training file scores memorisation: the stage says so, and
    says nothing for the few repeats real corpora have (under 1%)."""
    import shutil

    from helpers import tiny_run_config

    from pipeline.config import from_dict
    from pipeline.data.sources import Examples
    from pipeline.data.task_data import example_texts, held_out_overlap, load_task_data, overlap_note
    from pipeline.models.loading import load_tokenizer

    copied = shutil.copytree(sentiment_dir, tmp_path / "copied")
    shutil.copy(copied / "train.jsonl", copied / "dev.jsonl")
    raw = tiny_run_config(tmp_path, tiny_bert, copied)
    data = load_task_data(from_dict(raw), load_tokenizer(str(tiny_bert), "teacher.model"))
    n = len(data.train)
    assert data.notes == [f"note: {copied / 'dev.jsonl'}: {n} of {n} dev examples (100.0%) are training examples "
                          f"too (the same text); their scores are not held-out scores"]
    # a stage that trains nothing (evaluation) reads the training texts for the note, once, untokenized
    held_out_only = load_task_data(from_dict(raw), load_tokenizer(str(tiny_bert), "teacher.model"), with_train=False)
    assert held_out_only.train is None and held_out_only.notes == []
    assert held_out_overlap(from_dict(raw), held_out_only) == data.notes
    (copied / "train.jsonl").unlink()  # a folder of held-out files only: nothing to compare, no note
    assert held_out_overlap(from_dict(raw), held_out_only) == []

    train = set(example_texts(Examples([f"t{i}" for i in range(200)], None, np.zeros(200, dtype=np.int64))))
    assert overlap_note(train, Examples(["t1"] + [f"d{i}" for i in range(199)], None, np.zeros(200)), "dev") is None
    assert "2 of 200 dev" in overlap_note(train, Examples(["t1", "t2"] + [f"d{i}" for i in range(198)], None,
                                                          np.zeros(200)), "dev")
    pairs = set(example_texts(Examples(["a", "a"], ["b", "c"], np.zeros(2, dtype=np.int64))))  # both texts match
    assert "1 of 2" in overlap_note(pairs, Examples(["a", "a"], ["b", "x"], np.zeros(2)), "dev")


def test_a_class_no_training_example_has_is_noted(tmp_path, tiny_bert):
    """A training file of one class (or a few-sample draw that missed one) trained a model
    that can never predict the other, without a word."""
    from helpers import tiny_run_config

    from pipeline.config import TaskConfig, from_dict
    from pipeline.data.sources import Examples
    from pipeline.data.task_data import load_task_data, missing_classes_note
    from pipeline.models.loading import load_tokenizer

    folder = tmp_path / "one-class"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps({"sentence": f"s {i}", "label": "fresh"}) + "\n"
                                                for i in range(20)))
    (folder / "dev.jsonl").write_text("".join(json.dumps({"sentence": f"d {i}", "label": ["fresh", "rotten"][i % 2]})
                                              + "\n" for i in range(6)))
    data = load_task_data(from_dict(tiny_run_config(tmp_path, tiny_bert, folder)),
                          load_tokenizer(str(tiny_bert), "teacher.model"))
    assert data.notes == [f"note: {folder / 'train.jsonl'}: the training set has no example of 'rotten' (1 of the 2 "
                          f"classes of task rotten_tomatoes); the model cannot learn to predict it"]
    spec = TASKS["mnli"]
    drawn = Examples(["a", "b"], ["c", "d"], np.array([0, 0]), source="train.jsonl")
    assert missing_classes_note(drawn, spec, TaskConfig(name="mnli", few_sample=2)) == (
        "note: train.jsonl: the training set (after task.few_sample) has no example of 'entailment', 'neutral' "
        "(2 of the 3 classes of task mnli); the model cannot learn to predict them")
    every = Examples(["a", "b", "c"], None, np.array([2, 0, 1]))
    assert missing_classes_note(every, spec, TaskConfig(name="mnli")) is None
    assert missing_classes_note(Examples(["a"], None, np.array([1.5], dtype=np.float32)), TASKS["stsb"],
                                TaskConfig(name="stsb")) is None  # a regression has no classes


def test_prepare_data_keeps_prepared_tasks_and_force_rebuilds_them_the_same(tmp_path):
    """``crild prepare-data`` prepares each offline task once (a second call reads nothing and
    replaces nothing), and ``--force`` rebuilds them: the same splits, from the fixed seed."""
    import subprocess
    import sys

    from helpers import REPO, crild_env

    def prepare(*args):
        proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "prepare-data", *args], capture_output=True,
                              text=True, env=crild_env(CRILD_HOME=str(tmp_path)), cwd=REPO, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        files = sorted((tmp_path / "data").rglob("*.jsonl"))
        return {f.relative_to(tmp_path): (f.stat().st_ino, f.read_bytes()) for f in files}

    first = prepare()
    assert {f.parts[1] for f in first} == {"rotten_tomatoes", "rotten_tomatoes_plot", "snli"}
    assert prepare() == first  # kept: the same files, not rewritten
    forced = prepare("--force")
    assert forced.keys() == first.keys()
    assert all(forced[f][1] == first[f][1] and forced[f][0] != first[f][0] for f in first)  # rewritten, the same


def test_preparing_offline_data_never_replaces_a_folder_crild_did_not_prepare(tmp_path, monkeypatch):
    from pipeline.data.offline import prepare_all

    monkeypatch.setenv("CRILD_HOME", str(tmp_path))
    mine = tmp_path / "data" / "rotten_tomatoes"
    mine.mkdir(parents=True)
    (mine / "train.jsonl").write_text('{"sentence": "mine", "label": "fresh"}\n')
    with pytest.raises(UserError, match="a folder crild did not prepare is where it keeps the offline task "
                                        "'rotten_tomatoes'; move it, or set CRILD_HOME to another folder"):
        prepare_all()
    assert (mine / "train.jsonl").read_text().startswith('{"sentence": "mine"')


def test_a_split_that_is_not_there_lists_those_that_are(tmp_path, tiny_bert, sentiment_dir):
    """The hub's name for the dev split ('validation') is the first a user tries."""
    from helpers import tiny_run_config

    from pipeline.config import from_dict
    from pipeline.data.task_data import load_task_data
    from pipeline.models.loading import load_tokenizer

    cfg = from_dict(tiny_run_config(tmp_path, tiny_bert, sentiment_dir))
    tokenizer = load_tokenizer(str(tiny_bert), "teacher.model")
    for split, hint in [("validation", "; crild calls the hub's 'validation' split 'dev'"), ("train2", "")]:
        with pytest.raises(UserError) as err:
            load_task_data(cfg, tokenizer, eval_splits=[split], with_train=False)
        assert str(err.value).endswith(f"split '{split}' is not a held-out split of task rotten_tomatoes (available: "
                                       f"dev, test){hint}")
        with pytest.raises(UserError) as err:  # the stage's own check names its setting
            load_task_data(cfg, tokenizer, eval_splits=[split], with_train=False, splits_key="stages.export.split")
        assert f": stages.export.split: '{split}' is not a held-out split" in str(err.value)


def test_empty_text_fields_are_noted_with_the_first_line(tmp_path):
    (tmp_path / "train.csv").write_text("sentence,label\ngood film,fresh\n,rotten\n  ,fresh\n")
    train = load_split(TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path)), TASKS["rotten_tomatoes"], "train")
    assert train.notes == [f"note: {tmp_path / 'train.csv'}: 2 of 3 examples have an empty text field (the first on "
                           f"line 3); their input is the special tokens alone"]
    (tmp_path / "train.csv").write_text("sentence,label\ngood film,fresh\n")
    assert load_split(TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path)), TASKS["rotten_tomatoes"],
                      "train").notes == []


def test_a_capped_held_out_split_says_so(tmp_path, tiny_bert, sentiment_dir):
    """max_eval_examples caps every held-out split, the evaluation stage's too: the scores must
    not pass for the whole split's."""
    from helpers import tiny_run_config

    from pipeline.config import from_dict
    from pipeline.data.task_data import load_task_data
    from pipeline.models.loading import load_tokenizer

    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
    raw["task"]["max_eval_examples"] = 5
    data = load_task_data(from_dict(raw), load_tokenizer(str(tiny_bert), "teacher.model"), eval_splits=["dev", "test"],
                          with_train=False)
    assert len(data.eval["dev"]) == 5 and data.notes == [
        f"note: {split} is scored on its first 5 of 32 examples (task.max_eval_examples)" for split in ("dev", "test")]
    # a split sorted by label, capped at its start, holds one class: its scores say nothing of the other
    sorted_dir = tmp_path / "sorted"
    shutil.copytree(sentiment_dir, sorted_dir)
    rows = (sorted_dir / "dev.jsonl").read_text().splitlines()
    (sorted_dir / "dev.jsonl").write_text("\n".join(sorted(rows, key=lambda r: json.loads(r)["label"])) + "\n")
    raw["task"]["data_dir"] = str(sorted_dir)
    for cap, lacking in ((5, ["rotten"]), (16, ["rotten"]), (17, [])):
        raw["task"]["max_eval_examples"] = cap
        notes = load_task_data(from_dict(raw), load_tokenizer(str(tiny_bert), "teacher.model"), eval_splits=["dev"],
                               with_train=False).notes
        assert notes[1:] == [f"note: the first {cap} dev examples hold no example of 'rotten', which the other "
                             f"{32 - cap} do (the file may be sorted by label): its scores are of the other classes "
                             f"alone; raise task.max_eval_examples, or shuffle the file" for _ in lacking]


def test_two_files_for_one_split_are_refused_not_picked_by_extension(tmp_path):
    """A train.csv beside a newer train.jsonl: which one trains must not depend on an
    extension order the user never chose."""
    (tmp_path / "train.csv").write_text("sentence,label\nold,fresh\n")
    (tmp_path / "train.jsonl").write_text(json.dumps({"sentence": "new", "label": "fresh"}) + "\n")
    cfg = TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path))
    with pytest.raises(UserError, match=r"train\.jsonl and train\.csv are both the train split; crild reads one"):
        load_split(cfg, TASKS["rotten_tomatoes"], "train")
    (tmp_path / "train.csv").unlink()
    assert load_split(cfg, TASKS["rotten_tomatoes"], "train").text_a == ["new"]


def test_a_data_dir_that_is_a_file_points_at_its_folder(tmp_path):
    (tmp_path / "train.csv").write_text("sentence,label\ngood,pos\n")
    cfg = TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path / "train.csv"))
    with pytest.raises(UserError, match=rf"task.data_dir: '{tmp_path}/train.csv' is a file; expected the folder .* "
                                        rf"e.g. '{tmp_path}'"):
        load_split(cfg, TASKS["rotten_tomatoes"], "train")


def test_the_built_in_hub_tasks_name_their_dataset_splits_and_columns():
    """Each GLUE task's hub dataset, split map and columns, each in its own field: a field
    given to another's slot reads a split map as a pinned commit, and fails only where the
    hub is read."""
    hub_tasks = {name: spec for name, spec in TASKS.items() if spec.hub is not None}
    assert sorted(hub_tasks) == sorted(GLUE_FIXTURES)
    for name, spec in hub_tasks.items():
        assert spec.hub == ("nyu-mll/glue", name) and spec.hub_revision is None
        assert spec.hub_splits["train"] == "train" and set(spec.hub_splits) == set(spec.glue_files)
        assert all(isinstance(split, str) for split in spec.hub_splits.values())
        a, b, label = spec.hub_columns
        assert isinstance(a, str) and (b is not None) == spec.pair and label == "label"


def test_a_file_of_other_column_names_says_which_setting_names_them(tmp_path):
    """A file whose columns are named otherwise than the task's (text, y): the line names the
    missing column and the key of task.columns that maps it, for a supplementary task too."""
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": f"film {i}", "y": "fresh"}) + "\n"
                                                  for i in range(3)))
    spec = TASKS["rotten_tomatoes"]
    for columns, where, missing, key in (
            ({}, "task", "sentence", "text_a"),
            ({"text_a": "text"}, "task", "label", "label"),
            ({}, "stages.distill.supplementary[0].task", "sentence", "text_a")):
        cfg = TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path), columns=ColumnMap(**columns))
        with pytest.raises(UserError) as err:
            load_split(cfg, spec, "train", where)
        assert str(err.value) == (f"{tmp_path / 'train.jsonl'}: missing column '{missing}' (has: text, y); name the "
                                  f"file's column in {where}.columns.{key}")
    cfg = TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path), columns=ColumnMap(text_a="text", label="y"))
    assert load_split(cfg, spec, "train").text_a == ["film 0", "film 1", "film 2"]


def test_texts_under_other_names_are_found_as_run_glue_finds_them_and_noted(tmp_path):
    """A file or dataset that names its text otherwise (the hub's IMDB, AG News: ``text``)
    is read from the columns besides the label and ids, in the file's order, with a note;
    never by a guess among more columns than the task has texts, nor past a named column."""
    def write(rows):
        (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    single, pair = TASKS["rotten_tomatoes"], TASKS["rte"]
    write([{"id": i, "text": f"film {i}", "label": "fresh"} for i in range(3)])
    train = load_split(TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path)), single, "train")
    assert train.text_a == ["film 0", "film 1", "film 2"] and train.notes == [
        "note: task: no column 'sentence': the text is read from column 'text', the one column besides the label; "
        "task.columns.text_a names other columns"]
    write([{"label": "entailment", "premise": f"p{i}", "idx": i, "hypothesis": f"h{i}"} for i in range(3)])
    rte = TaskConfig(name="rte", data_dir=str(tmp_path), source="files")
    train = load_split(rte, pair, "train", "stages.distill.supplementary[0].task")
    assert (train.text_a, train.text_b) == (["p0", "p1", "p2"], ["h0", "h1", "h2"]) and train.notes == [
        "note: stages.distill.supplementary[0].task: no columns 'sentence1' and 'sentence2': the texts are read from "
        "columns 'premise' and 'hypothesis', in that order, the two columns besides the label; "
        "stages.distill.supplementary[0].task.columns.text_a and stages.distill.supplementary[0].task.columns.text_b "
        "name other columns"]
    for rows, cfg, missing, key in (
            ([{"title": "t", "text": "x", "label": "fresh"}], {}, "sentence", "text_a"),  # which one: not guessed
            ([{"text": "x", "label": "fresh"}], {"text_a": "body"}, "body", "text_a"),  # named: as named
            ([{"sentence1": "x", "other": "y", "label": "entailment"}], {}, "sentence2", "text_b")):  # one default there
        write(rows)
        spec = pair if "sentence1" in rows[0] else single
        task = TaskConfig(name=spec.name, data_dir=str(tmp_path), source="files", columns=ColumnMap(**cfg))
        with pytest.raises(UserError, match=rf"missing column '{missing}' .*; name the file's column in "
                                            rf"task\.columns\.{key}$"):
            load_split(task, spec, "train")


@pytest.mark.parametrize("name, header, sep, said", [
    ("train.csv", "sentence;label", ";", "separated by semicolons, and crild reads .csv files as separated by commas"),
    ("test.csv", "sentence;label", ";", "separated by semicolons, and crild reads .csv files as separated by commas"),
    ("train.csv", "sentence\tlabel", "\t", "separated by tabs, and crild reads .csv files as separated by commas"),
    ("dev.tsv", "sentence,label", ",", "separated by commas, and crild reads .tsv files as separated by tabs")])
def test_a_file_of_another_separator_is_named_as_such(tmp_path, name, header, sep, said):
    """A spreadsheet's CSV export with semicolons reads as one column: refused at its header,
    since an unlabelled split would otherwise be scored on 'text;label' as one text."""
    (tmp_path / name).write_text(f"{header}\nnice film{sep}fresh\nbad, bad film{sep}rotten\n")
    with pytest.raises(UserError) as err:
        load_split(TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path)), TASKS["rotten_tomatoes"],
                   name.partition(".")[0])
    shown_header = header.replace("\t", "\\t")
    assert str(err.value) == (f"{tmp_path / name}:1: the header '{shown_header}' is one column: the fields are {said}; "
                              f"save it with commas as .csv or with tabs as .tsv")
    right = "\t" if name.endswith(".tsv") else ","  # a text holding the other separators is read as it is
    (tmp_path / name).write_text(f"sentence{right}label\nnice; fine|film{right}fresh\n")
    assert load_split(TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path)), TASKS["rotten_tomatoes"],
                      name.partition(".")[0]).text_a == ["nice; fine|film"]


def test_two_text_columns_for_a_single_text_task_of_ones_own_point_to_pairs(tmp_path):
    """An NLI file (premise, hypothesis) for a task of one's own that did not say it is of
    pairs: the error names the pairing setting beside the column one; not for a built-in task,
    whose pairing is its own."""
    (tmp_path / "train.csv").write_text("premise,hypothesis,label\na man sleeps,a man rests,yes\n")
    own = TaskConfig(name="mine", labels=["yes", "no"], data_dir=str(tmp_path))
    with pytest.raises(UserError) as err:
        load_split(own, task_spec(own), "train")
    assert str(err.value) == (f"{tmp_path / 'train.csv'}: missing column 'sentence' (has: premise, hypothesis, label); "
                              f"name the file's column in task.columns.text_a; or, for pairs of texts, set task.pair: "
                              f"true")
    paired = TaskConfig(name="mine", labels=["yes", "no"], data_dir=str(tmp_path), pair=True)
    assert load_split(paired, task_spec(paired), "train").text_b == ["a man rests"]
    with pytest.raises(UserError) as err:
        load_split(TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path)), TASKS["rotten_tomatoes"], "train")
    assert str(err.value).endswith("name the file's column in task.columns.text_a")


def test_a_note_said_of_several_files_is_one_line_naming_them_all(tmp_path):
    """Labels given as numbers in train.csv, dev.csv and test.csv: one note naming the three
    files, not three lines alike; notes that differ (an empty field on a line of one file)
    stay apart, and a note said of no file once."""
    from pipeline.data.sources import Examples
    from pipeline.data.task_data import once_for_all_files

    cfg = TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path))
    for split in ("train", "dev", "test"):
        (tmp_path / f"{split}.csv").write_text("sentence,label\ngood film,1\n,0\n")
    splits = [load_split(cfg, TASKS["rotten_tomatoes"], split) for split in ("train", "dev", "test")]
    other = Examples(["x"], None, np.zeros(1, dtype=np.int64), str(tmp_path / "elsewhere" / "test.csv"),
                     notes=[f"note: {tmp_path / 'elsewhere' / 'test.csv'}: labels given as numbers, read as 0=rotten, "
                            f"1=fresh (the Hugging Face dataset's numbering for rotten_tomatoes); where a file numbers "
                            f"them otherwise, write the label names in it", "note: read at commit abc"])
    numbered = ("labels given as numbers, read as 0=rotten, 1=fresh (the Hugging Face dataset's numbering for "
                "rotten_tomatoes); where a file numbers them otherwise, write the label names in it")
    empty = "1 of 2 examples have an empty text field (the first on line 3); their input is the special tokens alone"
    assert once_for_all_files([*splits, other, other]) == [
        f"note: {tmp_path / 'train.csv'}, {tmp_path / 'dev.csv'}, {tmp_path / 'test.csv'} and "
        f"{tmp_path / 'elsewhere' / 'test.csv'}: {numbered}",  # in two folders: each path whole
        f"note: {tmp_path / 'train.csv'}, dev.csv and test.csv: {empty}", "note: read at commit abc"]
    assert once_for_all_files(splits[:1]) == [f"note: {tmp_path / 'train.csv'}: {numbered}",
                                              f"note: {tmp_path / 'train.csv'}: {empty}"]


def test_a_data_folder_one_level_too_high_points_to_the_subfolder(tmp_path):
    """data_dir: data, where the files are in data/my_task/: the error names the subfolder."""
    (tmp_path / "unrelated").mkdir()  # a subfolder without the split: not named
    (tmp_path / "unrelated" / "notes.txt").write_text("x")
    (tmp_path / "my_task").mkdir()
    (tmp_path / "my_task" / "train.csv").write_text("sentence,label\ngood,fresh\n")
    with pytest.raises(UserError) as err:
        load_split(TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path)), TASKS["rotten_tomatoes"], "train")
    assert str(err.value) == (f"{tmp_path}: no train.jsonl, train.csv, train.tsv or train.parquet for task "
                              f"rotten_tomatoes (its subfolder {tmp_path / 'my_task'}/ holds the split's file: give "
                              f"it as the data folder)")
    (tmp_path / "other_task").mkdir()
    (tmp_path / "other_task" / "train.jsonl").write_text('{"sentence": "good", "label": "fresh"}\n')
    with pytest.raises(UserError, match=r"\(its subfolders .*my_task/, .*other_task/ hold the split's file: give one "
                                        r"as the data folder\)$"):
        load_split(TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path)), TASKS["rotten_tomatoes"], "train")


def test_boolean_labels_are_read_by_name_where_the_labels_are_false_and_true(tmp_path):
    """JSON's true and false (a Parquet boolean column too) name the classes of a task whose
    labels are false and true, in any case and order; for other labels a boolean is refused,
    where it said 'label true is not one of false, true'."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "train.jsonl").write_text('{"sentence": "a", "label": true}\n{"sentence": "b", "label": false}\n')
    for labels, ids in ((["false", "true"], [1, 0]), (["True", "False"], [0, 1])):
        task = TaskConfig(name="dup", labels=labels, data_dir=str(tmp_path))
        assert load_split(task, task_spec(task), "train").labels.tolist() == ids
    (tmp_path / "train.jsonl").unlink()
    pq.write_table(pa.table({"sentence": ["a", "b"], "label": [True, False]}), tmp_path / "train.parquet")
    task = TaskConfig(name="dup", labels=["false", "true"], data_dir=str(tmp_path))
    assert load_split(task, task_spec(task), "train").labels.tolist() == [1, 0]
    task = TaskConfig(name="dup", labels=["no", "yes"], data_dir=str(tmp_path))
    with pytest.raises(UserError) as err:
        load_split(task, task_spec(task), "train")
    assert str(err.value) == (f"{tmp_path / 'train.parquet'}: row 1: label true is a boolean, and the labels of task "
                              f"dup are no, yes; write the label's name or id, or name the task's labels false, true")


def test_a_whole_number_written_as_a_float_is_a_label_id(tmp_path):
    """pandas writes an integer label column with a gap as floats (1.0): read as the ids they
    are, with the numbering note; 0.5 names no class."""
    cfg = TaskConfig(name="rotten_tomatoes", data_dir=str(tmp_path))
    (tmp_path / "train.csv").write_text("sentence,label\ngood,1.0\nbad,0.0\nfine,1\n")
    train = load_split(cfg, TASKS["rotten_tomatoes"], "train")
    assert train.labels.tolist() == [1, 0, 1] and "labels given as numbers" in train.notes[0]
    (tmp_path / "train.csv").unlink()
    (tmp_path / "train.jsonl").write_text('{"sentence": "good", "label": 1.0}\n{"sentence": "bad", "label": 0.5}\n')
    with pytest.raises(UserError, match=r"train\.jsonl:2: label 0\.5 is not one of rotten, fresh, or their ids 0-1"):
        load_split(cfg, TASKS["rotten_tomatoes"], "train")
