"""Fixtures shared by every test (the helpers they use are in helpers.py)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from helpers import FAMILY_TOKENIZERS, write_sentiment_task, write_tiny_bert, write_tiny_classifier, write_tiny_family

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if not torch.cuda.is_available():  # on a GPU machine DeepSpeed must pick CUDA, as the NCCL group does
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # pytest-xdist workers share the CPUs, not each take them all
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


def pytest_collection_modifyitems(items):
    """Files with the most slow tests first, each file's tests in their order: pytest-xdist
    (``--dist loadfile``) hands whole files to workers in this order, and a long file handed
    out last would be the suite's tail, with the other workers idle."""
    slow: dict = {}
    for item in items:
        slow[item.path] = slow.get(item.path, 0) + (item.get_closest_marker("slow") is not None)
    items.sort(key=lambda item: -slow[item.path])  # stable: the order within a file is kept


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_teacher(tiny_bert, tmp_path_factory) -> Path:
    """tiny_bert as a sentiment classifier: a teacher whose logits can be distilled."""
    return write_tiny_classifier(tiny_bert, tmp_path_factory.mktemp("models") / "tiny-teacher")


@pytest.fixture(scope="session")
def sentiment_dir(tmp_path_factory) -> Path:
    return write_sentiment_task(tmp_path_factory.mktemp("data") / "sentiment")


@pytest.fixture(scope="session")
def family_models(tmp_path_factory) -> dict:
    """model_type -> folder of a tiny 4-layer encoder of each supported family."""
    root = tmp_path_factory.mktemp("families")
    return {mt: write_tiny_family(root / mt, mt) for mt in sorted(FAMILY_TOKENIZERS)}


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Tokenized caches go to a per-session folder, not the user's; so do the datasets library's
    (a local copy of a hub dataset is read through it)."""
    monkeypatch.setenv("CRILD_HOME", str(tmp_path_factory.getbasetemp() / "crild_home"))
    datasets_cache = tmp_path_factory.getbasetemp() / "hf_datasets"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(datasets_cache))
    if "datasets" in sys.modules:  # it read the variable when imported
        monkeypatch.setattr(sys.modules["datasets"].config, "HF_DATASETS_CACHE", datasets_cache)


@pytest.fixture(autouse=True)
def no_handed_down_commits(monkeypatch):
    """Each test starts as a command the user typed: no hub commits handed down to it, and
    none recorded by an earlier test's reads in this process to hand on."""
    from pipeline.runtime import hub

    for env in hub.COMMITS_ENV.values():
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setattr(hub, "_read", {kind: {} for kind in hub.COMMITS_ENV})
    hub.handed_down.cache_clear()
    yield
    hub.handed_down.cache_clear()
