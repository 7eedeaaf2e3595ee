"""A training stage's checkpoint folder as a folder: the marks that say crild made it
and which configuration wrote each checkpoint, claiming it, clearing it once the stage is
done, and moving checkpoints of another configuration aside. No torch here: the runner and
``crild status`` read and tidy these folders without loading it."""
from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.errors import UserError
from pipeline.outputs.ownership import FILE, FOREIGN, LINK, folder
from pipeline.runtime.rank_zero import decided_by_main

TAG_PREFIX = "step"
FINGERPRINT_FILE = "stage_fingerprint"
STALE_SUFFIX = ".stale-"  # <stage>.stale-N: checkpoints moved aside by archive_stale
OWNER_FILE = "crild_checkpoints"  # in a stage's checkpoint folder: crild made it, and may remove it


def made_by_crild(root: Path) -> bool:
    """Whether crild made the checkpoint folder ``root`` (its mark, or, in folders from before
    the mark, the stage fingerprint its checkpoints record)."""
    root = Path(root)
    return (root / OWNER_FILE).is_file() or any(root.rglob(FINGERPRINT_FILE))


def has_checkpoints(root: Path) -> bool:
    """Whether any checkpoint lies under ``root`` (a stage's folder, its phases' included)."""
    return Path(root).is_dir() and any(p.is_dir() for p in Path(root).rglob(f"{TAG_PREFIX}*"))


def claim_checkpoints(root: Path) -> None:
    """Make ``root`` the stage's checkpoint folder (rank 0; collective). A folder crild did not
    make that already holds something is refused: the stage would write its checkpoints among
    its files and remove the folder, theirs too, when it finishes."""
    def check() -> None:
        path = Path(root)
        found = folder(path, made_by_crild)
        if found.state in (FILE, LINK):
            raise UserError(f"{path}: a {found.state} is where this stage keeps its checkpoints; move it, or choose "
                            f"another output_dir")
        if found.state == FOREIGN:
            raise UserError(f"{path}: a folder crild did not make is where this stage keeps its checkpoints (and "
                            f"removes them when it finishes), and it holds {found.shown()}; move it, or choose another "
                            f"output_dir")
        path.mkdir(parents=True, exist_ok=True)
        (path / OWNER_FILE).touch()

    decided_by_main(check)


def ranks_that_wrote(tag: Path) -> int:
    """How many ranks wrote the checkpoint ``tag`` (each writes its RNG state); 0 if unknown."""
    return len(list(Path(tag).glob("rng_rank*.pt")))


def remove_checkpoints(root: Path, is_main: bool = True) -> None:
    """A finished stage or phase never resumes, so its checkpoints (weights plus optimizer
    state, about 16 bytes a parameter per tag kept) would only fill the disk. Rank 0 removes
    them once the output they led to is in place."""
    if is_main and Path(root).is_dir() and made_by_crild(root):
        shutil.rmtree(root, ignore_errors=True)


def archive_stale(root: Path, fingerprints: tuple[str, ...]) -> Path | None:
    """Move checkpoints under ``root`` written for none of the stage's ``fingerprints`` (the
    configuration or the inputs changed) out of the way; returns where they went."""
    stale = []  # a folder crild did not make holds no markers: it is never moved
    for marker in sorted(Path(root).rglob(FINGERPRINT_FILE)) if Path(root).is_dir() else []:
        if marker.read_text().strip() not in fingerprints:
            stale.append(marker.parent)
    if not stale:
        return None
    n = 1
    while (archive := Path(f"{root}{STALE_SUFFIX}{n}")).exists():
        n += 1
    Path(root).rename(archive)
    return archive
