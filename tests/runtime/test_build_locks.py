"""A build lock left by an interrupted DeepSpeed op build is named in one line instead of
hanging every later run; a lock that a live process holds is waited for."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import REPO, crild_env, tiny_run_config

from pipeline.errors import UserError
from pipeline.runtime import build_locks


def make_lock(root, op="deepspeed_shm_comm"):
    lock = root / op / "lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    return lock


def test_no_root_or_no_lock_returns_at_once(tmp_path):
    build_locks.check_build_locks(tmp_path / "missing")
    (tmp_path / "deepspeed_shm_comm").mkdir()
    build_locks.check_build_locks(tmp_path, recheck_s=60)  # would sleep a minute if it looked twice


def test_a_lock_no_process_holds_is_named(tmp_path):
    lock = make_lock(tmp_path)
    with pytest.raises(UserError) as exc:
        build_locks.check_build_locks(tmp_path, recheck_s=0.01, confirm_s=0.05)
    assert str(exc.value).startswith(f"{lock}: a build lock left by an interrupted build of DeepSpeed's "
                                      f"'deepspeed_shm_comm' op")
    assert "remove the file and run again" in str(exc.value)
    assert lock.exists()  # torch's file: the user removes it


def builder(lock, first: str, then: str, seconds: float) -> subprocess.Popen:
    """A process that opens ``lock``, runs ``first``, says so, sleeps, then runs ``then``
    (FileBaton's steps: hold the lock while building, close it, remove it)."""
    return subprocess.Popen([sys.executable, "-c", (
        "import os, time\n"
        f"fd = os.open({str(lock)!r}, os.O_RDONLY)\n"
        f"{first}\n"
        "print('ready', flush=True)\n"
        f"time.sleep({seconds})\n"
        f"{then}\n")], stdout=subprocess.PIPE, text=True)


def test_a_held_lock_is_waited_for_until_released(tmp_path, capsys):
    """A builder in another process: it holds the lock open, then closes and removes it, as
    torch's FileBaton does."""
    lock = make_lock(tmp_path)
    builder_ = builder(lock, "pass", f"os.close(fd); os.remove({str(lock)!r})", 1.5)
    try:
        assert builder_.stdout.readline().strip() == "ready"
        start = time.monotonic()
        build_locks.check_build_locks(tmp_path, recheck_s=0.05)
        assert time.monotonic() - start > 0.5 and not lock.exists()
    finally:
        builder_.wait(timeout=30)
    assert "waiting for another process to finish building" in capsys.readouterr().err


def test_a_builder_slow_to_remove_its_closed_lock_is_waited_for(tmp_path):
    """FileBaton closes the lock, then removes it. On a loaded machine (64 ranks on two cores)
    a builder may stop seconds between the two; a rank that looked then, and once more a
    second later, called the lock stale and failed the whole stage."""
    lock = make_lock(tmp_path)
    builder_ = builder(lock, "os.close(fd)", f"os.remove({str(lock)!r})", 2)
    try:
        assert builder_.stdout.readline().strip() == "ready"
        build_locks.check_build_locks(tmp_path, recheck_s=0.05, confirm_s=4)
        assert not lock.exists()
    finally:
        builder_.wait(timeout=30)


def test_a_holder_whose_other_files_close_while_looked_at_still_holds(tmp_path):
    """A process's open files change while /proc is read: one that closes (readlink fails)
    must not hide the lock among the others."""
    lock = make_lock(tmp_path)
    fds = tmp_path / "proc" / "4242" / "fd"
    fds.mkdir(parents=True)
    (tmp_path / "proc" / "self" / "fd").mkdir(parents=True)
    for n in range(30):
        (fds / str(n)).write_text("")  # not a link: readlink fails, as for a file closed meanwhile
    (fds / "30").symlink_to(lock)
    assert build_locks.held_open(lock, tmp_path / "proc") is True


def test_held_open_sees_this_process(tmp_path):
    path = tmp_path / "f"
    path.write_text("")
    assert build_locks.held_open(path) is False
    with open(path):
        assert build_locks.held_open(path) is True


def test_without_proc_the_lock_age_decides(tmp_path):
    lock = make_lock(tmp_path)
    no_proc = tmp_path / "no-proc"
    now = lock.stat().st_mtime
    assert build_locks.held_open(lock, no_proc) is None
    assert not build_locks.is_stale(lock, no_proc, now=now + 60)
    assert build_locks.is_stale(lock, no_proc, now=now + build_locks.STALE_AFTER_S + 1)
    os.utime(lock, (now - build_locks.STALE_AFTER_S - 10,) * 2)
    with pytest.raises(UserError, match="no process holds it"):
        build_locks.check_build_locks(tmp_path, proc=no_proc, recheck_s=0.01, confirm_s=0.05)


def test_the_root_follows_torch(monkeypatch, tmp_path):
    from torch.utils.cpp_extension import _get_build_directory

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert build_locks.extensions_root() == tmp_path
    assert _get_build_directory("op", verbose=False) == str(tmp_path / "op")
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    monkeypatch.setattr("torch.utils.cpp_extension.get_default_build_root", lambda: str(tmp_path / "default"))
    root = build_locks.extensions_root()
    assert root.parent == tmp_path / "default"
    assert _get_build_directory("op", verbose=False) == str(root / "op")


def test_a_stage_with_a_stale_lock_stops_in_one_line(tmp_path, tiny_bert, sentiment_dir):
    """The whole path: a stage that would have hung in DeepSpeed's start-up exits 2."""
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_run_config(tmp_path, tiny_bert, sentiment_dir)))
    lock = make_lock(tmp_path / "extensions")
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "teacher", str(config)], capture_output=True,
                          text=True, timeout=300, cwd=REPO,
                          env=crild_env(TORCH_EXTENSIONS_DIR=str(tmp_path / "extensions")))
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and last.startswith(f"crild: error: {lock}: a build lock"), last
    assert not (tmp_path / "run" / "teacher").exists()


