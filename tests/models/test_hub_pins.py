"""A model given by hub name resolves to the hub cache's folder of one commit: the hub's main
(the stage names the commit it read, and how to stay on it) or the commit pinned with
``owner/name@<commit>``, which later commits on the hub do not move, online or offline. The
hub is a real HTTP server on 127.0.0.1 (tests/fake_hub.py) that huggingface_hub downloads
from; offline is an address that refuses connections."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from fake_hub import NEW, OLD, fake_hub, newer_copy
from helpers import REPO, crild_env, tiny_run_config, write_tiny_classifier
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file

from pipeline.errors import UserError
from pipeline.models.hub_models import COMMITS_ENV, split_pin
from pipeline.models.loading import resolve_model
from pipeline.runtime import hub

REPO_ID = "crild-test/tiny-bert"
UNREACHABLE = "http://127.0.0.1:9"  # port 9 refuses connections


@pytest.fixture
def history(tmp_path, tiny_bert):
    return {REPO_ID: [(OLD, tiny_bert), (NEW, newer_copy(tiny_bert, tmp_path / "newer"))]}


@pytest.fixture
def hub_at(tmp_path, monkeypatch):
    """Point this process's huggingface_hub at ``endpoint`` with an empty cache of its own."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "_went_offline", False)

    from pipeline.models.hub_models import _hub_main  # (no commits handed down: conftest's no_handed_down_commits)

    def point(endpoint: str) -> None:
        _hub_main.cache_clear()  # the commit main was at, on another hub
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)  # both read HF_ENDPOINT when imported
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        hub.unreachable.cache_clear()
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hub, "_went_offline", False)

    yield point
    hub.unreachable.cache_clear()
    _hub_main.cache_clear()


def same_weights(folder, source) -> bool:
    read, expected = load_file(Path(folder) / "model.safetensors"), load_file(Path(source) / "model.safetensors")
    return read.keys() == expected.keys() and all(torch.equal(read[k], expected[k]) for k in read)


def test_a_pinned_commit_is_read_though_main_has_moved_online_and_offline(history, hub_at, capsys):
    with fake_hub(history) as (endpoint, requests):
        hub_at(endpoint)
        main = resolve_model(REPO_ID, "teacher.model")
        pinned = resolve_model(f"{REPO_ID}@{OLD}", "student.backbone")
        asked = list(requests)
        assert resolve_model(REPO_ID, "teacher.model") == main  # read again in this process: the same commit,
        assert requests == asked  # from the cache, and the hub is not asked again
    assert Path(main).name == NEW and same_weights(main, history[REPO_ID][1][1])
    assert Path(pinned).name == OLD and same_weights(pinned, history[REPO_ID][0][1])
    assert requests.count(f"GET /api/models/{REPO_ID}/revision/main") == 1  # main is asked for, once
    assert not any(r.endswith(f"/revision/{OLD}") for r in requests)  # the pin is not
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("crild:")] == [
        f"crild: note: teacher.model: {REPO_ID} is read at commit {NEW} (the hub's main); write it as "
        f"{REPO_ID}@{NEW} to keep every run on this commit"]

    hub_at(UNREACHABLE)  # a compute node: both from the cache, the pin still the older commit
    assert resolve_model(f"{REPO_ID}@{OLD}", "student.backbone") == pinned
    assert resolve_model(REPO_ID, "stages.evaluate.models") == main
    assert "(main in the Hugging Face cache)" in capsys.readouterr().err


