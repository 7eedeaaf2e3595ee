"""The Hugging Face hub seen from a machine that may not reach it (a compute node without
network). transformers and datasets retry an unreachable hub, with back-off, before they
fail; one TCP connection to ``HF_ENDPOINT`` tells at once. Where it fails, crild goes
offline (what the caches hold still loads) and says what is missing in one line."""
from __future__ import annotations

import functools
import re
import socket
import sys
import urllib.parse
import urllib.request
from typing import Optional

COMMIT = re.compile(r"[0-9a-f]{40}")  # a commit's hash, as the hub and its caches (models', datasets') write it


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


_went_offline = False  # go_offline was called: offline because the hub is unreachable, not by the user's word


def offline_by_user() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: the user said not to use the hub."""
    from huggingface_hub import constants

    return constants.is_offline_mode() and not _went_offline


def offline() -> bool:
    """The hub is not used in this process: by the user's word, or because it cannot be reached."""
    from huggingface_hub import constants

    return constants.is_offline_mode()


def first_hop(url: str) -> tuple[str, int, str]:
    """(host, port, what it is) of the first connection a request to ``url`` makes: the
    proxy that HTTPS_PROXY and friends name for it (unless NO_PROXY exempts its host), or
    the host itself."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        hop = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        port = hop.port or (443 if hop.scheme == "https" else 80)
        return hop.hostname or "", port, f"the proxy {hop.hostname}:{port}"
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80), "it"


@functools.cache
def unreachable(timeout: float = 5.0) -> Optional[str]:
    """Why the hub cannot be reached (one TCP connection to it or to its proxy, once per
    process), or None."""
    host, port, what = first_hop(endpoint())
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        return reason if what == "it" else f"{what}: {reason}"
    return None


def go_offline() -> None:
    """Load from the caches only from now on, in this process: every lookup would otherwise
    retry the unreachable hub first."""
    from huggingface_hub import constants

    global _went_offline
    _went_offline = True
    constants.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = True