def _builds(config_name: str) -> bool:
    """Whether a shipped DeepSpeed config has DeepSpeed compile an op on a CPU: ZeRO-Offload's
    DeepSpeedCPUAdam; the others take torch's Adam."""
    return "offload_optimizer" in (REPO / "ds_configs" / config_name).read_text()


SHIPPED = sorted(p.name for p in (REPO / "ds_configs").glob("*.json"))


def _teacher_with_unwritable_build_folder(tmp_path, tiny_bert, sentiment_dir, ds_config: Path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**tiny_run_config(tmp_path, tiny_bert, sentiment_dir, epochs=1),
                                      "deepspeed_config": str(ds_config)}))
    (tmp_path / "a-file").write_text("")
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "teacher", str(config)], capture_output=True,
                          text=True, timeout=300, cwd=REPO, env=crild_env(TORCH_EXTENSIONS_DIR=str(tmp_path / "a-file")))


@pytest.mark.parametrize("ds_config, op", [("deepspeed-adamw", "fused_adam")] + [
    (name, "cpu_adam") for name in SHIPPED if _builds(name)])
def test_a_build_folder_deepspeed_cannot_write_is_one_line(tmp_path, tiny_bert, sentiment_dir, ds_config, op):
    """TORCH_EXTENSIONS_DIR naming a file (or a read-only home on a compute node): DeepSpeed's
    build of its own AdamW (a config without torch_adam), or of ZeRO-Offload's CPU Adam (which
    DeepSpeed reports as its own RuntimeError), fails in os.makedirs; crild names the folder."""
    path = REPO / "ds_configs" / ds_config
    if ds_config == "deepspeed-adamw":
        path = tmp_path / "deepspeed_adamw.json"
        path.write_text(json.dumps({"optimizer": {"type": "AdamW", "params": {}}, "zero_optimization": {"stage": 0}}))
    proc = _teacher_with_unwritable_build_folder(tmp_path, tiny_bert, sentiment_dir, path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"crild: error: {tmp_path}/a-file/{op}: DeepSpeed builds its ops under {tmp_path}/a-file and "
        f"cannot write there (Not a directory); set TORCH_EXTENSIONS_DIR to a writable folder")
    assert not (tmp_path / "run" / "teacher").exists()
