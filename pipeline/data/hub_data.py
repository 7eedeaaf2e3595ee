"""Datasets read through ``datasets.load_dataset``: a built-in task's hub dataset (GLUE), or a
task of the user's own given as a hub name (``owner/name``) or a local copy of one (a folder
``hf download --repo-type dataset`` wrote, or any folder of data files ``load_dataset``
reads). A hub name on a machine that cannot reach the hub loads from the datasets cache at
once, without the retries first: the commit ``task.hub_revision`` pins where there is one,
else the newest cached. A hub name without a pin reads the commit the command that launched
this process read it at (``crild run`` and ``crild submit`` read every such dataset before
the first stage and hand the commits down, ``pipeline.runtime.hub``), so every stage of a
run reads the same rows though the dataset's main moves. Anything ``load_dataset`` refuses
is one line naming the dataset."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pipeline.errors import UserError, clipped
from pipeline.runtime import hub


def is_own_hub(spec) -> bool:
    """A task of the user's own read from a hub dataset (built-in tasks on the hub are GLUE's)."""
    return spec.hub is not None and not spec.glue_files


def read_revision(spec, where: str = "task") -> Optional[str]:
    """The commit a hub name is read at: ``hub_revision``, else the one handed down by the
    command that launched this process; None (main) for neither, a local copy or GLUE."""
    if spec.hub_revision is not None or spec.glue_files or _local(spec.hub[0], where) is not None:
        return spec.hub_revision
    return hub.handed_down("dataset").get(spec.hub[0])


def hub_name(spec) -> str:
    """The dataset as messages name it: ``owner/name``, with ``/config`` where it has one and
    ``@commit`` where it is read at a given one."""
    dataset, config = spec.hub
    revision = read_revision(spec)
    return f"{dataset}{f'/{config}' if config else ''}{f'@{revision[:12]}' if revision else ''}"


def _local(dataset: str, where: str) -> Optional[Path]:
    """The folder ``dataset`` names, or None for a hub name. Written as a path (absolute,
    ``./``, ``~``, or more than one ``/``) and not there, it is one line: the hub has no
    such name."""
    path = Path(dataset).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UserError(f"{where}.hub: '{dataset}' is a file; expected a hub dataset name (owner/name) or the folder "
                        f"of a local copy of one")
    if path.is_absolute() or dataset.startswith((".", "~")) or dataset.count("/") > 1:
        raise UserError(f"{where}.hub: folder '{dataset}' does not exist")
    return None


def _offline_reason(unreachable: Optional[str]) -> str:
    return (f"the hub ({hub.endpoint()}) cannot be reached from here ({unreachable})" if unreachable else
            "HF_HUB_OFFLINE is set")


def _call(spec, where: str, online, pinned):
    """``online(dataset, config, revision)``, from the cache alone where the hub cannot be
    reached; there, a pinned revision is ``pinned(builder)`` with datasets' reader of that
    commit's copy in its cache (``load_dataset`` offline reads the newest cached commit,
    whatever revision it is asked for). Any failure is one line naming the dataset and why."""
    dataset, config = spec.hub
    revision = read_revision(spec, where)
    local = _local(dataset, where)
    if local is not None and revision is not None:
        raise UserError(f"{where}.hub_revision: '{dataset}' is a local copy, read as it is; a revision is for a hub "
                        f"dataset name (owner/name)")
    unreachable = None if local is not None or hub.offline_by_user() else hub.unreachable()  # probed once per process
    if unreachable:
        hub.go_offline()  # the datasets cache may hold it
    offline = local is None and (unreachable or hub.offline_by_user())
    try:
        if offline and revision is not None:
            return pinned(_cached_commit(spec, where, _offline_reason(unreachable)))
        return online(str(local or dataset), config, revision)
    except UserError:
        raise
    except Exception as err:  # network, hub or reader errors, as datasets words them
        if offline:
            why = f"it is not in the datasets cache, and {_offline_reason(unreachable)}"
        else:
            first = clipped(str(err).strip().splitlines()[0], 200) if str(err).strip() else ""
            why = f"{type(err).__name__}: {first}" if first else type(err).__name__
        fix = (f"set {where}.data_dir to a GLUE-format directory" if spec.glue_files else
               f"check {where}.hub and {where}.hub_config, or give {where}.data_dir a folder of train, dev and test "
               f"files")
        named = (f"the dataset in {local}" + (f" (configuration {config})" if config else "") if local else
                 f"{hub_name(spec)} from the hub")
        raise UserError(f"could not load {named} ({why}); {fix}") from None


def _cached_commit(spec, where: str, offline: str):
    """datasets' reader (its ``Cache`` builder) of the copy of the commit the dataset is read at
    that an earlier ``load_dataset`` left in the datasets cache, under
    ``owner___name/config/version/commit``; one line where there is none, or several
    configurations and no ``hub_config`` to choose."""
    import datasets.config
    from datasets.naming import camelcase_to_snakecase
    from datasets.packaged_modules.cache.cache import Cache

    dataset, config = spec.hub
    revision = read_revision(spec)
    parts = dataset.split("/")
    name = camelcase_to_snakecase(parts[-1])
    root = Path(datasets.config.HF_DATASETS_CACHE) / "___".join([*parts[:-1], name])
    found = sorted(p for p in root.glob(f"{config or '*'}/*/{revision}") if p.is_dir())
    if not found:
        held = sorted({p.name[:12] for p in root.glob(f"{config or '*'}/*/*") if p.is_dir() and "." not in p.name})
        holds = f"; it holds {', '.join(held)}" if held else ""
        raise UserError(f"{hub_name(spec)} is not in the datasets cache ({root}{holds}), and {offline}; load it once "
                        f"where the hub can be reached, or set {where}.hub_revision to a cached commit")
    configs = sorted({p.parts[-3] for p in found})
    if len(configs) > 1:
        raise UserError(f"{hub_name(spec)} has {len(configs)} configurations in the datasets cache "
                        f"({', '.join(configs)}); set {where}.hub_config to one")
    config_dir, version = found[0].parts[-3:-1]
    return Cache(dataset_name=name, repo_id=dataset, config_name=config_dir, version=version, hash=revision)


def unpinned_commit(spec, ds) -> Optional[str]:
    """The commit of the dataset that ``ds``, read from a hub name without a pin, holds (datasets
    files a hub dataset's copy in its cache under the commit's hash), so the run can say what
    to pin and hand it down; None for a pinned or handed-down commit, a local copy or a
    built-in task."""
    if read_revision(spec) is not None or spec.glue_files or _local(spec.hub[0], "task") is not None:
        return None
    commit = Path(ds.cache_files[0]["filename"]).parent.name if ds.cache_files else ""
    return commit if hub.COMMIT.fullmatch(commit) else None


_SPLITS: dict = {}  # (dataset, config, revision) -> its split names, asked once per process


def split_names(spec, where: str = "task") -> tuple[str, ...]:
    """The splits the dataset has (a hub name asks the hub, once per process)."""
    import datasets

    key = (*spec.hub, read_revision(spec, where))
    if key not in _SPLITS:
        _SPLITS[key] = tuple(_call(spec, where, lambda d, c, r: datasets.get_dataset_split_names(d, c, revision=r),
                                   lambda cached: list(cached.info.splits)))
    return _SPLITS[key]


def load_hub_split(spec, split: str, where: str = "task"):
    """crild's split ``split`` of the task's dataset, as a ``datasets.Dataset``: the dataset's
    own split that ``spec.hub_splits`` maps it to, which must be one it has."""
    import datasets

    name = spec.hub_splits.get(split)
    if name is None:
        raise UserError(f"task {spec.name} has no split '{split}' (has: {', '.join(spec.hub_splits)})")
    if not spec.glue_files:  # a task of one's own: the split must be one the dataset has
        have = split_names(spec, where)
        if name not in have:
            none = "" if split == "train" else ", or null for none"
            raise UserError(f"{hub_name(spec)} has no split '{name}' (has: {', '.join(have)}); set "
                            f"{where}.hub_splits.{split} to the split crild's {split} split is{none}")
    return _call(spec, where, lambda d, c, r: datasets.load_dataset(d, c, split=name, revision=r),
                 lambda cached: cached.as_dataset(split=name))
