"""When one rank of several stops (killed, or failed with its own message), every other rank's
next collective fails. Each survivor says so in one line, and the runner names the signal
behind a launcher's exit code, where each survivor printed gloo's or NCCL's traceback and
the runner said only "exit code 247"."""
import signal
import subprocess
import sys

import pytest
import yaml
from helpers import REPO, crild_env, tiny_run_config

from pipeline.errors import lost_peer
from pipeline.launch.local import ended_by, exit_text

GLOO_RESET = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:26342: "
              "Connection reset by peer. This is typically caused by a remote worker hanging or bugs in the "
              "application. Check the logs of the remote worker before reporting an error. GLHF!")


class DistNetworkError(RuntimeError):
    """Named as torch's, which the rendezvous raises when the store's host is gone."""


@pytest.mark.parametrize("err, says", [
    (RuntimeError(GLOO_RESET), "another rank stopped during a collective (RuntimeError: Read error "
                               "[127.0.0.1]:26342: Connection reset by peer); it failed or was killed first"),
    (DistNetworkError("Failed to recv, got 0 bytes. Connection was likely closed. Did the remote server shutdown "
                      "or crash?"), "another rank stopped during a collective (DistNetworkError: Failed to recv, "
                                    "got 0 bytes)"),
    (RuntimeError("[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 600000ms for "
                  "recv operation to complete"), "a collective waited past CRILD_COLLECTIVE_TIMEOUT_S for another "
                                                 "rank (RuntimeError: Timed out waiting 600000ms"),
])
def test_a_collective_that_lost_a_rank_is_one_line(monkeypatch, err, says):
    monkeypatch.setenv("WORLD_SIZE", "2")
    wrapped = ValueError("while saving")
    wrapped.__cause__ = err  # found anywhere in the chain
    assert lost_peer(err).startswith(says) and lost_peer(wrapped).startswith(says)
    monkeypatch.setenv("WORLD_SIZE", "1")  # one rank has no other to lose: a bug keeps its traceback
    assert lost_peer(err) is None


def test_other_errors_are_not_taken_for_a_lost_rank(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert lost_peer(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x32 and 64x2)")) is None
    assert lost_peer(KeyError("classifier.weight")) is None
    assert lost_peer(RuntimeError("Read timed out while downloading model.safetensors")) is None

    class DistBackendError(RuntimeError):
        pass

    assert lost_peer(DistBackendError("NCCL error: unhandled cuda error")) is None  # NCCL's own fault
    assert lost_peer(DistBackendError("NCCL error: remote process exited or there was a network error")) is not None


@pytest.mark.parametrize("code, sig", [(-9, signal.SIGKILL), (247, signal.SIGKILL), (137, signal.SIGKILL),
                                       (139, signal.SIGSEGV), (-6, signal.SIGABRT), (1, None), (2, None), (75, None),
                                       (255, None)])
def test_exit_codes_name_the_signal_behind_them(code, sig):
    """The deepspeed launcher exits with its rank's negative code (256 - n), srun and shells
    with 128 + n, and a plain child with -n."""
    assert ended_by(code) == sig
    assert exit_text(code).startswith(f"exit code {code}")
    assert (sig is not None) == ("ended by" in exit_text(code))


@pytest.mark.slow
def test_a_killed_rank_is_named_by_its_signal_and_the_survivor_says_one_line(tmp_path, tiny_bert, sentiment_dir):
    raw = tiny_run_config(tmp_path, tiny_bert, sentiment_dir)
    raw.update(pipeline=["teacher"], num_ranks=2)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(config)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**crild_env(), "CRILD_FAULT": "step:3:1"})  # rank 1 dies
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("crild: error")]
    assert errors[0].startswith("crild: error: another rank stopped during a collective ("), errors
    assert errors[-1] == ("crild: error: stage 'teacher' failed with exit code 247: a process of it was ended by "
                          "SIGKILL (the kernel's out-of-memory killer sends it, so does a job's memory limit); see "
                          "the output above")
