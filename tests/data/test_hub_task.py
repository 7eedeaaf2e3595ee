"""A task of the user's own read from a hub dataset (``task.hub``) through
``datasets.load_dataset``: here a local copy of one, in the layout ``hf download --repo-type
dataset`` leaves (Parquet shards under data/, a class label's names in their metadata), which
reads as the same task's files do, through every stage's reader; and each way it can be wrong
is one line."""
import json
import os
import subprocess
import sys

import pytest
import yaml
from helpers import (
    REPO,
    TONES,
    cache_hub_dataset,
    crild_env,
    tiny_run_config,
    tone_rows,
    write_hub_copy,
    write_tone_task,
)

from pipeline.cli import main
from pipeline.config import from_dict
from pipeline.data import hub_data
from pipeline.data.sources import available_eval_splits, checked_eval_splits, load_split
from pipeline.data.tasks import task_spec
from pipeline.errors import UserError

# the dataset numbers its classes in another order than the task lists them: crild maps by name
COMMIT_OLD, COMMIT_NEW = "a" * 40, "b" * 40  # two commits of a hub dataset
DATASET_ORDER = ["positive", "negative", "neutral"]


def class_label(names=DATASET_ORDER):
    import datasets

    return datasets.Features({"review": datasets.Value("string"), "tone": datasets.ClassLabel(names=names)})


def as_ids(rows, names=DATASET_ORDER):
    return [{"review": r["review"], "tone": names.index(r["tone"])} for r in rows]


@pytest.fixture(scope="module")
def tone_files(tmp_path_factory):
    return write_tone_task(tmp_path_factory.mktemp("tone") / "files")


@pytest.fixture(scope="module")
def tone_hub(tone_files, tmp_path_factory):
    """The tone task's splits as a hub dataset names them (dev is 'validation')."""
    splits = {hub: as_ids(tone_rows(tone_files, ours)) for ours, hub in
              (("train", "train"), ("dev", "validation"), ("test", "test"))}
    return write_hub_copy(tmp_path_factory.mktemp("tone") / "hub", splits, class_label())


def hub_task(hub, **over) -> dict:
    return {"name": "tone", "labels": TONES, "hub": str(hub), "columns": {"text_a": "review", "label": "tone"}, **over}


def files_task(folder) -> dict:
    return {"name": "tone", "labels": TONES, "data_dir": str(folder), "columns": {"text_a": "review", "label": "tone"}}


def read(task: dict, split: str = "train"):
    cfg = from_dict({"task": task})
    return load_split(cfg.task, task_spec(cfg.task), split)


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_a_hub_dataset_reads_as_the_same_tasks_files(tone_hub, tone_files, split):
    from_hub, from_files = read(hub_task(tone_hub), split), read(files_task(tone_files), split)
    assert from_hub.text_a == from_files.text_a and from_hub.text_b is None
    assert from_hub.labels.tolist() == from_files.labels.tolist()  # by name, though the dataset numbers them otherwise
    assert sorted(set(from_hub.labels.tolist())) == [0, 1, 2] and from_hub.notes == []


def test_the_held_out_splits_are_those_the_dataset_has(tone_hub, tmp_path):
    cfg = from_dict({"task": hub_task(tone_hub)})
    assert available_eval_splits(cfg.task, task_spec(cfg.task)) == ["dev", "test"]
    # a dataset without a validation split (as IMDb): test is its held-out split
    rows = as_ids([{"review": "good", "tone": "positive"}, {"review": "bad", "tone": "negative"}])
    imdb_like = write_hub_copy(tmp_path / "two", {"train": rows, "test": rows, "unsupervised": rows}, class_label())
    cfg = from_dict({"task": hub_task(imdb_like)})
    spec = task_spec(cfg.task)
    assert available_eval_splits(cfg.task, spec) == ["test"]
    assert checked_eval_splits(cfg.task, spec, None, "run.yaml") == ["test"]
    cfg = from_dict({"task": hub_task(imdb_like, hub_splits={"test": None})})
    with pytest.raises(UserError) as err:
        checked_eval_splits(cfg.task, task_spec(cfg.task), None, "run.yaml")
    assert str(err.value) == (f"{imdb_like}: no held-out split for task tone: task.hub_splits maps dev to "
                              f"'validation', and the dataset has train, test, unsupervised; set task.hub_splits.dev "
                              f"(or test) to one of them")


