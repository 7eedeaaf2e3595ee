"""A full disk is one line: a training stage refuses to start when the next checkpoint and
its output cannot fit, a write that fails for want of space anyway (deep inside torch's
checkpoint writer) ends in one line naming the folder, and the same command resumes once
there is room. A read-only one is one line too, or no error where what crild keeps there
is a cache. The end-to-end checks use a real small tmpfs (skipped where mounting is not
permitted)."""
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import REPO, crild_env, tiny_run_config

from pipeline import errors as disk_space
from pipeline.config import TrainConfig
from pipeline.data.tasks import TASKS
from pipeline.models.loading import build_classifier
from pipeline.outputs.manifest import is_complete


@pytest.fixture
def no_watched(monkeypatch):
    monkeypatch.setattr(disk_space, "_watched", [])


def test_the_chain_of_a_failed_write_says_whether_the_disk_was_full(no_watched, tmp_path):
    full = OSError(errno.ENOSPC, "No space left on device", "/data/run/checkpoints/step1/model.pt")
    assert disk_space.out_of_space(full).startswith("/data/run/checkpoints/step1: no space left on its file system")
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as quota:
            raise RuntimeError("could not write the shard") from quota
    except RuntimeError as wrapped:
        message = disk_space.out_of_space(wrapped)
    assert message.startswith("a file system is full (RuntimeError: could not write the shard)")
    assert "run the same command again" in message
    # a library that keeps only the operating system's words
    assert disk_space.out_of_space(ValueError("IO error: No space left on device (os error 28)")) is not None
    assert disk_space.out_of_space(ValueError("shapes do not match")) is None
    assert disk_space.out_of_space(OSError(errno.ENOENT, "No such file", "x")) is None
    disk_space.watch(tmp_path)  # a watched folder with room: an ordinary bug keeps its traceback
    assert disk_space.out_of_space(RuntimeError("unexpected pos 19584 vs 19478")) is None


def test_sizes_and_free_space_read_as_a_user_would(tmp_path):
    assert [disk_space.size_text(n) for n in (0, 1023, 1024, 5 * 2**20 + 2**19, 3 * 2**40)] == \
        ["0 bytes", "1023 bytes", "1.0 KiB", "5.5 MiB", "3072.0 GiB"]
    # parameter counts to three figures, so the tests' tiny models are not "0.0M" in the tables and cards
    assert [disk_space.count_text(n) for n in (512, 999, 35_104, 999_499, 999_500, 22_713_216, 109_482_240,
                                                1_300_000_000, 12_345_000_000_000)] == \
        ["512", "999", "35.1K", "999K", "1M", "22.7M", "109M", "1.3B", "12345B"]
    # a folder not made yet: its nearest existing parent's file system (other writers may move it a little)
    assert abs(disk_space.free_bytes(tmp_path / "not" / "yet") - shutil.disk_usage(tmp_path).free) < 2**26


@pytest.mark.parametrize("ds_config", ["zero0_fp32.json", "zero2_bf16.json"])
def test_the_checkpoint_estimate_is_a_close_lower_bound(tiny_bert, tmp_path, ds_config):
    """The start-up check refuses only runs that cannot fit: its estimate never exceeds what
    DeepSpeed writes, and stays close to it."""
    from pipeline.runtime.distributed import init_distributed
    from pipeline.training.checkpointing import checkpoint_bytes
    from pipeline.training.ds_config import build_ds_config
    from pipeline.training.engine import build_engine

    init_distributed()
    model = build_classifier(str(tiny_bert), TASKS["rotten_tomatoes"], "student")
    train = TrainConfig(batch_size=4, learning_rate=1e-3)
    engine = build_engine(model, 0.01, build_ds_config(str(REPO / "ds_configs" / ds_config), train, 1, 10, "test",
                                                       "teacher", hidden_size=32))
    ids = torch.randint(7, 50, (4, 10))
    engine.backward(engine(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1, 0, 1])).loss)
    engine.step()  # the optimizer's moments exist only after a step
    engine.save_checkpoint(str(tmp_path), tag="t")
    written = sum(f.stat().st_size for f in (tmp_path / "t").rglob("*") if f.is_file())
    estimate = checkpoint_bytes(engine)
    assert estimate <= written <= 1.6 * estimate, (estimate, written)


