"""The two-node path on a real two-node Slurm cluster on this machine
(`tools/local_slurm.sh start --nodes 2`: each slurmd in its own network and UTS namespace):
one rank per node ends bitwise equal to two ranks on one node, a preempted two-node job
resumes to the same weights, a rank killed on one node ends the job naming the stage and
the node and cancels a `crild submit` chain's dependents, and `crild submit` gives each
stage its own node count."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import REPO, crild_env
from slurm_jobs import (
    DISTILL,
    chain_config,
    completed_chain,
    preempted_during_ild,
    sbatch_tiny,
    state,
    submit,
    submitted,
    wait,
)

PREFIX, SUBNET, PORT = "crildt", "10.213.9", "6837"  # beside the single-node cluster CI starts
CLUSTER = {"CRILD_SLURM_DIR": "/tmp/crild-slurm-test2n", "CRILD_SLURM_PREFIX": PREFIX,
           "CRILD_SLURM_SUBNET": SUBNET, "CRILD_SLURM_PORT": PORT}


def _namespaces_work() -> bool:
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "unshare", "nsenter")):
        return False
    probe = f"crild-probe-{os.getpid()}"
    ok = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ok


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("CRILD_SKIP_SLURM") == "1", reason="CRILD_SKIP_SLURM=1"),
              pytest.mark.skipif(not _namespaces_work(), reason="needs root and network namespaces")]


def cluster(command: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "tools" / "local_slurm.sh"), command, *args], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, **CLUSTER))


@pytest.fixture(scope="module")
def two_nodes():
    proc = cluster("start", "--nodes", "2")
    assert proc.returncode == 0, proc.stderr
    env = crild_env(SLURM_CONF=f"{CLUSTER['CRILD_SLURM_DIR']}/slurm.conf", CRILD_PYTHON=sys.executable)
    env.pop("CRILD_HOME", None)
    yield env
    proc = cluster("stop")
    assert proc.returncode == 0, proc.stderr
    # stop removes everything it made: namespaces, links, daemons, files
    assert PREFIX not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"{PREFIX}-br" not in subprocess.run(["ip", "link", "show"], capture_output=True, text=True).stdout
    assert not Path(CLUSTER["CRILD_SLURM_DIR"]).exists()


TWO_NODES = ("--nodes=2", "--ntasks-per-node=1")


def weights(folder: Path) -> bytes:
    return (folder / "student" / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def across_nodes(tmp_path_factory, tiny_bert, sentiment_dir, two_nodes):
    tmp = tmp_path_factory.mktemp("two_nodes")
    return tmp, completed_chain(tmp, tiny_bert, sentiment_dir, "across", two_nodes, *TWO_NODES)


def test_a_preempted_two_node_job_resumes_to_the_same_weights(across_nodes, tiny_bert, sentiment_dir, two_nodes):
    tmp, _ = across_nodes
    config = chain_config(tmp, tiny_bert, sentiment_dir, "preempted", stages=DISTILL,
                          teacher_model=str(tmp / "across" / "teacher"))  # the across job's, distilled again
    log = tmp / "preempted.log"
    text = preempted_during_ild(sbatch_tiny(config, log, two_nodes, *TWO_NODES), log, two_nodes)
    assert f"on {PREFIX}-n[1-2] start" in text and text.count("2 ranks on 2 nodes") >= 2  # distill before and after
    assert weights(tmp / "preempted") == weights(tmp / "across")


def _rank_pids(node: str, script: str) -> list[int]:
    """The processes of ``script`` running in ``node``'s network namespace."""
    pids = subprocess.run(["ip", "netns", "pids", node], capture_output=True, text=True).stdout.split()
    out = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if script in cmdline and "srun" not in cmdline:
            out.append(int(pid))
    return out


