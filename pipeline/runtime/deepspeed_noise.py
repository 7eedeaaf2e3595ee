"""DeepSpeed's messages that say nothing to a crild user, kept off the logs: stdout carries
the evaluation and latency tables, and every stage printed three library lines into it
(the accelerator it guessed, an op "built successfully" that was only loaded, a scheduler
read "before it has started" by DeepSpeed's own constructor); under ZeRO-3 each collective
it calls by a name torch has deprecated printed a FutureWarning (120 lines in a four-step
tiny run). Only these known messages are dropped; every other DeepSpeed message stays."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings

import torch

NOISE = ("Attempting to get learning rate from scheduler before it has started",
         "Setting accelerator to CPU")
BUILT = " built successfully"
RENAMED_COLLECTIVES = r"`torch\.distributed\.\w+` is deprecated"


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in NOISE)


def import_deepspeed():
    """``deepspeed``, imported without its guess at the accelerator on a machine without
    CUDA (the choice is the CPU anyway), and with its known noise filtered. The variable
    that says so is set only while importing: a process that launches others (``crild
    submit`` on a login node) must not hand it to a GPU node."""
    set_here = not torch.cuda.is_available() and "DS_ACCELERATOR" not in os.environ
    if set_here:
        os.environ["DS_ACCELERATOR"] = "cpu"
    try:
        import deepspeed
        from deepspeed.utils import logger
    finally:
        if set_here:
            os.environ.pop("DS_ACCELERATOR", None)
    if not any(isinstance(f, _DropNoise) for f in logger.filters):
        logger.addFilter(_DropNoise())
    warnings.filterwarnings("ignore", message=RENAMED_COLLECTIVES, category=FutureWarning)
    return deepspeed


@contextlib.contextmanager
def without_build_notes():
    """A block in which DeepSpeed may load its ops: its "<op> built successfully" line (printed
    to stdout whenever an op loads, built or not) is dropped; anything else printed stays."""
    caught = io.StringIO()
    try:
        with contextlib.redirect_stdout(caught):
            yield
    finally:
        kept = "".join(line for line in caught.getvalue().splitlines(keepends=True)
                       if not (line.startswith("DeepSpeed ") and line.rstrip().endswith(BUILT)))
        sys.stdout.write(kept)
        sys.stdout.flush()


@contextlib.contextmanager
def deepspeed_quiet():
    """A block whose DeepSpeed warnings concern nothing the user runs (a scheduler built on a
    stand-in parameter to check its settings, which the stage builds and warns about again)."""
    from deepspeed.utils import logger

    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
