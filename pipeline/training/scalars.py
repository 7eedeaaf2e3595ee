"""TensorBoard scalars, written by rank 0 only. Use it as a context manager: the event file
is flushed and its writer thread stopped however the block ends (a crash keeps what was
logged before it)."""
from __future__ import annotations

from pathlib import Path


class Scalars:
    def __init__(self, log_dir: Path, enabled: bool):
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(log_dir))

    def __enter__(self) -> "Scalars":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, values: dict, step: int) -> None:
        if self.writer is None:
            return
        for tag, value in values.items():
            if value is not None:
                self.writer.add_scalar(tag, float(value), step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
