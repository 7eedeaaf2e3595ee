"""Files named in configuration: where a path points (relative to the working directory,
falling back to the files that ship with crild: ``ds_configs/``, ``jobs/``), and reading
one as UTF-8 text with any problem said in one line."""
from __future__ import annotations

from pathlib import Path

from pipeline.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent.parent


def read_utf8(path: Path) -> str:
    """A file's text: UTF-8, a byte-order mark dropped; anything else is one line naming
    the file, the line and the byte."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start}); "
                        f"save the file as UTF-8") from None


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
