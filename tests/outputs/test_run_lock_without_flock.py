"""The run lock on a file system without flock (Lustre mounted ``noflock``, NFS without a
lock manager), where flock fails with ENOSYS or ENOLCK: the lock becomes a file created
exclusively. The file systems here all have flock, so the processes under test get a seccomp
filter that makes the kernel refuse the flock call exactly as such a file system does."""
import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import yaml
from helpers import REPO, crild_env, deny_flock, tiny_run_config

from pipeline.outputs.lock import HELD_FILE, RunLock, _ended, _process_start, holder

HOLD = ("import sys; from pipeline.outputs.lock import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); sys.stdin.read(); lock.release(); print('released', flush=True)")


def _seccomp_works() -> bool:
    probe = "import fcntl, os; fcntl.flock(os.open('/', os.O_RDONLY), fcntl.LOCK_SH)"
    try:
        done = subprocess.run([sys.executable, "-c", probe], preexec_fn=deny_flock, capture_output=True, text=True)
    except subprocess.SubprocessError:
        return False
    return "Errno 38" in done.stderr


pytestmark = pytest.mark.skipif(not _seccomp_works(), reason="seccomp filters are not permitted here")


def hold(output_dir, **env) -> subprocess.Popen:
    """A process holding the run lock of ``output_dir`` without flock, until its stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(output_dir)], cwd=REPO, env=crild_env(**env),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=deny_flock)
    line = proc.stdout.readline()
    assert line == "held\n", proc.stderr.read()
    return proc


def crild(*args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, env=crild_env(**env),
                          capture_output=True, text=True, timeout=120, preexec_fn=deny_flock)


@pytest.fixture
def config(tmp_path, tiny_bert, sentiment_dir):
    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
    raw["pipeline"] = ["teacher"]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_lock_is_a_held_file_that_refuses_a_second_run_and_goes_on_release(tmp_path, config):
    out = tmp_path / "run"
    first = hold(out)
    try:
        info = json.loads((out / HELD_FILE).read_text())
        assert info["pid"] == first.pid and info["host"] == socket.gethostname()
        assert info["start"] == _process_start(first.pid)
        assert holder(out)["pid"] == first.pid  # crild status's view, with or without flock

        second = crild("run", str(config))
        assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
        assert second.stderr.strip().splitlines()[-1].startswith(
            f"crild: error: {out}: another crild run is using this output_dir (pid {first.pid} on "
            f"{socket.gethostname()} since ")
        assert not (out / "teacher").exists()
        status = crild("status", str(config))
        assert f"in use by pid {first.pid}" in status.stdout, status.stdout + status.stderr
    finally:
        stdout, stderr = first.communicate("", timeout=60)
    assert "this file system does not support flock (Function not implemented); holding the run lock as " \
           f"{out / HELD_FILE} instead" in stderr
    assert stdout == "released\n" and not (out / HELD_FILE).exists() and holder(out) is None


def test_a_holder_killed_on_this_host_is_taken_over(tmp_path):
    out = tmp_path / "run"
    first = hold(out)
    first.send_signal(signal.SIGKILL)  # no release: the held file stays
    first.wait(timeout=30)
    assert (out / HELD_FILE).exists() and holder(out) is None
    second = hold(out)
    second.stdin.close()
    second.wait(timeout=60)
    stderr = second.stderr.read()
    assert f"{out / HELD_FILE}: left by pid {first.pid} on {socket.gethostname()}" in stderr
    assert "which has ended; taking it over" in stderr
    assert not (out / HELD_FILE).exists()


def test_a_pid_given_to_a_later_process_does_not_keep_a_dead_holders_lock():
    alive = {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid())}
    assert not _ended(alive)
    assert _ended({**alive, "start": str(int(alive["start"]) + 1)})  # the same pid, started at another time
    assert not _ended({**alive, "host": "another-node"})  # cannot be told from here


def test_another_hosts_file_is_named_for_removal_unless_an_earlier_run_of_this_slurm_job_left_it(tmp_path, config):
    out = tmp_path / "run"
    out.mkdir()
    left = {"pid": 4242, "host": "node-b", "since": "2026-11-30T01:02:03", "stage": "distill",
            "slurm_job": "77", "slurm_restart": "0"}
    (out / HELD_FILE).write_text(json.dumps(left))

    refused = crild("run", str(config))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        f"crild: error: {out}: another crild run is using this output_dir (pid 4242 on node-b since "
        f"2026-11-30T01:02:03, running distill), according to {out / HELD_FILE}; its file system has no flock, "
        f"so a run killed on another host leaves that file behind: if no crild run is using this output_dir, "
        f"remove it")
    # the same job, requeued: Slurm ended its earlier run before starting this one
    requeued = hold(out, SLURM_JOB_ID="77", SLURM_RESTART_COUNT="1")
    try:
        info = json.loads((out / HELD_FILE).read_text())
        assert info["pid"] == requeued.pid and info["slurm_job"] == "77" and info["slurm_restart"] == "1"
    finally:
        requeued.communicate("", timeout=60)
    assert not (out / HELD_FILE).exists()


def test_with_flock_back_a_file_left_by_an_ended_holder_is_removed(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / HELD_FILE).write_text(json.dumps({"pid": 2**22 + 1, "host": socket.gethostname()}))
    lock = RunLock(out).acquire()
    try:
        assert not (out / HELD_FILE).exists() and holder(out)["pid"] == os.getpid()
    finally:
        lock.release()