def test_a_pair_regression_and_text_labels_read_as_in_files(tmp_path):
    pairs = write_hub_copy(tmp_path / "pairs", {"train": [{"premise": f"a {i}", "hypothesis": "b", "score": i / 4}
                                                          for i in range(4)]})
    ex = read({"name": "similar", "regression": True, "pair": True, "hub": str(pairs), "hub_splits": {
        "dev": None, "test": None}, "columns": {"text_a": "premise", "text_b": "hypothesis", "label": "score"}})
    assert ex.text_b == ["b"] * 4 and ex.labels.tolist() == [0.0, 0.25, 0.5, 0.75]
    words = write_hub_copy(tmp_path / "words", {"train": [{"review": "x", "tone": "neutral"},
                                                          {"review": "y", "tone": "positive"}]})
    assert read(hub_task(words, hub_splits={"dev": None, "test": None})).labels.tolist() == [1, 2]


def _bad_cases(tmp, tone_hub):
    renamed = write_hub_copy(tmp / "renamed", {"train": as_ids([{"review": "a", "tone": "pos"}], ["pos", "neg", "mid"])},
                             class_label(["pos", "neg", "mid"]))
    unlabelled = write_hub_copy(tmp / "unlabelled", {"train": [{"review": "a", "tone": -1}]}, class_label())
    listed = write_hub_copy(tmp / "listed", {"train": [{"review": ["a", "b"], "tone": "neutral"}]})
    unknown = write_hub_copy(tmp / "unknown", {"train": [{"review": "a", "tone": "neutral"},
                                                         {"review": "b", "tone": "meh"}]})
    (tmp / "a-file").write_text("x")
    one = {"dev": None, "test": None}
    return [
        (hub_task(renamed, hub_splits=one), f"{renamed}:train: column 'tone' holds the classes pos, neg, mid, and "
                                            f"task.labels lists negative, neutral, positive; expected those names (in "
                                            f"any order: crild maps the classes by name)"),
        (hub_task(tone_hub, columns={"label": "tone", "text_a": "body"}),
         f"{tone_hub}:train: no column 'body' (has: review, tone); name the dataset's column in task.columns.text_a"),
        (hub_task(tone_hub, columns={"text_a": "review"}), f"{tone_hub}:train: no column 'label' (has: review, tone); "
                                                           f"name the dataset's column in task.columns.label"),
        (hub_task(tone_hub, hub_splits={"train": "training"}),
         f"{tone_hub} has no split 'training' (has: train, validation, test); set task.hub_splits.train to the split "
         f"crild's train split is"),
        (hub_task(unlabelled, hub_splits=one), f"{unlabelled}:train: every label is -1, the hub's mark of an "
                                               f"unlabelled split; crild trains on a labelled one (task.hub_splits.train)"),
        (hub_task(listed, hub_splits=one), f"{listed}:train: row 1: column 'review' is an array; expected text"),
        (hub_task(unknown, hub_splits=one), f"{unknown}:train: row 2: label 'meh' is not one of negative, neutral, "
                                            f"positive, or their ids 0-2 (task tone)"),
        (hub_task(tmp / "nowhere"), f"task.hub: folder '{tmp / 'nowhere'}' does not exist"),
        (hub_task(tmp / "a-file"), f"task.hub: '{tmp / 'a-file'}' is a file; expected a hub dataset name (owner/name) "
                                   f"or the folder of a local copy of one"),
        (hub_task(tmp), f"could not load the dataset in {tmp} ("),  # a folder of no dataset: datasets' words follow
        # the configuration alone
        ({"name": "sst2", "hub": str(tone_hub)}, "task.hub: task sst2 is built in and reads nyu-mll/glue/sst2 from "
                                                 "the hub; task.hub is for a task of your own"),
        ({**files_task(tmp), "hub_config": "plain"}, "task.hub_config: hub_config is for a task read from a hub "
                                                     "dataset; set task.hub too"),
        (hub_task(tone_hub, data_dir=str(tmp)), f"task.data_dir: task tone reads the hub dataset {tone_hub}; expected "
                                                f"data_dir or hub, not both"),
        (hub_task(tone_hub, source="files"), f"task.source: task tone reads the hub dataset {tone_hub}; expected "
                                             f"source auto or hub, got 'files'"),
        (hub_task(tone_hub, hub_splits={"validation": "dev"}), "unknown key 'task.hub_splits.validation'; valid "
                                                               "keys: train, dev, test"),
        (hub_task(tone_hub, hub_config=""), "task.hub_config: expected a name from the dataset, got an empty string"),
        # a pinned revision: only a commit stays put, and only a hub name has commits
        (hub_task("someone/tones", hub_revision="main"), "task.hub_revision: expected the full commit hash of a "
                                                         "revision of the dataset (40 hex digits, as the hub's history "
                                                         "lists), got 'main': a branch or tag can move"),
        ({**files_task(tmp), "hub_revision": COMMIT_OLD}, "task.hub_revision: hub_revision is for a task read from a "
                                                          "hub dataset; set task.hub too"),
        (hub_task(tone_hub, hub_revision=COMMIT_OLD), f"task.hub_revision: '{tone_hub}' is a local copy, read as it "
                                                      f"is; a revision is for a hub dataset name (owner/name)"),
    ]


