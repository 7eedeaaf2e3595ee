"""The Hugging Face hub seen from a machine that may not reach it (a compute node without
network). transformers and datasets retry an unreachable hub, with back-off, before they
fail; one TCP connection to ``HF_ENDPOINT`` tells at once. Where it fails, crild goes
offline (what the caches hold still loads) and says what is missing in one line.

Also the commits handed down to launched processes: a hub name read without a pin reads
``main``, which can move, so a command that launches stages (``crild run``, ``crild submit``,
``crild study``) hands them the commit each unpinned model and dataset was read at, and
every stage, and a requeued Slurm job hours later, reads that commit."""
from __future__ import annotations

import functools
import os
import re
import socket
import sys
import urllib.parse
import urllib.request
from typing import Optional

COMMIT = re.compile(r"[0-9a-f]{40}")  # a commit's hash, as the hub and its caches (models', datasets') write it
# kind -> the variable that hands launched processes "owner/name@<commit> ..." of that kind of repo
COMMITS_ENV = {"model": "CRILD_HUB_COMMITS", "dataset": "CRILD_HUB_DATASET_COMMITS"}
_read: dict[str, dict[str, str]] = {kind: {} for kind in COMMITS_ENV}  # unpinned names read in this process


@functools.cache
def handed_down(kind: str) -> dict[str, str]:
    """hub name -> commit: what the command that launched this process read unpinned names of
    this kind (model, dataset) at; a malformed list is one line naming its variable."""
    from huggingface_hub.utils import validate_repo_id

    from pipeline.errors import UserError

    env, pins = COMMITS_ENV[kind], {}
    for item in os.environ.get(env, "").split():
        repo, _, commit = item.partition("@")
        try:
            validate_repo_id(repo)  # its HFValidationError is a ValueError
            valid = COMMIT.fullmatch(commit) is not None
        except ValueError:
            valid = False
        if not valid:
            raise UserError(f"{env}: expected owner/name@<commit> items separated by spaces (crild run sets it for "
                            f"the stages it launches), got {item!r}; unset it")
        pins[repo] = commit
    return pins


def read_at(kind: str, repo: str, commit: str) -> None:
    """Record that this process read the unpinned hub name ``repo`` at ``commit``."""
    _read[kind][repo] = commit


def commits_read() -> dict[str, str]:
    """The environment entries that hand a launched process the commits this one read
    unpinned hub names at (and those it was handed); empty where it read none."""
    out = {}
    for kind, env in COMMITS_ENV.items():
        pins = {**handed_down(kind), **_read[kind]}
        if pins:
            out[env] = " ".join(f"{repo}@{commit}" for repo, commit in sorted(pins.items()))
    return out


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