def test_a_rank_killed_on_one_node_ends_the_chain_naming_stage_and_node(tmp_path, across_nodes, tiny_bert,
                                                                         sentiment_dir, two_nodes):
    """`crild submit` with distillation on two nodes: SIGKILL to the rank on the second node
    fails that stage within a bounded time, names it and the node, and cancels evaluation."""
    config = chain_config(tmp_path, tiny_bert, sentiment_dir, "killed", stages=(*DISTILL, "evaluate"),
                          teacher_model=str(across_nodes[0] / "across" / "teacher"))
    raw = yaml.safe_load(config.read_text())
    raw["stages"]["distill"]["ild"]["epochs"] = 3000  # long enough to be killed in the middle
    raw["slurm"] = {"stage_nodes": {"distill": 2}}
    config.write_text(yaml.safe_dump(raw))
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "submit", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=two_nodes, cwd=REPO)
    logs = tmp_path / "killed" / "logs"
    end = time.time() + 600
    victims: list = []
    while time.time() < end and not victims:
        distill_logs = list(logs.glob("distill-*.out")) if logs.is_dir() else []
        if distill_logs and "crild: ild:" in distill_logs[0].read_text():
            victims = _rank_pids(f"{PREFIX}-n2", "stage3_distill.py")
        time.sleep(0.2)
    assert victims, "the distillation rank on the second node never started"
    killed_at = time.time()
    for pid in victims:
        os.kill(pid, 9)
    out, err = proc.communicate(timeout=300)
    assert time.time() - killed_at < 120  # bounded: srun --kill-on-bad-exit ends the other rank
    assert proc.returncode == 2, out + err
    jobs = submitted(subprocess.CompletedProcess([], 0, out, err))
    assert f"crild: distill: job {jobs['distill']} FAILED" in out.splitlines()
    assert f"crild: evaluate: job {jobs['evaluate']} CANCELLED" in out.splitlines()
    assert err.strip().splitlines()[-1].startswith(f"crild: error: stage 'distill' failed (job {jobs['distill']}")
    text = (logs / f"distill-{jobs['distill']}.out").read_text()
    assert f"srun: error: {PREFIX}-n2: task 1: Killed" in text, text[-3000:]
    assert "crild: error: stage 'distill' failed with exit code" in text, text[-3000:]
    assert f"(Slurm job {jobs['distill']} on {PREFIX}-n[1-2]; srun names the failed task's node above)" in text
    assert state(jobs["evaluate"], two_nodes) == "CANCELLED"


def test_submit_gives_each_stage_its_node_count(tmp_path, tiny_bert, sentiment_dir, two_nodes):
    config = chain_config(tmp_path, tiny_bert, sentiment_dir, "per_stage")
    raw = yaml.safe_load(config.read_text())
    raw["pipeline"] = ["teacher", "distill"]
    raw["stages"]["distill"]["ild"]["epochs"] = 1
    raw["slurm"] = {"nodes": 1, "stage_nodes": {"distill": 2}}
    config.write_text(yaml.safe_dump(raw))
    proc = submit(config, two_nodes)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = submitted(proc)
    logs = tmp_path / "per_stage" / "logs"
    teacher = (logs / f"teacher-{jobs['teacher']}.out").read_text()
    distill = (logs / f"distill-{jobs['distill']}.out").read_text()
    assert "crild: 2 ranks on 1 node" in teacher, teacher[-2000:]
    assert f"crild: 2 ranks on 2 nodes: {PREFIX}-n1 [0], {PREFIX}-n2 [1]" in distill, distill[-2000:]


def test_a_mistake_both_nodes_meet_is_one_line_in_the_jobs_log(tmp_path, tiny_bert, sentiment_dir, two_nodes):
    """Each node's rank meets the same bad record; the ranks of one host claimed a line once,
    so each node printed it: a line per node. The step's ranks now claim it through
    output_dir, which the nodes share."""
    data = shutil.copytree(sentiment_dir, tmp_path / "data")
    with open(data / "train.jsonl", "a") as f:
        f.write('{"sentence": "cut \\ud83d", "label": "fresh"}\n')
    line = sum(1 for _ in open(data / "train.jsonl"))
    config = chain_config(tmp_path, tiny_bert, data, "bad_record", stages=("teacher",))
    log = tmp_path / "bad_record.log"
    assert wait(sbatch_tiny(config, log, two_nodes, *TWO_NODES), two_nodes) == "FAILED"
    text = log.read_text()
    said = [printed for printed in text.splitlines() if printed.startswith("crild: error")]
    assert said == [f"crild: error: {data / 'train.jsonl'}:{line}: column 'sentence' holds '\\ud83d', half of a "
                    f"UTF-16 pair without its other half (text cut inside an emoji, say); expected whole "
                    f"characters"], text[-3000:]
    # srun ended the other node's rank with SIGTERM and reported that: the stage's note, not
    # the exit code, tells crild run it ended on the line above; the notes are then removed
    assert "exit code 143" not in text and not (tmp_path / "bad_record" / ".crild-said").exists()


def test_one_rank_per_node_equals_two_ranks_on_one_node(across_nodes, one_node_chain):
    """Last in this file: the single-node chain it compares with (made once per session, on
    either worker) is then done, and nothing waits on it."""
    tmp, log = across_nodes
    assert f"on {PREFIX}-n[1-2] start" in log
    # each stage's ranks really are on the two nodes, each with its own hostname and address
    assert log.count(f"crild: 2 ranks on 2 nodes: {PREFIX}-n1 [0], {PREFIX}-n2 [1]") == 3, log[-3000:]
    _, one_node, one_node_log = one_node_chain  # the same run, two ranks on one node
    assert "crild: 2 ranks on 1 node" in one_node_log
    assert weights(one_node) == weights(tmp / "across")
