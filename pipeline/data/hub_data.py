"""Datasets read through ``datasets.load_dataset``: a built-in task's hub dataset (GLUE), or a
task of the user's own given as a hub name (``owner/name``) or a local copy of one (a folder
``hf download --repo-type dataset`` wrote, or any folder of data files ``load_dataset``
reads). A hub name on a machine that cannot reach the hub loads from the datasets cache at
once, without the retries first; anything ``load_dataset`` refuses is one line naming the
dataset."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pipeline.errors import UserError
from pipeline.runtime import hub


def is_own_hub(spec) -> bool:
    """A task of the user's own read from a hub dataset (built-in tasks on the hub are GLUE's)."""
    return spec.hub is not None and not spec.glue_files


def hub_name(spec) -> str:
    """The dataset as messages name it: ``owner/name``, with ``/config`` where it has one."""
    dataset, config = spec.hub
    return f"{dataset}/{config}" if config else dataset


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


def _call(spec, where: str, what):
    """``what(dataset, config)``, from the cache alone where the hub cannot be reached;
    any failure is one line naming the dataset and why."""
    dataset, config = spec.hub
    local = _local(dataset, where)
    unreachable = None if local is not None or hub.offline_by_user() else hub.unreachable()  # probed once per process
    if unreachable:
        hub.go_offline()  # the datasets cache may hold it
    try:
        return what(str(local or dataset), config)
    except UserError:
        raise
    except Exception as err:  # network, hub or reader errors, as datasets words them
        if local is None and unreachable:
            why = (f"it is not in the datasets cache, and the hub ({hub.endpoint()}) cannot be reached from here "
                   f"({unreachable})")
        elif local is None and hub.offline_by_user():
            why = "it is not in the datasets cache, and HF_HUB_OFFLINE is set"
        else:
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            why = f"{type(err).__name__}: {first}" if first else type(err).__name__
        fix = (f"set {where}.data_dir to a GLUE-format directory" if spec.glue_files else
               f"check {where}.hub and {where}.hub_config, or give {where}.data_dir a folder of train, dev and test "
               f"files")
        named = (f"the dataset in {local}" + (f" (configuration {config})" if config else "") if local else
                 f"{hub_name(spec)} from the hub")
        raise UserError(f"could not load {named} ({why}); {fix}") from None


_SPLITS: dict = {}  # (dataset, config) -> its split names, asked once per process


def split_names(spec, where: str = "task") -> tuple[str, ...]:
    """The splits the dataset has (a hub name asks the hub, once per process)."""
    import datasets

    if spec.hub not in _SPLITS:
        _SPLITS[spec.hub] = tuple(_call(spec, where, lambda d, c: datasets.get_dataset_split_names(d, c)))
    return _SPLITS[spec.hub]


def load_hub_split(spec, split: str, where: str = "task"):
    """crild's split ``split`` of the task's dataset, as a ``datasets.Dataset``: the dataset's
    own split that ``spec.hub_splits`` maps it to, which must be one it has."""
    import datasets

    name = spec.hub_splits.get(split)
    if name is None:
        raise UserError(f"task {spec.name} has no split '{split}' (has: {', '.join(spec.hub_splits)})")
    if spec.glue_files:  # built in: the splits are known
        return _call(spec, where, lambda d, c: datasets.load_dataset(d, c, split=name))
    have = split_names(spec, where)
    if name not in have:
        none = "" if split == "train" else ", or null for none"
        raise UserError(f"{hub_name(spec)} has no split '{name}' (has: {', '.join(have)}); set "
                        f"{where}.hub_splits.{split} to the split crild's {split} split is{none}")
    return _call(spec, where, lambda d, c: datasets.load_dataset(d, c, split=name))