@pytest.fixture
def tmpfs(tmp_path):
    """A mount point for a small tmpfs of the size the test asks for (remountable)."""
    point = tmp_path / "small"
    point.mkdir()

    def mount(size: int, remount: bool = False, read_only: bool = False) -> Path:
        opts = f"remount,size={size}" if remount else f"size={size}"
        opts += ",ro" if read_only else ""
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        return point

    yield mount
    subprocess.run(["umount", str(point)], capture_output=True)


def crild(*args):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, env=crild_env(), text=True,
                          capture_output=True, timeout=600)


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_same_command_resumes(tmp_path, tiny_bert, sentiment_dir, tmpfs):
    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir, checkpoint_every=1, keep_checkpoints=2, epochs=1,
                          batch_size=16)
    config = tmp_path / "run.yaml"

    def teacher(output_dir: Path):
        config.write_text(yaml.safe_dump({**raw, "output_dir": str(output_dir)}))
        return crild("teacher", str(config))

    # one checkpoint's real size, on an ordinary disk
    config.write_text(yaml.safe_dump({**raw, "output_dir": str(tmp_path / "measure")}))
    probe = subprocess.run([sys.executable, "-m", "pipeline.cli", "teacher", str(config)], cwd=REPO, text=True,
                           env={**crild_env(), "CRILD_FAULT": "output:1"}, capture_output=True, timeout=600)
    assert probe.returncode != 0  # killed with its output written, not renamed: the checkpoints stay
    tags = list((tmp_path / "measure" / "checkpoints" / "teacher").glob("step*"))
    size = max(sum(f.stat().st_size for f in t.rglob("*") if f.is_file()) for t in tags)

    # too small for one checkpoint: refused before the first step
    small = tmpfs(size // 2)
    done = teacher(small / "run")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert lines[-1].startswith(f"crild: error: {small}/run/checkpoints/teacher: ") and "need at least" in lines[-1]
    assert not list((small / "run" / "checkpoints" / "teacher").glob("step*"))

    # room for the check and one checkpoint, not two: the second save fails inside torch
    tmpfs(int(1.6 * size), remount=True)
    done = teacher(small / "run")
    errors = [line for line in done.stderr.splitlines() if line.startswith("crild: error")]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(errors) == 1 and errors[0].startswith(f"crild: error: {small}/run: no space left on its file system")
    assert "run the same command again" in errors[0]
    assert not is_complete(small / "run" / "teacher")

    # room again: the same command resumes from the last complete checkpoint and finishes
    tmpfs(64 * size, remount=True)
    done = teacher(small / "run")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "was interrupted while saving; removing it" in done.stderr
    assert "teacher: resuming at micro-step 1 of" in done.stderr + done.stdout
    assert is_complete(small / "run" / "teacher")


def test_a_write_renamed_into_place_leaves_nothing_behind_when_it_fails(tmp_path):
    """Every cache and shard crild writes under a temporary name: a failed write (a full
    disk) leaves neither a half-written file nor its temporary to take the space back."""
    from pipeline.outputs.atomic import renamed_into_place

    with pytest.raises(OSError, match="No space"):
        with renamed_into_place(tmp_path / "cache") as tmp:
            tmp.mkdir()
            (tmp / "part").write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []

    with renamed_into_place(tmp_path / "logits.safetensors") as tmp:
        tmp.write_text("first")
    with renamed_into_place(tmp_path / "logits.safetensors") as tmp:
        tmp.write_text("second")  # a file replaces the one there
    with renamed_into_place(tmp_path / "cache") as tmp:
        tmp.mkdir()
        (tmp / "mine").write_text("1")
    with renamed_into_place(tmp_path / "cache") as tmp:  # another run finished the same folder first: theirs stays
        tmp.mkdir()
        (tmp / "late").write_text("2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "logits.safetensors"]
    assert (tmp_path / "logits.safetensors").read_text() == "second"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["mine"]


def test_a_path_the_system_refuses_is_named_in_one_line(no_watched, tmp_path):
    """Permissions and read-only file systems, wherever they are met (a library's mkdir deep
    in a stage), are one line naming the path; an error that names no path, or another
    errno, keeps its traceback as a bug."""
    for code in (errno.EACCES, errno.EPERM, errno.EROFS):
        message = disk_space.no_access(OSError(code, os.strerror(code), "/shared/crild/tokenized/x.arrow"))
        assert message.startswith(f"'/shared/crild/tokenized/x.arrow': {os.strerror(code)}; crild cannot use it")
    try:
        try:
            raise PermissionError(errno.EACCES, "Permission denied", "/scratch/hf")
        except OSError as denied:
            raise RuntimeError("could not cache the model") from denied
    except RuntimeError as wrapped:
        assert disk_space.no_access(wrapped).startswith("'/scratch/hf': Permission denied;")
    assert disk_space.no_access(PermissionError(errno.EPERM, "Operation not permitted")) is None  # os.kill's
    (tmp_path / "a-file").write_text("x")  # a file where a folder must be, met deep inside a library
    under = tmp_path / "a-file" / "logs" / "teacher"
    with pytest.raises(NotADirectoryError) as raised:
        under.mkdir(parents=True)
    assert disk_space.no_access(raised.value) == (f"'{under}': '{tmp_path}/a-file' is a file, where crild needs a "
                                                  f"folder of that name: move the file, or point the setting or "
                                                  f"variable that leads there elsewhere")
    assert disk_space.not_a_folder(tmp_path / "a-file") == "is a file, not a folder"
    assert disk_space.not_a_folder(under) == f"is under '{tmp_path}/a-file', a file"
    assert disk_space.not_a_folder(tmp_path / "new" / "folder") is None and disk_space.not_a_folder(tmp_path) is None
    assert disk_space.no_access(OSError(errno.ENOENT, "No such file", "x")) is None
    assert disk_space.no_access(ValueError("Permission denied")) is None


@pytest.mark.slow
def test_a_read_only_crild_home_costs_the_cache_not_the_run(tmp_path, tiny_bert, sentiment_dir, tmpfs):
    """A CRILD_HOME shared read-only (the offline data prepared once for a group) runs the
    teacher and a KD distillation: the tokenized data and the teacher's logits beside it,
    caches, are built in memory with one note per stage (the distillation's logits were an
    IndexError for want of a cache folder). Preparing the offline data there is one line,
    where a traceback of the first mkdir ended it."""
    home = tmpfs(2**20, read_only=True)
    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir, epochs=1)
    raw["pipeline"] = ["teacher", "distill"]
    raw["stages"]["distill"] = {"preset": "kd", "kd": {"epochs": 1, "batch_size": 8}}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = crild_env(CRILD_HOME=str(home))
    for stage in ("teacher", "distill"):
        done = subprocess.run([sys.executable, "-m", "pipeline.cli", stage, str(config)], cwd=REPO, env=env,
                              text=True, capture_output=True, timeout=600)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
        notes = [line for line in (done.stdout + done.stderr).splitlines() if "tokenized-data cache" in line]
        assert notes == [f"crild: note: the tokenized-data cache {home}/tokenized cannot be written (Read-only file "
                         f"system); tokenizing in memory, anew in each stage (set CRILD_HOME to a folder you can "
                         f"write to keep it)"]
    assert is_complete(tmp_path / "run" / "teacher") and is_complete(tmp_path / "run" / "student")
    assert not list(home.iterdir())
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "prepare-data"], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=600)
    assert done.returncode == 2 and done.stdout == "", done
    assert done.stderr == (f"crild: error: CRILD_HOME: cannot create '{home}/data' (Read-only file system); crild "
                           f"prepares the offline tasks there: set CRILD_HOME to a folder you can write\n")