CASES = 19


@pytest.mark.parametrize("index", range(CASES))
def test_a_hub_dataset_that_cannot_be_read_as_the_task_is_one_line(index, tone_hub, tmp_path):
    cases = _bad_cases(tmp_path, tone_hub)
    assert len(cases) == CASES
    task, message = cases[index]
    with pytest.raises(UserError) as err:
        read(task)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_task_from_a_hub_dataset_trains_and_scores_under_its_label_names(tone_hub, tmp_path, tiny_bert, capfd):
    raw = tiny_run_config(tmp_path, tiny_bert, tmp_path, epochs=1)
    raw["task"] = {**hub_task(tone_hub), "max_length": 32}
    raw["pipeline"] = ["teacher", "evaluate"]
    (path := tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(SystemExit) as done:
        main(["run", str(path)])
    assert done.value.code == 0, capfd.readouterr().err[-3000:]
    config = json.loads((tmp_path / "run" / "teacher" / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    scores = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())["models"]["teacher"]["splits"]
    assert set(scores) == {"dev", "test"} and all(0 <= s["accuracy"] <= 1 for s in scores.values())


MEH = {"review": "c", "tone": "meh"}
GOOD = [{"review": "a", "tone": "neutral"}, {"review": "b", "tone": "positive"}]


@pytest.mark.parametrize("pipeline, splits, stage, where", [
    # the test split evaluation scores: one line before the teacher trains, as for a file
    (["teacher", "evaluate"], {"train": GOOD * 8, "validation": GOOD, "test": GOOD + [MEH]}, "evaluate", "test: row 3"),
    # the first stage's own split: a file is left to that stage, which reads it at once; a hub
    # dataset is read by `crild run` and `crild submit` first, which on a login node is where the
    # hub can be reached
    (["teacher"], {"train": GOOD * 8 + [MEH], "validation": GOOD}, "teacher", "train: row 17"),
])
def test_a_hub_datasets_splits_are_read_before_the_first_stage(tmp_path, tiny_bert, capfd, pipeline, splits, stage,
                                                              where):
    hub = write_hub_copy(tmp_path / "hub", splits)
    raw = tiny_run_config(tmp_path, tiny_bert, tmp_path, epochs=1)
    raw["task"] = {**hub_task(hub), "max_length": 32}
    raw["pipeline"] = pipeline
    if "evaluate" in pipeline:
        raw["stages"]["evaluate"] = {"splits": ["dev", "test"]}
    (path := tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    capfd.readouterr()  # what writing the dataset printed
    with pytest.raises(SystemExit) as done:
        main(["run", str(path)])
    err = capfd.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and err == [
        f"crild: error: {hub}:{where}: label 'meh' is not one of negative, neutral, positive, or their ids 0-2 "
        f"(task tone) (the {stage} stage reads it; checked before the first stage runs)"]
    assert not (tmp_path / "run" / "teacher").exists()


def test_a_hub_name_not_in_the_datasets_cache_without_a_reachable_hub_is_one_line(tmp_path, tiny_bert):
    raw = tiny_run_config(tmp_path, tiny_bert, tmp_path, epochs=1)
    raw["task"] = {**hub_task("someone/tones"), "max_length": 32}
    (path := tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "teacher", str(path)], cwd=REPO, text=True,
                          capture_output=True, timeout=300,
                          env={**crild_env(), "HF_ENDPOINT": "http://127.0.0.1:9"})  # port 9 refuses connections
    assert done.returncode == 2 and "Traceback" not in done.stderr and "Retrying" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "crild: error: could not load someone/tones from the hub (it is not in the datasets cache, and the hub "
        "(http://127.0.0.1:9) cannot be reached from here (Connection refused)); check task.hub and task.hub_config, "
        "or give task.data_dir a folder of train, dev and test files")


def test_an_edited_shard_of_a_local_copy_changes_what_the_stages_read(tone_files, tmp_path, tiny_bert):
    """The teacher's fingerprint holds every file of the copy (its shards are in data/), so
    an edited shard makes the stage run again; hf download's .cache does not count."""
    from pipeline.stages import stage_fingerprint

    rows = as_ids(tone_rows(tone_files, "train"))
    hub = write_hub_copy(tmp_path / "hub", {"train": rows, "validation": rows}, class_label())
    raw = tiny_run_config(tmp_path, tiny_bert, tmp_path)
    raw["task"] = hub_task(hub)

    def fingerprint():
        return stage_fingerprint(from_dict(raw), "teacher")

    before = fingerprint()
    (hub / ".cache" / "huggingface").mkdir(parents=True)
    (hub / ".cache" / "huggingface" / "download.metadata").write_text("when it was fetched")
    assert fingerprint() == before
    write_hub_copy(hub, {"train": rows[1:]}, class_label())
    assert fingerprint() != before


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """A machine told not to use the hub (HF_HUB_OFFLINE), with a datasets cache of its own."""
    import datasets.config
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(hub_data, "_SPLITS", {})  # the split names of another test's cache
    return tmp_path / "datasets"


def test_offline_a_pinned_commit_is_read_from_the_datasets_cache_and_not_the_newest_there(offline, tone_files):
    """load_dataset offline reads the newest commit it cached, whatever revision it is asked
    for; a pin reads its own, splits and rows."""
    rows = as_ids(tone_rows(tone_files, "train"))
    cache_hub_dataset(offline, "someone/tones", COMMIT_OLD, {"train": rows[:8], "validation": rows[8:12]},
                      class_label())
    old = offline / "someone___tones" / "default" / "0.0.0" / COMMIT_OLD
    os.utime(old, (1, 1))  # cached first
    cache_hub_dataset(offline, "someone/tones", COMMIT_NEW, {"train": rows[:6]}, class_label())
    pinned = read(hub_task("someone/tones", hub_revision=COMMIT_OLD))
    assert pinned.text_a == [r["review"] for r in tone_rows(tone_files, "train")[:8]]
    assert read(hub_task("someone/tones", hub_revision=COMMIT_OLD), "dev").text_a == [
        r["review"] for r in tone_rows(tone_files, "train")[8:12]]
    newest = read(hub_task("someone/tones"))  # unpinned: the newest cached, and the run says which, to pin it
    assert newest.text_a == pinned.text_a[:6] and newest.notes == [
        f"note: someone/tones is read at commit {COMMIT_NEW} (the newest in the datasets cache); task.hub_revision: "
        f"{COMMIT_NEW} keeps every run on it"]
    assert read(hub_task("someone/tones", hub_revision=COMMIT_NEW)).text_a == pinned.text_a[:6]
    assert pinned.notes == []
    cfg = from_dict({"task": hub_task("someone/tones", hub_revision=COMMIT_NEW)})
    assert available_eval_splits(cfg.task, task_spec(cfg.task)) == []  # that commit has no held-out split


def test_offline_a_pinned_commit_the_cache_cannot_give_is_one_line(offline, tone_files):
    rows = as_ids(tone_rows(tone_files, "train"))[:4]
    cache_hub_dataset(offline, "someone/tones", COMMIT_NEW, {"train": rows}, class_label())
    missing = "1" * 40
    with pytest.raises(UserError) as err:
        read(hub_task("someone/tones", hub_revision=missing))
    assert str(err.value) == (
        f"someone/tones@111111111111 is not in the datasets cache ({offline / 'someone___tones'}; it holds "
        f"bbbbbbbbbbbb), and HF_HUB_OFFLINE is set; load it once where the hub can be reached, or set "
        f"task.hub_revision to a cached commit")
    # two configurations of that commit, and no hub_config to choose between them
    cache_hub_dataset(offline, "someone/tones", COMMIT_NEW, {"train": rows}, class_label(), config="other")
    with pytest.raises(UserError) as err:
        read(hub_task("someone/tones", hub_revision=COMMIT_NEW))
    assert str(err.value) == ("someone/tones@bbbbbbbbbbbb has 2 configurations in the datasets cache (default, "
                              "other); set task.hub_config to one")
    assert read(hub_task("someone/tones", hub_revision=COMMIT_NEW, hub_config="other")).text_a == [
        r["review"] for r in tone_rows(tone_files, "train")[:4]]


def two_commits(cache, tone_files, old_splits=("train", "validation"), new_splits=("train",)):
    """someone/tones at two commits in the datasets cache, the newer cached last: the old
    one's rows are the first 8 of each split, the new one's the first 6 of train."""
    rows = {ours: as_ids(tone_rows(tone_files, ours)) for ours in ("train", "dev")}
    cached = {"train": rows["train"], "validation": rows["dev"]}
    cache_hub_dataset(cache, "someone/tones", COMMIT_OLD, {s: cached[s][:8] for s in old_splits}, class_label())
    os.utime(cache / "someone___tones" / "default" / "0.0.0" / COMMIT_OLD, (1, 1))
    cache_hub_dataset(cache, "someone/tones", COMMIT_NEW, {s: cached[s][:6] for s in new_splits}, class_label())


def test_a_launched_process_reads_the_dataset_commit_its_launcher_read(offline, tone_files, monkeypatch):
    """What a stage of ``crild run`` (or a job of ``crild submit``) sees: the commit its
    launcher read an unpinned hub dataset at, though a newer one is there, and no note."""
    from pipeline.runtime import hub

    two_commits(offline, tone_files)
    train = [r["review"] for r in tone_rows(tone_files, "train")]
    assert read(hub_task("someone/tones")).text_a == train[:6]  # the launcher: the newest, recorded
    assert hub.commits_read() == {"CRILD_HUB_DATASET_COMMITS": f"someone/tones@{COMMIT_NEW}"}

    monkeypatch.setenv("CRILD_HUB_DATASET_COMMITS", f"other/set@{COMMIT_NEW} someone/tones@{COMMIT_OLD}")
    monkeypatch.setattr(hub, "_read", {kind: {} for kind in hub.COMMITS_ENV})  # a process of its own
    hub.handed_down.cache_clear()
    monkeypatch.setattr(hub_data, "_SPLITS", {})
    got = read(hub_task("someone/tones"))
    assert got.text_a == train[:8] and got.notes == []  # the launcher said which commit
    assert read(hub_task("someone/tones"), "dev").text_a == [r["review"] for r in tone_rows(tone_files, "dev")[:8]]
    assert hub.commits_read() == {"CRILD_HUB_DATASET_COMMITS": f"other/set@{COMMIT_NEW} someone/tones@{COMMIT_OLD}"}
    # a pin in the configuration is read as it is, whatever was handed down
    assert read(hub_task("someone/tones", hub_revision=COMMIT_NEW)).text_a == train[:6]


def test_the_checks_before_the_first_stage_say_the_dataset_commit_once_and_hand_it_down(offline, tone_files, capsys):
    from pipeline.launch.preflight import _check_data_read_later
    from pipeline.runtime import hub

    two_commits(offline, tone_files, new_splits=("train", "validation"))
    cfg = from_dict({"task": {**hub_task("someone/tones"), "max_length": 32}, "pipeline": ["teacher", "evaluate"]})
    _check_data_read_later(cfg, cfg.pipeline)  # train and dev, read for both stages
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("crild:")] == [
        f"crild: note: someone/tones is read at commit {COMMIT_NEW} (the newest in the datasets cache); "
        f"task.hub_revision: {COMMIT_NEW} keeps every run on it"]
    assert hub.commits_read() == {"CRILD_HUB_DATASET_COMMITS": f"someone/tones@{COMMIT_NEW}"}


