"""The Hugging Face hub seen from a machine that may not reach it (a compute node without
network). transformers and datasets retry an unreachable hub for most of a minute before
they fail; one TCP connection to ``HF_ENDPOINT`` tells at once. Where it fails, crild goes
offline (what the caches hold still loads) and says what is missing in one line."""
from __future__ import annotations

import functools
import socket
import sys
import urllib.parse
from typing import Optional


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, or :func:`go_offline` was called."""
    from huggingface_hub import constants

    return constants.is_offline_mode()


@functools.cache
def unreachable(timeout: float = 5.0) -> Optional[str]:
    """Why the hub cannot be reached (one TCP connection, once per process), or None."""
    url = urllib.parse.urlsplit(endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout).close()
    except OSError as err:
        return err.strerror or str(err) or type(err).__name__
    return None


def go_offline() -> None:
    """Load from the caches only from now on, in this process: every lookup would otherwise
    retry the unreachable hub first."""
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = True