def test_a_launched_process_reads_the_commit_its_launcher_read_though_main_moved(history, hub_at, monkeypatch,
                                                                                  capsys):
    """What a stage of ``crild run`` sees: the commit the run's checks read is handed down,
    read again without asking the hub for main, and not said again."""
    with fake_hub(history) as (endpoint, requests):
        hub_at(endpoint)
        resolve_model(f"{REPO_ID}@{OLD}", "student.backbone")  # a pin is not handed down: the stage has it
        assert hub.commits_read() == {}
        main = resolve_model(REPO_ID, "teacher.model")
        assert hub.commits_read() == {COMMITS_ENV: f"{REPO_ID}@{NEW}"}
        capsys.readouterr()

        # a process of its own, launched by one that read main when it was the older commit
        from pipeline.models import hub_models

        monkeypatch.setenv(COMMITS_ENV, f"{REPO_ID}@{OLD}")
        monkeypatch.setattr(hub, "_read", {kind: {} for kind in hub.COMMITS_ENV})
        hub.handed_down.cache_clear()
        hub_models._hub_main.cache_clear()
        asked = len(requests)
        assert Path(resolve_model(REPO_ID, "teacher.model")).name == OLD != Path(main).name
        assert not any("/revision/main" in r for r in requests[asked:])
        assert "is read at commit" not in capsys.readouterr().err
        assert hub.commits_read() == {COMMITS_ENV: f"{REPO_ID}@{OLD}"}  # and handed on as it came

    hub_at(UNREACHABLE)  # a requeued job on a node without network: the handed-down commit, from the cache
    assert Path(resolve_model(REPO_ID, "teacher.model")).name == OLD


@pytest.mark.parametrize("value", ["crild-test/tiny-bert", f"crild-test/tiny-bert@{OLD[:12]}", "@" + OLD])
def test_a_malformed_list_of_handed_down_commits_is_one_line(value, hub_at, monkeypatch):
    monkeypatch.setenv(COMMITS_ENV, f"other/model@{NEW} {value}")
    hub.handed_down.cache_clear()
    assert one_line(lambda: resolve_model(REPO_ID, "teacher.model")) == (
        f"{COMMITS_ENV}: expected owner/name@<commit> items separated by spaces (crild run sets it for the stages "
        f"it launches), got {value!r}; unset it")


def test_a_name_read_without_weights_downloads_none(history, hub_at):
    """A tokenizer or config read (a random student's backbone) costs no weights download."""
    with fake_hub(history) as (endpoint, requests):
        hub_at(endpoint)
        folder = Path(resolve_model(f"{REPO_ID}@{NEW}", "student.backbone", need_weights=False))
        assert (folder / "config.json").is_file() and not (folder / "model.safetensors").exists()
        assert not any("safetensors" in r for r in requests)
        assert same_weights(resolve_model(f"{REPO_ID}@{NEW}", "student.backbone"), history[REPO_ID][1][1])


def test_the_preflight_downloads_every_hub_models_weights_and_checks_them(history, hub_at, tmp_path, tiny_bert,
                                                                          sentiment_dir):
    """Before the first stage (on the login node, for ``crild submit``): the hub models' weights
    are in the cache that compute nodes without network read, and a cut-short download on the
    hub is refused in one line, before the teacher trains."""
    from pipeline.config import from_dict
    from pipeline.launch.preflight import check_stages

    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
    raw["teacher"], raw["student"]["backbone"] = {"model": REPO_ID}, f"{REPO_ID}@{OLD}"
    raw["stages"]["distill"] = {"preset": "cr-ild"}
    cut = tmp_path / "cut"
    shutil.copytree(tiny_bert, cut)
    (cut / "model.safetensors").write_bytes((tiny_bert / "model.safetensors").read_bytes()[:1000])
    history["crild-test/cut"] = [(NEW, cut)]
    with fake_hub(history) as (endpoint, _):
        hub_at(endpoint)
        check_stages(from_dict(raw), ["teacher", "distill"], world_size=1, device_checks=False)
        snapshots = tmp_path / "hub-cache" / "models--crild-test--tiny-bert" / "snapshots"
        assert all((snapshots / commit / "model.safetensors").is_file() for commit in (OLD, NEW))
        raw["teacher"] = {"model": "crild-test/cut"}
        message = one_line(lambda: check_stages(from_dict(raw), ["teacher", "distill"], world_size=1,
                                                device_checks=False))
    assert message.startswith("teacher.model: cannot load the model in '") and "snapshots" in message
    assert message.endswith("(the teacher stage's; checked before the first stage runs)")


