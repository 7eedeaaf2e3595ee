"""Process-group set-up for the deepspeed launcher, torchrun, Slurm and plain ``python``."""
from __future__ import annotations

import atexit
import os
import random
import socket
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import UserError
from pipeline.runtime import environment
from pipeline.runtime.build_locks import check_build_locks, op_builds
from pipeline.runtime.cuda_arch import prepare_arch_list
from pipeline.runtime.deepspeed_noise import import_deepspeed, without_build_notes
from pipeline.runtime.ports import free_port
from pipeline.runtime.progress import counted, note


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _from_slurm() -> None:
    """srun with one task per GPU: map Slurm's variables to torch.distributed's."""
    if "SLURM_PROCID" in os.environ and "RANK" not in os.environ and "SLURM_NTASKS" in os.environ:
        os.environ["RANK"] = os.environ["SLURM_PROCID"]
        os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
        os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
        per_node = (os.environ.get("SLURM_STEP_TASKS_PER_NODE") or os.environ.get("SLURM_NTASKS_PER_NODE")
                    or os.environ.get("SLURM_TASKS_PER_NODE") or "1")
        os.environ.setdefault("LOCAL_WORLD_SIZE", per_node.split("(")[0].split(",")[0])


def local_world_size() -> int:
    for key in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE", "WORLD_SIZE"):
        if (n := environment.count(key)) is not None:
            return n
    return 1


