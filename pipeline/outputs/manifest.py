"""The manifest every stage output carries (``crild_stage.json``): which stage wrote it,
that it is complete, and the fingerprint of what it was made from."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

MANIFEST = "crild_stage.json"
RESOLVED_CONFIG = "config.resolved.yaml"


def read_manifest(folder: Path) -> Optional[dict]:
    """The folder's manifest, or None (missing or unreadable)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def is_complete(folder: Path) -> bool:
    manifest = read_manifest(folder)
    return manifest is not None and manifest.get("status") == "complete"


def recorded_fingerprint(folder: Path) -> Optional[str]:
    """The fingerprint a complete or partial output was written with (None: no manifest)."""
    manifest = read_manifest(folder)
    return manifest.get("fingerprint") if manifest else None