def one_line(call) -> str:
    with pytest.raises(UserError) as err:
        call()
    assert "\n" not in str(err.value)
    return str(err.value)


def test_what_the_hub_or_the_cache_cannot_serve_is_one_line(history, hub_at, tmp_path):
    from huggingface_hub import constants

    missing = "fedcba9876543210fedcba9876543210fedcba98"
    with fake_hub(history) as (endpoint, _):
        hub_at(endpoint)
        assert one_line(lambda: resolve_model(f"{REPO_ID}@main", "teacher.model")) == (
            f"teacher.model: '{REPO_ID}@main': expected a full commit hash after '@' (40 lowercase hex digits, as "
            f"the hub's history lists), got 'main': a branch or tag can move")
        assert one_line(lambda: resolve_model(f"{REPO_ID}@{missing}", "teacher.model")) == (
            f"teacher.model: '{REPO_ID}@{missing}': the hub ({endpoint}) has no commit {missing} of {REPO_ID}")
        assert one_line(lambda: resolve_model("crild-test/nowhere", "teacher.model")) == (
            f"teacher.model: 'crild-test/nowhere' is not a model folder, an offline alias or a model on the hub "
            f"({endpoint}) that this machine may read (a private or gated model needs a token: hf auth login)")
        resolve_model(f"{REPO_ID}@{OLD}", "teacher.model")  # the older commit only, in the cache

    hub_at(UNREACHABLE)
    cache = constants.HF_HUB_CACHE
    why = f"the hub ({UNREACHABLE}) cannot be reached from here (Connection refused)"
    assert one_line(lambda: resolve_model(f"{REPO_ID}@{NEW}", "teacher.model")) == (
        f"teacher.model: the Hugging Face cache ({cache}) holds {REPO_ID} at commit {OLD}, not at commit {NEW}, and "
        f"{why}; download it where there is network (hf download {REPO_ID} --revision {NEW}) or give its folder, "
        f"or pin a cached commit ({REPO_ID}@{OLD})")
    assert one_line(lambda: resolve_model(REPO_ID, "teacher.model")) == (  # pinned downloads leave no main
        f"teacher.model: the Hugging Face cache ({cache}) holds {REPO_ID} at commit {OLD}, without a main to read "
        f"(refs/main), and {why}; download it where there is network (hf download {REPO_ID}) or give its folder, "
        f"or pin a cached commit ({REPO_ID}@{OLD})")


def test_a_changed_pin_changes_what_the_stages_reading_the_model_depend_on(tmp_path, tiny_bert, sentiment_dir):
    from pipeline.config import from_dict
    from pipeline.stages import stage_fingerprint

    def fingerprints(teacher: str, backbone: str) -> dict:
        raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
        raw["teacher"], raw["student"]["backbone"] = {"model": teacher}, backbone
        cfg = from_dict(raw)
        return {stage: stage_fingerprint(cfg, stage) for stage in ("teacher", "augment")}

    pinned = fingerprints(f"{REPO_ID}@{OLD}", f"{REPO_ID}@{OLD}")
    teacher_moved = fingerprints(f"{REPO_ID}@{NEW}", f"{REPO_ID}@{OLD}")
    backbone_moved = fingerprints(f"{REPO_ID}@{OLD}", f"{REPO_ID}@{NEW}")
    assert teacher_moved["teacher"] != pinned["teacher"] and teacher_moved["augment"] == pinned["augment"]
    assert backbone_moved["augment"] != pinned["augment"] and backbone_moved["teacher"] == pinned["teacher"]


@given(repo=st.from_regex(r"[a-z][a-z0-9-]{0,8}(/[a-z][a-z0-9.-]{0,8})?", fullmatch=True),
       revision=st.text(alphabet="0123456789abcdefABCDEFgz-_/ @", max_size=44))
