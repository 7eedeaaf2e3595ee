"""TORCH_CUDA_ARCH_LIST as DeepSpeed's op builder can read it.

PyTorch accepts architecture-specific entries such as ``9.0a`` (Hopper's wgmma and TMA) or
``10.0f``, and CUDA containers set them. DeepSpeed's builder reads each entry's minor version
as an integer, so the first op it compiles on a GPU (FusedAdam, on first use) fails with
``invalid literal for int() with base 10: '0a'``. DeepSpeed's ops use no architecture-specific
features, so crild gives it the same architectures without the suffixes (and PyTorch's
architecture names, ``Hopper``, as their numbers), for this process and the builds it starts,
and says so. An entry neither can read is left as it is, with a note: only a DeepSpeed op
build reads the list, and the shipped configurations build none."""
from __future__ import annotations

import os
import re
from collections.abc import MutableMapping
from typing import Optional

VARIABLE = "TORCH_CUDA_ARCH_LIST"
_ENTRY = re.compile(r"(?P<major>[0-9]+)\.(?P<minor>[0-9]+)(?P<suffix>[a-z]*)(?P<ptx>\+PTX)?", re.IGNORECASE)
# the names torch.utils.cpp_extension accepts, as the numbers it gives them
NAMED = {"Kepler+Tesla": "3.7", "Kepler": "3.5+PTX", "Maxwell+Tegra": "5.3", "Maxwell": "5.0;5.2+PTX",
         "Pascal": "6.0;6.1+PTX", "Volta+Tegra": "7.2", "Volta": "7.0+PTX", "Turing": "7.5+PTX",
         "Ampere+Tegra": "8.7", "Ampere": "8.0;8.6+PTX", "Ada": "8.9+PTX", "Hopper": "9.0+PTX"}


class Unreadable(ValueError):
    """An entry that is neither MAJOR.MINOR[suffix][+PTX] nor one of PyTorch's names."""


def deepspeed_arch_list(value: str) -> Optional[str]:
    """``value`` with suffixed entries (``9.0a``, ``10.0f+PTX``) and names (``Hopper``) as
    DeepSpeed reads them (``9.0``, ``10.0+PTX``, ``9.0+PTX``), in order and without repeats;
    None when it needs no change. Raises :class:`Unreadable` for an entry it cannot read."""
    entries = [e for e in re.split(r"[;\s]+", value.strip()) if e]
    out: list[str] = []
    for entry in entries:
        for part in NAMED.get(entry, entry).split(";"):
            m = _ENTRY.fullmatch(part)
            if m is None:
                raise Unreadable(entry)
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
    try:
        readable = deepspeed_arch_list(value)
    except Unreadable as err:
        return (f"{VARIABLE}={value}: '{err}' is not an architecture DeepSpeed's op builder can read (MAJOR.MINOR, "
                f"e.g. 9.0); a DeepSpeed op that compiles on first use (its FusedAdam) would fail")
    if readable is None:
        return None
    environ[VARIABLE] = readable
    return (f"{VARIABLE}={value}: DeepSpeed's op builder reads neither architecture-specific entries nor names; its ops "
            f"compile for {readable} in this run (they use no architecture-specific features)")