def set_threads() -> int:
    """One share of the cores per local rank, so ranks never oversubscribe the machine
    (an explicit OMP_NUM_THREADS wins)."""
    n = environment.count("OMP_NUM_THREADS", first_of_list=True)
    if n is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        n = max(1, cores // max(1, local_world_size()))
    torch.set_num_threads(n)
    return n


def init_distributed() -> DistInfo:
    """Initialise (once) the process group: NCCL on CUDA, gloo on CPU. Works without a
    launcher by defaulting to a single rank on loopback."""
    _from_slurm()
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if os.environ["WORLD_SIZE"] == "1":
        # one rank needs no agreed port: a free one, even if MASTER_PORT was inherited from a
        # parent process that still holds it
        os.environ["MASTER_PORT"] = str(free_port())
    os.environ.setdefault("MASTER_PORT", "29500")
    _check_launcher_variables()
    set_threads()
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # chosen anyway; this only silences a warning
    deepspeed = import_deepspeed()

    cuda = torch.cuda.is_available()
    local_rank = int(os.environ["LOCAL_RANK"])
    if cuda:
        torch.cuda.set_device(local_rank)
        if arch_note := prepare_arch_list():  # before DeepSpeed compiles an op (FusedAdam on first use)
            note(arch_note)
    if not cuda:
        _leave_shm_allreduce_unbuilt()
    if not torch.distributed.is_initialized():
        # a rank that hangs (not dies) makes the others' next collective fail after this long
        timeout = timedelta(seconds=environment.seconds("CRILD_COLLECTIVE_TIMEOUT_S", 600))
        check_build_locks()  # DeepSpeed builds its ops from here on; a stale lock would hang it
        with op_builds(), without_build_notes(), _said_if_waiting(timeout):
            deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", verbose=False, timeout=timeout)
        atexit.unregister(shutdown_distributed)  # once, however often a process re-initialises
        atexit.register(shutdown_distributed)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    info = DistInfo(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank, device)
    global _CONTROL
    if _CONTROL is None and info.world_size > 1:  # collective: every rank makes it, in the same order
        _CONTROL = torch.distributed.new_group(backend="gloo")
        _say_where(info)
    if not cuda and _shm_allreduce_built():
        release_shm_buffer(info)
    return info


def _leave_shm_allreduce_unbuilt() -> None:
    """DeepSpeed's CPU backend compiles a shared-memory allreduce when the process group
    starts (a C++ compiler, and tens of seconds on a machine's first run) and gives each rank of a
    one-machine run a 66 MB buffer in /dev/shm. Only its inference kernels use it
    (``inference_all_reduce``, which falls back to the process group without it); training
    reduces through torch.distributed. So crild does not build it: a CPU run needs no
    compiler with the shipped DeepSpeed configs, and leaves nothing in /dev/shm."""
    import importlib

    backend = importlib.import_module("deepspeed.comm.torch")  # the attribute deepspeed.comm.torch is torch itself
    if hasattr(backend, "build_shm_op"):
        backend.build_shm_op = lambda: None


def _shm_allreduce_built() -> bool:
    """Whether DeepSpeed built its shared-memory allreduce all the same (a version that builds
    it elsewhere): then its buffers are released below."""
    from deepspeed.comm import comm

    return getattr(comm.cdb, "shm_comm_op", None) is not None


def _check_launcher_variables() -> None:
    """The variables a launcher sets, or a shell left behind: each in its range, so that a
    stray value is one line naming it, not a traceback inside torch, nor a rank that waits
    for a world it is not part of."""
    world = environment.count("WORLD_SIZE")
    environment.index("RANK", below=world)
    environment.index("LOCAL_RANK", below=world)
    environment.port("MASTER_PORT")
    if not os.environ["MASTER_ADDR"].strip():
        raise UserError("MASTER_ADDR: expected a host name or address, got ''")


WAIT_NOTE_S = 60.0  # ranks started together meet in seconds; DeepSpeed's first op build can take a minute


@contextmanager
def _said_if_waiting(timeout: timedelta):
    """With several ranks, say what the process group waits for when it has not formed after
    ``WAIT_NOTE_S``: a WORLD_SIZE left in the environment (or a rank that did not start)
    would otherwise keep the stage silent until the timeout."""
    import threading

    world, rank = environment.count("WORLD_SIZE"), os.environ["RANK"]
    if world == 1:
        yield
        return
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    timer = threading.Timer(WAIT_NOTE_S, lambda: print(
        f"crild: rank {rank}: the process group of WORLD_SIZE={world} at {where} has not formed after "
        f"{WAIT_NOTE_S:.0f} s; it waits for every rank, up to {timeout.total_seconds():.0f} s "
        f"(CRILD_COLLECTIVE_TIMEOUT_S); if no other rank was meant to start, unset WORLD_SIZE, RANK and LOCAL_RANK",
        file=sys.stderr, flush=True))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def shutdown_distributed() -> None:
    """Destroy every process group (the control group too) while the interpreter is still
    whole. Left to interpreter teardown, gloo's worker threads can outlive the objects they
    hold and the process aborts ("terminate called without an active exception", SIGABRT)
    after its stage has finished its work. Local and safe to repeat: each stage calls it on
    the way out, and ``init_distributed`` registers it with atexit for every other exit."""
    global _CONTROL
    _CONTROL = None
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
        _forget_deepspeed_groups()


def _forget_deepspeed_groups() -> None:
    """DeepSpeed keeps the groups it derives (a clone of the world group, the data-parallel
    group) in module globals and hands them to every later engine: after the process groups
    are destroyed they must go too, or an engine built after ``init_distributed`` runs again
    in the same process would use a destroyed group."""
    from deepspeed.utils import groups

    for name, value in vars(groups).items():
        if name.startswith("_") and name.endswith("_GROUP"):
            if isinstance(value, dict):
                value.clear()
            elif isinstance(value, torch.distributed.ProcessGroup):
                setattr(groups, name, None)


def _say_where(info: DistInfo) -> None:
    """Rank 0 says which host each rank runs on (one small collective per stage): the first
    line to read when ranks on different nodes cannot reach each other."""
    hosts: list = [None] * info.world_size
    torch.distributed.all_gather_object(hosts, socket.gethostname(), group=_CONTROL)
    if info.is_main:
        where: dict = {}
        for rank, host in enumerate(hosts):
            where.setdefault(host, []).append(rank)
        ranks = ", ".join(f"{host} [{_ranges(r)}]" for host, r in where.items())
        print(f"crild: {info.world_size} ranks on {counted(len(where), 'node')}: {ranks}", file=sys.stderr, flush=True)


def _ranges(ranks: list[int]) -> str:
    return f"{ranks[0]}-{ranks[-1]}" if len(ranks) > 1 and ranks == list(range(ranks[0], ranks[-1] + 1)) \
        else ",".join(map(str, ranks))


SHM_DIR = Path("/dev/shm")


def shm_buffer_name(rank: int) -> str:
    """The name DeepSpeed's CPU shared-memory allreduce gives a rank's buffer
    (csrc/cpu/comm/shm.cpp: ``deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>``)."""
    return (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{rank}")


def release_shm_buffer(info: DistInfo) -> None:
    """DeepSpeed's shared-memory allreduce, where it is built, gives each rank of a one-machine
    run (the launcher sets LOCAL_SIZE) a 66 MB buffer in /dev/shm and never removes it, so
    every multi-rank CPU run would keep that much RAM until reboot. Once every rank has
    mapped every peer's buffer (the barrier; DeepSpeed maps them while initialising) the
    names can go: the mappings stay valid, and a rank killed later leaves nothing behind."""
    if info.world_size > 1:
        torch.distributed.barrier()  # every rank, buffers or not: a barrier some ranks skip would hang
    try:
        (SHM_DIR / shm_buffer_name(info.rank)).unlink()
    except FileNotFoundError:
        pass


def array_task() -> tuple[int, int] | None:
    """(index, count) of this process in a Slurm job array, if it is one."""
    if "SLURM_ARRAY_TASK_ID" in os.environ and "SLURM_ARRAY_TASK_COUNT" in os.environ:
        return int(os.environ["SLURM_ARRAY_TASK_ID"]) - int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0")), \
            int(os.environ["SLURM_ARRAY_TASK_COUNT"])
    return None


def set_tf32(enabled: bool) -> None:
    """fp32 matrix products and convolutions in TF32 on GPUs that have it (the ``tf32``
    setting); nothing changes on a CPU."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


_CONTROL = None  # the gloo group of control messages, made by init_distributed


def _distributed() -> bool:
    return torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


def is_main_process() -> bool:
    """Rank 0, or the only process."""
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def control_group():
    """A gloo process group for small control messages (stop votes, flags, counters): their
    CPU tensors never wait for the GPU, so reading one is no device synchronisation."""
    return _CONTROL


def all_reduce_max(value: float) -> float:
    if not _distributed():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, group=control_group())
    return float(t.item())


def all_reduce_sum(values: list[float]) -> list[float]:
    if not _distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(t, group=control_group())
    return t.tolist()


def mean_across_ranks(t: torch.Tensor) -> torch.Tensor:
    """The mean of a small tensor over all ranks, on the host (float64)."""
    t = t.detach().to("cpu", torch.float64)
    if not _distributed():
        return t
    t = t.clone()
    torch.distributed.all_reduce(t, group=control_group())
    return t / torch.distributed.get_world_size()


def start_all_reduce_max(value: float):
    """An all-reduce (max) running in the background: (handle, tensor); ``handle.wait()``
    then ``tensor`` holds the result. None when there is nothing to reduce."""
    if not _distributed():
        return None
    t = torch.tensor([float(value)], dtype=torch.float64)
    return torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, group=control_group(),
                                        async_op=True), t


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (a collective: every rank calls it)."""
    pending = start_all_reduce_max(float(flag))
    if pending is None:
        return flag
    handle, tensor = pending
    handle.wait()
    return tensor.item() > 0


@contextmanager
def main_rank_first():
    """Rank 0 runs the block first (filling caches), then the other ranks."""
    distributed = torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1
    if distributed and torch.distributed.get_rank() != 0:
        torch.distributed.barrier()
    try:
        yield
    finally:
        if distributed and torch.distributed.get_rank() == 0:
            torch.distributed.barrier()
