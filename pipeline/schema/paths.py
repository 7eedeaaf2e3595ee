"""Paths given in configuration files: relative to the working directory, falling back to
the files that ship with crild (``ds_configs/``, ``jobs/``)."""
from __future__ import annotations

from pathlib import Path

from pipeline.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent.parent


def resolve_path(path: str, what: str, source: str, must_exist: bool = True) -> Path:
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        if must_exist and not p.exists():
            raise UserError(f"{source}: {what}: '{path}' does not exist")
        return p
    bundled = REPO_ROOT / path
    if bundled.exists():
        return bundled
    if must_exist:
        raise UserError(f"{source}: {what}: '{path}' does not exist")
    return p
