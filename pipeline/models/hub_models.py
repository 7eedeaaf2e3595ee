"""A model given by Hugging Face hub name, optionally pinned to a commit (``owner/name@<commit>``),
as the folder the hub cache holds for that commit (``models--owner--name/snapshots/<commit>``).

Every stage then reads a folder, whatever the model was named by: the files an export copies
(config.json), the weights the preflight checks and the commit a run names are all there. A
name without a pin reads the hub's ``main`` (or, without the hub, ``main`` as the cache last
saw it), which can move; the stage says which commit it read and how to stay on it. A pin is
a full commit hash: a branch or tag can move too, and only a commit is found in the cache
offline. Where the hub cannot be reached, a cached commit is read and one not cached is one
line naming what the cache holds.

``crild run``, ``crild submit`` and ``crild study`` read each hub name before the first
stage (the preflight), and hand the commits read for unpinned names to the processes they
launch (``CRILD_HUB_COMMITS``): every stage of a run, and a requeued Slurm job hours later,
reads the commit the run started with, though main moves meanwhile, and the note saying
which commit is said once, by the command the user ran."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

from pipeline.errors import UserError, clipped
from pipeline.runtime import hub
from pipeline.runtime.progress import note


def split_pin(name: str) -> tuple[str, Optional[str]]:
    """(hub name, commit or None) of ``name`` (``owner/name`` or ``owner/name@<commit>``); a
    ValueError saying what is expected where the part after '@' is not a commit's hash."""
    repo, at, revision = name.partition("@")
    if not at:
        return name, None
    if not hub.COMMIT.fullmatch(revision):
        raise ValueError(f"expected a full commit hash after '@' (40 lowercase hex digits, as the hub's history "
                         f"lists), got {revision!r}: a branch or tag can move")
    return repo, revision


COMMITS_ENV = hub.COMMITS_ENV["model"]  # "owner/name@<commit> ...": the commits a launching command read


def _storage(repo: str) -> Path:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model")


def _cached_commits(repo: str) -> list[str]:
    """The commits of ``repo`` whose snapshot folder in the hub cache holds a config.json."""
    snapshots = _storage(repo) / "snapshots"
    if not snapshots.is_dir():
        return []
    return sorted(p.name for p in snapshots.iterdir() if hub.COMMIT.fullmatch(p.name) and (p / "config.json").is_file())


def _cached_main(repo: str) -> Optional[str]:
    try:
        commit = (_storage(repo) / "refs" / "main").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return commit if hub.COMMIT.fullmatch(commit) else None


def _from_cache(name: str, repo: str, commit: Optional[str], where: str, why: str) -> Path:
    """The cached snapshot folder of ``commit`` (None: the cache's ``main``), or one line
    saying what the cache holds instead, and why the hub is not asked (``why``)."""
    from huggingface_hub import constants

    wanted = commit or _cached_main(repo)
    held = _cached_commits(repo)
    if wanted in held:
        return _storage(repo) / "snapshots" / wanted
    fetch = f"hf download {repo}" + (f" --revision {commit}" if commit else "")
    advice = f"download it where there is network ({fetch}) or give its folder"
    if not held:
        raise UserError(f"{where}: '{name}' is not a model folder, an offline alias or in the Hugging Face cache "
                        f"({constants.HF_HUB_CACHE}), and {why}; {advice}")
    shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
    lacks = f"not at commit {commit}" if commit else "without a main to read (refs/main)"
    raise UserError(f"{where}: the Hugging Face cache ({constants.HF_HUB_CACHE}) holds {repo} at commit "
                    f"{shown}, {lacks}, and {why}; {advice}, or pin a cached commit ({repo}@{held[-1]})")


@functools.cache
def _hub_main(repo: str) -> str:
    """The commit the hub's ``main`` of ``repo`` is at, asked once per process: every read of
    the name in a process (a preflight reads it several times) gets the same commit, and the
    later ones ask the hub nothing (a commit's files are found in the cache). Asked by
    downloading main's config.json, which also records the commit as the cache's ``main``
    (refs/main): what a later read without the hub takes for main."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo, allow_patterns=["config.json"])).name


def _download(name: str, repo: str, commit: Optional[str], where: str, patterns: tuple[str, ...]) -> Path:
    """The snapshot folder of ``commit`` (None: the hub's ``main``) with the files matching
    ``patterns``, downloaded where the cache lacks them."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return Path(snapshot_download(repo, revision=commit or _hub_main(repo), allow_patterns=list(patterns)))
    except RevisionNotFoundError:
        raise UserError(f"{where}: '{name}': the hub ({hub.endpoint()}) has no commit {commit} of {repo}") from None
    except RepositoryNotFoundError:  # gated models too
        raise UserError(f"{where}: '{name}' is not a model folder, an offline alias or a model on the hub "
                        f"({hub.endpoint()}) that this machine may read (a private or gated model needs a token: "
                        f"hf auth login)") from None
    except (HfHubHTTPError, OSError) as err:
        reason = clipped(str(err).strip().splitlines()[0]) if str(err).strip() else type(err).__name__
        raise UserError(f"{where}: could not download '{name}' from the hub ({hub.endpoint()}): {reason}") from None


@functools.cache
def _note_commit(where: str, name: str, commit: str, source: str) -> None:
    """Said once per process: the preflight and each stage's loads resolve the name again."""
    note(f"note: {where}: {name} is read at commit {commit} ({source}); write it as {name}@{commit} to keep every "
         f"run on this commit")


def snapshot(name: str, where: str, patterns: tuple[str, ...], kinds: str) -> Path:
    """The hub cache's folder of the hub name ``name`` (with an optional ``@<commit>``), its
    files matching ``patterns`` downloaded where the hub can be reached; one line where the
    name, the pin or what the cache holds cannot serve (``kinds``: what else the name could
    have been, for the line saying it is none of them)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        repo, commit = split_pin(name)
    except ValueError as err:
        raise UserError(f"{where}: '{name}': {err}") from None
    try:
        validate_repo_id(repo)
    except HFValidationError:
        raise UserError(f"{where}: '{name}' is not {kinds} or a hub name") from None
    if commit is None:  # the commit the command that launched this process read, and named
        commit = hub.handed_down("model").get(repo)
    if hub.offline_by_user():
        folder = _from_cache(name, repo, commit, where, "HF_HUB_OFFLINE is set")
        source = "main in the Hugging Face cache"
    else:
        unreachable = hub.unreachable()
        if unreachable is None:
            folder = _download(name, repo, commit, where, patterns)
            source = "the hub's main"
        else:
            folder = _from_cache(name, repo, commit, where,
                                 f"the hub ({hub.endpoint()}) cannot be reached from here ({unreachable})")
            hub.go_offline()
            source = "main in the Hugging Face cache"
    if commit is None:
        hub.read_at("model", repo, folder.name)
        _note_commit(where, name, folder.name, source)
    return folder
