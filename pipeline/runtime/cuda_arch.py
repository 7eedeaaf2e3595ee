"""TORCH_CUDA_ARCH_LIST as DeepSpeed's op builder can read it.

PyTorch accepts architecture-specific entries such as ``9.0a`` (Hopper's wgmma and TMA) or
``10.0f``, and CUDA containers set them. DeepSpeed's builder reads each entry's minor version
as an integer, so the first op it compiles on a GPU (FusedAdam, on first use) fails with
``invalid literal for int() with base 10: '0a'``. DeepSpeed's ops use no architecture-specific
features, so crild gives it the same architectures without the suffixes, for this process
and the builds it starts, and says so. Entries that neither DeepSpeed nor this can read (a
name such as ``Hopper``) are named in one line before any work."""
from __future__ import annotations

import os
import re
from collections.abc import MutableMapping
from typing import Optional

from pipeline.errors import UserError

VARIABLE = "TORCH_CUDA_ARCH_LIST"
_ENTRY = re.compile(r"(?P<major>\d+)\.(?P<minor>\d+)(?P<suffix>[a-z]*)(?P<ptx>\+PTX)?", re.IGNORECASE)


def deepspeed_arch_list(value: str) -> Optional[str]:
    """``value`` with suffixed entries (``9.0a``, ``10.0f+PTX``) as DeepSpeed reads them
    (``9.0``, ``10.0+PTX``), in order and without repeats; None when it needs no change."""
    entries = [e for e in re.split(r"[;\s]+", value.strip()) if e]
    out: list[str] = []
    for entry in entries:
        m = _ENTRY.fullmatch(entry)
        if m is None:
            raise UserError(f"{VARIABLE}={value!r}: DeepSpeed compiles its CUDA ops for entries like 9.0 or "
                            f"9.0+PTX; '{entry}' is not one (expected MAJOR.MINOR, e.g. 9.0 for an H100/H200)")
        plain = f"{m['major']}.{m['minor']}{'+PTX' if m['ptx'] else ''}"
        if plain not in out:
            out.append(plain)
    return None if ";".join(out) == ";".join(entries) else ";".join(out)


def prepare_arch_list(environ: MutableMapping[str, str] = os.environ) -> Optional[str]:
    """Rewrite ``environ``'s TORCH_CUDA_ARCH_LIST for DeepSpeed where it must be; the note to
    show, or None when it was unset or already readable."""
    value = environ.get(VARIABLE, "")
    if not value.strip():
        return None
    readable = deepspeed_arch_list(value)
    if readable is None:
        return None
    environ[VARIABLE] = readable
    return (f"{VARIABLE}={value}: DeepSpeed's op builder cannot read architecture-specific entries; its ops "
            f"compile for {readable} in this run (they use no architecture-specific features)")
