"""Files named in configuration: where a path points (relative to the working directory,
falling back to the files that ship with crild: ``ds_configs/``, ``jobs/``), and reading
one as UTF-8 text with any problem said in one line."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pipeline.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
# where the files that ship with crild lie: a clone's ds_configs/ and jobs/, else an installed
# copy's (setup.py puts them in the package, under pipeline/bundled/)
SHIPPED_ROOTS = (REPO_ROOT, REPO_ROOT / "pipeline" / "bundled")


def shipped(path: str) -> Optional[Path]:
    """The file or folder that ships with crild at ``path`` (``ds_configs/zero2_bf16.json``,
    ``jobs/crild_stage.sbatch``), in a clone or in an installed copy; None if there is none."""
    for root in SHIPPED_ROOTS:
        if (root / path).exists():
            return root / path
    return None


def not_utf8(path: str) -> Optional[str]:
    """Why ``path`` cannot be written as UTF-8 text, or None. crild's logs, manifests, YAML
    and TensorBoard files record paths as UTF-8: a file name's byte that is not UTF-8 (which
    Python keeps as a surrogate escape) or a lone surrogate (YAML's "\\uD800") would fail in
    the middle of a stage."""
    try:
        path.encode("utf-8")
        return None
    except UnicodeEncodeError as err:
        char = ord(path[err.start])
        if 0xDC80 <= char <= 0xDCFF:
            return f"the byte {char - 0xDC00:#04x} is not UTF-8; crild records its paths as UTF-8 text"
        return f"{path[err.start]!r} is half of a UTF-16 pair, which no file name holds"


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
    bundled = shipped(path)
    if bundled is not None:
        return bundled
    if must_exist:
        raise UserError(f"{source}: {what}: '{path}' does not exist")
    return p
