"""DeepSpeed's messages that say nothing to a crild user, kept off the logs: stdout carries
the evaluation and latency tables, and every stage printed three library lines into it
(the accelerator it guessed, an op "built successfully" that was only loaded, a scheduler
read "before it has started" by DeepSpeed's own constructor); under ZeRO-3 each collective
it calls by a name torch has deprecated printed a FutureWarning (120 lines in a four-step
tiny run). With a CUDA build of torch on a machine without a GPU (pip's default torch on
Linux), torch's extension builder, which DeepSpeed imports, warned "No CUDA runtime is found"
in every stage, while crild runs on the CPU there by design. Only these known messages are
dropped; every other DeepSpeed and torch message stays."""
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


NO_CUDA_RUNTIME = "No CUDA runtime is found"  # torch.utils.cpp_extension, on import


class _DropNoise(logging.Filter):
    def __init__(self, texts: tuple[str, ...]):
        super().__init__()
        self.texts = texts

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.texts)


def _drop(logger: logging.Logger, texts: tuple[str, ...]) -> None:
    if not any(isinstance(f, _DropNoise) for f in logger.filters):
        logger.addFilter(_DropNoise(texts))


def import_deepspeed():
    """``deepspeed``, imported without its guess at the accelerator on a machine without
    CUDA (the choice is the CPU anyway), and with its known noise filtered. The variable
    that says so is set only while importing: a process that launches others (``crild
    submit`` on a login node) must not hand it to a GPU node."""
    # before anything imports torch's extension builder, which warns as it is imported; the
    # logger is the one it will log to (getLogger returns one object per name)
    _drop(logging.getLogger("torch.utils.cpp_extension"), (NO_CUDA_RUNTIME,))
    set_here = not torch.cuda.is_available() and "DS_ACCELERATOR" not in os.environ
    if set_here:
        os.environ["DS_ACCELERATOR"] = "cpu"
    try:
        import deepspeed
        from deepspeed.utils import logger
    finally:
        if set_here:
            os.environ.pop("DS_ACCELERATOR", None)
    _drop(logger, NOISE)
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
