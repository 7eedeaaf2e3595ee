"""Progress on rank 0: a tqdm bar on a terminal, a plain line every 30 s in a log file, and
``log`` for one-off messages."""
from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

from pipeline.errors import launch_number


def counted(n: int, noun: str) -> str:
    """'1 optimizer step', '16 optimizer steps'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def log(dist, message: str) -> None:
    """``crild: message`` on stderr, from rank 0 only."""
    if dist.is_main:
        print(f"crild: {message}", file=sys.stderr, flush=True)


def note(message: str) -> None:
    """``log`` where no rank information is at hand (model loading): rank 0 of the process
    group, or of the launcher's RANK before there is one."""
    import torch.distributed as td

    rank = td.get_rank() if td.is_available() and td.is_initialized() else launch_number("RANK", 0)
    if rank == 0:
        print(f"crild: {message}", file=sys.stderr, flush=True)


class Progress:
    def __init__(self, total: int, initial: int, desc: str, enabled: bool, log_interval: float = 30.0,
                 unit: str = "micro-steps"):
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.total, self.n, self.desc = total, initial, desc
        self.postfix = ""
        self.interval = log_interval
        self.unit = unit
        self.start = self.last = time.perf_counter()
        self.start_n = initial
        self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True) if enabled and self.tty else None

    def update(self, n: int = 1, **postfix) -> None:
        self.n += n
        if postfix:
            self.postfix = ", ".join(f"{k} {v}" for k, v in postfix.items())
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
        elif self.enabled and time.perf_counter() - self.last >= self.interval:
            self._line()

    def _line(self) -> None:
        self.last = time.perf_counter()
        rate = (self.n - self.start_n) / max(self.last - self.start, 1e-9)
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {self.n}/{self.total} {self.unit} ({100 * self.n / max(self.total, 1):.0f}%), "
              f"{rate:.2f} {self.unit}/s{extra}", file=sys.stderr, flush=True)

    def write(self, message: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self._line()