def test_a_hub_name_trains_from_the_datasets_cache_where_the_hub_cannot_be_reached(tmp_path, tiny_bert, tone_files):
    """A Slurm job on a compute node without network: the commit ``crild submit`` read on the
    login node (handed down, not pinned) is in the (shared) datasets cache beside a newer one,
    and every stage reads it, without retrying the hub first."""
    cache = tmp_path / "datasets"
    two_commits(cache, tone_files)  # only the older commit has a dev split ('validation')
    raw = tiny_run_config(tmp_path, tiny_bert, tmp_path, epochs=1)
    raw["task"] = {**hub_task("someone/tones"), "max_length": 32}
    raw["pipeline"] = ["teacher", "evaluate"]
    (path := tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(path)], cwd=REPO, text=True,
                          capture_output=True, timeout=600,
                          env=crild_env(HF_ENDPOINT="http://127.0.0.1:9", HF_DATASETS_CACHE=str(cache),
                                        CRILD_HUB_DATASET_COMMITS=f"someone/tones@{COMMIT_OLD}"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Retrying" not in done.stderr and "is read at commit" not in done.stdout + done.stderr
    assert json.loads((tmp_path / "run" / "teacher" / "train_results.json").read_text())["train_examples"] == 8
    scores = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())["models"]["teacher"]["splits"]
    assert set(scores) == {"dev"} and 0 <= scores["dev"]["accuracy"] <= 1


def test_another_pinned_commit_makes_the_stages_run_again(tmp_path, tiny_bert):
    from pipeline.stages import stage_fingerprint

    raw = tiny_run_config(tmp_path, tiny_bert, tmp_path)
    prints = {rev: stage_fingerprint(from_dict({**raw, "task": hub_task("someone/tones", hub_revision=rev)}),
                                     "teacher") for rev in (None, COMMIT_OLD, COMMIT_NEW)}
    assert len(set(prints.values())) == 3


def test_a_datasets_text_under_its_own_name_is_found_and_noted(tone_hub):
    """A dataset whose text column is not named (``review`` here, the hub's IMDB ``text``) is
    read from its one column besides the label, as from a file, with the same note."""
    named = read(hub_task(tone_hub))
    found = read(hub_task(tone_hub, columns={"label": "tone"}))
    assert found.text_a == named.text_a and found.labels.tolist() == named.labels.tolist()
    assert found.notes == ["note: task: no column 'sentence': the text is read from column 'review', the one column "
                           "besides the label; task.columns.text_a names other columns"]
