"""A free TCP port on this host, for a rendezvous of ranks started here. No torch: the
runner picks one before any stage loads it."""
from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