def test_a_model_pin_is_a_full_commit_hash_or_one_line(repo, revision):
    assert split_pin(repo) == (repo, None)
    commit = len(revision) == 40 and all(c in "0123456789abcdef" for c in revision)
    if commit:
        assert split_pin(f"{repo}@{revision}") == (repo, revision)
    else:
        with pytest.raises(ValueError, match=r"expected a full commit hash after '@'.*a branch or tag can move"):
            split_pin(f"{repo}@{revision}")


def test_a_pinned_hub_classifier_exports_whole_and_again_offline(tmp_path, tiny_bert, sentiment_dir):
    """The export stage copies a model's config.json and tokenizer beside its ONNX file: from
    the hub name's folder in the cache, as from any folder. Run again where the hub cannot be
    reached, the same commit is read from the cache."""
    classifier = write_tiny_classifier(tiny_bert, tmp_path / "classifier")
    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
    raw["pipeline"] = ["export"]
    raw["stages"]["export"] = {"models": [f"crild-test/tiny-cls@{OLD}"], "benchmark": {"enabled": False}}
    config = tmp_path / "export.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {**crild_env(), "HF_HUB_CACHE": str(tmp_path / "hub-cache")}

    def export(endpoint: str):
        return subprocess.run([sys.executable, "-m", "pipeline.cli", "export", str(config)], cwd=REPO, text=True,
                              capture_output=True, timeout=600, env={**env, "HF_ENDPOINT": endpoint})

    with fake_hub({"crild-test/tiny-cls": [(OLD, classifier)]}) as (endpoint, _):
        done = export(endpoint)
    assert done.returncode == 0, done.stderr[-3000:]
    out = Path(raw["output_dir"]) / "export"
    rows = json.loads((out / "results.json").read_text())["models"]
    assert {r["model"] for r in rows} == {"tiny-cls"}  # named as the hub names it, without the pin
    assert json.loads((out / "tiny-cls" / "config.json").read_text())["id2label"] == \
        json.loads((classifier / "config.json").read_text())["id2label"]
    assert "is read at commit" not in done.stderr  # pinned: nothing to say

    shutil.rmtree(out)
    done = export(UNREACHABLE)
    assert done.returncode == 0 and "Retrying" not in done.stderr, done.stderr[-3000:]
    assert (out / "tiny-cls" / "config.json").is_file()


def test_every_stage_of_a_run_reads_the_commit_the_run_started_with(tmp_path, tiny_bert, sentiment_dir):
    """A hub others push to during the run: ``crild run`` reads main once, before its first
    stage, says which commit in one note, and its stages read that commit, not a later main."""
    classifier = write_tiny_classifier(tiny_bert, tmp_path / "classifier")
    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
    raw["pipeline"] = ["export"]
    raw["stages"]["export"] = {"models": ["crild-test/tiny-cls"], "benchmark": {"enabled": False}}
    config = tmp_path / "export.yaml"
    config.write_text(yaml.safe_dump(raw))
    cache = tmp_path / "hub-cache"
    history = {"crild-test/tiny-cls": [(OLD, classifier), (NEW, newer_copy(classifier, tmp_path / "newer"))]}
    with fake_hub(history, main_moves=True) as (endpoint, requests):
        done = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(config)], cwd=REPO, text=True,
                              capture_output=True, timeout=600,
                              env={**crild_env(), "HF_HUB_CACHE": str(cache), "HF_ENDPOINT": endpoint})
    assert done.returncode == 0, done.stderr[-3000:]
    assert requests.count("GET /api/models/crild-test/tiny-cls/revision/main") == 1
    assert sorted(p.name for p in (cache / "models--crild-test--tiny-cls" / "snapshots").iterdir()) == [OLD]
    assert (done.stdout + done.stderr).count(f"is read at commit {OLD}") == 1
    assert (Path(raw["output_dir"]) / "export" / "tiny-cls" / "config.json").is_file()
