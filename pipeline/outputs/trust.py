"""One trust rule for every model or data folder a stage reads. A folder with crild's
content hashes (anything crild wrote) is checked against them, and a damaged file is one
line naming it; a folder without them (a model from elsewhere) is loaded in a way that turns
damage into one line naming the folder (see ``pipeline.models.loading.load_pretrained``).
Either way the stage says which it was."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pipeline.errors import UserError
from pipeline.outputs.integrity import HASHES, problems
from pipeline.runtime.rank_zero import decided_by_main

VERIFIED = "verified against its content hashes"
UNVERIFIED = "no content hashes (not written by crild): loaded as it is, not verified"


def check_folder(path: str | Path, what: str) -> str:
    """VERIFIED or UNVERIFIED for a local folder (collective: rank 0 hashes, the others are
    told); a damaged crild folder is a UserError."""
    folder = Path(path)
    if not (folder / HASHES).is_file():
        return UNVERIFIED

    def check() -> str:
        bad = problems(folder)
        if bad:
            raise UserError(f"{what} '{folder}' failed its integrity check: {bad[0]}" +
                            (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
        return VERIFIED

    return decided_by_main(check)


def trust_note(path: str | Path, what: str) -> Optional[str]:
    """check_folder for a local folder, as a line for the stage's log (None for a hub name).
    Stages log these once their checks have passed, so that a bad input stays one line."""
    if not Path(path).is_dir():
        return None
    return f"{what}: {path}: {check_folder(path, what)}"
