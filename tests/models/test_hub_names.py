"""A model given by hub name on a machine that cannot reach the hub (a compute node without
network): one in the Hugging Face cache trains offline, one that is not is one line at once,
without transformers' minute of retries; so is a hub dataset not in the datasets cache. The
hub is an address that refuses connections, the cache a real hub-cache layout of a tiny
model."""
import shutil
import subprocess
import sys

import yaml
from helpers import REPO, crild_env, tiny_run_config

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(root, tiny_bert, repo: str):
    """``repo`` in a hub cache under ``root``, as ``hf download`` leaves it."""
    folder = root / f"models--{repo.replace('/', '--')}"
    shutil.copytree(tiny_bert, folder / "snapshots" / COMMIT)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(COMMIT)
    return root


def teacher(tmp_path, tiny_bert, sentiment_dir, model: str, task: dict | None = None, **env):
    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir, epochs=1)
    raw["teacher"] = {"model": model}
    raw["task"] = task or raw["task"]
    config = tmp_path / f"{model.replace('/', '_').replace(' ', '_')}.yaml"
    config.write_text(yaml.safe_dump(raw))
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "teacher", str(config)], cwd=REPO, text=True,
                          capture_output=True, timeout=600, env={**crild_env(), **env})


def test_hub_names_without_a_reachable_hub(tmp_path, tiny_bert, sentiment_dir):
    cache = hub_cache(tmp_path / "hub", tiny_bert, "crild-test/tiny-bert")
    offline = {"HF_HUB_CACHE": str(cache), "HF_ENDPOINT": "http://127.0.0.1:9"}  # port 9 refuses connections

    done = teacher(tmp_path, tiny_bert, sentiment_dir, "crild-test/tiny-bert", **offline)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Retrying" not in done.stderr and "saved" in done.stdout + done.stderr

    done = teacher(tmp_path, tiny_bert, sentiment_dir, "crild-test/not-cached", **offline)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "Retrying" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"crild: error: teacher.model: 'crild-test/not-cached' is not a model folder, an offline alias or in the "
        f"Hugging Face cache ({cache}), and the hub (http://127.0.0.1:9) cannot be reached from here (Connection "
        f"refused); download it where there is network (hf download crild-test/not-cached) or give its folder")

  # HF_HUB_OFFLINE set: tests/models/test_families.py

    # a GLUE task without a data_dir reads the hub's dataset: not in the datasets cache, one line too
    # (after the cached model sent crild offline: the line says why, not that the user asked for it)
    done = teacher(tmp_path, tiny_bert, sentiment_dir, "crild-test/tiny-bert", task={"name": "sst2", "max_length": 32},
                   HF_DATASETS_CACHE=str(tmp_path / "datasets"), **offline)
    assert done.returncode == 2 and "Retrying" not in done.stderr and done.stderr.strip().splitlines()[-1] == (
        "crild: error: could not load nyu-mll/glue/sst2 from the hub (it is not in the datasets cache, and the hub "
        "(http://127.0.0.1:9) cannot be reached from here (Connection refused)); set task.data_dir to a GLUE-format "
        "directory")

    done = teacher(tmp_path, tiny_bert, sentiment_dir, "my model", **offline)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == (
        "crild: error: teacher.model: 'my model' is not a model folder, an offline alias (all-MiniLM-L6-v2, "
        "sentence-transformers/all-MiniLM-L6-v2) or a hub name")


def test_the_hub_probe_goes_through_the_proxy_where_one_is_set(monkeypatch):
    """A cluster that reaches the hub only through HTTPS_PROXY/HTTP_PROXY is not offline: the
    probe connects to the proxy, as the download would."""
    import socket

    from huggingface_hub import constants

    from pipeline.runtime import hub

    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY",
                 "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # refuses connections
    listening = socket.create_server(("127.0.0.1", 0))
    try:
        for proxy, expected in [(None, "Connection refused"), (f"http://127.0.0.1:{listening.getsockname()[1]}", None),
                                ("127.0.0.1:9", "the proxy 127.0.0.1:9: Connection refused")]:
            if proxy:
                monkeypatch.setenv("HTTP_PROXY", proxy)
            hub.unreachable.cache_clear()
            assert hub.unreachable() == expected
        monkeypatch.setenv("HTTPS_PROXY", "https://proxy.example")  # a proxy URL without a port: its scheme's
        assert hub.first_hop("https://huggingface.co") == ("proxy.example", 443, "the proxy proxy.example:443")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # the endpoint exempt: straight to it again
        hub.unreachable.cache_clear()
        assert hub.unreachable() == "Connection refused"
    finally:
        listening.close()
        hub.unreachable.cache_clear()
