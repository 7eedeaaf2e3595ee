"""TensorBoard scalars, written by rank 0 only. Use it as a context manager: the event file
is flushed and its writer thread stopped however the block ends (a crash keeps what was
logged before it)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pipeline.runtime.progress import log

EVENTS = "events.out.tfevents.*"


def start_afresh(log_dir: Path, stage: str, dist, part: str = "") -> None:
    """A stage (or ``part`` of it, a distillation phase) that starts with no checkpoint to
    resume: the earlier attempt's events set aside (rank 0), and the user told where they went."""
    if dist.is_main and (earlier := set_aside_events(log_dir, part)):
        log(dist, f"{stage}: starting afresh; the TensorBoard events of an earlier attempt are in {earlier}")


def set_aside_events(log_dir: Path, part: str = "") -> Optional[Path]:
    """Move the event files of an earlier attempt out of ``log_dir`` (into ``earlier-<n>``,
    which TensorBoard shows as a run of its own), for a stage that starts afresh, or only
    those ``part`` wrote (``Scalars(..., part)``), for a phase that does: left in place, a
    longer earlier run's later steps would extend the new curves, and the study would read
    them as the new run's. Returns where they went, or None when there were none."""
    log_dir = Path(log_dir)
    events = sorted(log_dir.glob(EVENTS + (f".{part}" if part else ""))) if log_dir.is_dir() else []
    if not events:
        return None
    n = 1
    while (earlier := log_dir / f"earlier-{n}").exists():
        n += 1
    earlier.mkdir()
    for path in events:
        path.rename(earlier / path.name)
    return earlier


class Scalars:
    def __init__(self, log_dir: Path, enabled: bool, part: str = ""):
        """``part``: what writes (a distillation phase), named at the end of the event
        file's name, so that a phase trained again can set its own earlier curves aside."""
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(log_dir), filename_suffix=f".{part}" if part else "")

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
