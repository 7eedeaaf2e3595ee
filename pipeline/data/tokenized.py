"""Tokenize examples with a fast tokenizer and cache the result as an Arrow dataset
keyed by the examples' content, the tokenizer and the maximum length."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.data.sources import Examples, crild_home
from pipeline.errors import NO_SPACE_ERRNOS, one_error
from pipeline.outputs.atomic import renamed_into_place
from pipeline.outputs.lock import is_main_rank

if TYPE_CHECKING:  # imported where a dataset is built or read: it costs half a second to import
    import datasets

TOKENIZE_BATCH = 2048


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        payload = repr(sorted(tokenizer.get_vocab().items()))
    else:  # drop the call-time truncation/padding state, which tokenizing itself changes
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        payload = json.dumps(spec, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def examples_fingerprint(ex: Examples) -> str:
    h = hashlib.sha256()
    for text in ex.text_a:
        h.update(text.encode())
        h.update(b"\x00")
    h.update(b"\x01")
    for text in ex.text_b or []:
        h.update(text.encode())
        h.update(b"\x00")
    h.update(ex.labels.tobytes())
    h.update(ex.ids.tobytes())
    return h.hexdigest()[:16]


def cache_key(ex: Examples, tokenizer, max_length: int) -> str:
    return f"{examples_fingerprint(ex)}-{tokenizer_fingerprint(tokenizer)}-{max_length}"


def _tokenize(ex: Examples, tokenizer, max_length: int) -> datasets.Dataset:
    import datasets

    cols = {"input_ids": [], "token_type_ids": [], "length": []}
    for start in range(0, len(ex), TOKENIZE_BATCH):
        a = ex.text_a[start:start + TOKENIZE_BATCH]
        b = ex.text_b[start:start + TOKENIZE_BATCH] if ex.text_b is not None else None
        enc = tokenizer(a, b, truncation=True, max_length=max_length, padding=False,
                        return_token_type_ids=True, return_attention_mask=False)
        cols["input_ids"].extend(enc["input_ids"])
        cols["token_type_ids"].extend(enc["token_type_ids"])
        cols["length"].extend(len(x) for x in enc["input_ids"])
    cols["label"] = ex.labels.tolist()
    cols["example_id"] = ex.ids.tolist()
    return datasets.Dataset.from_dict(cols)


def tokenize_cached(ex: Examples, tokenizer, max_length: int, cache_dir: Path | None = None) -> datasets.Dataset:
    """The tokenized dataset for ``ex``; built once and reused by every later stage and run.
    Written under a temporary name and renamed, so a killed run never leaves half a cache."""
    import datasets

    cache_dir = Path(cache_dir or crild_home() / "tokenized")
    final = cache_dir / cache_key(ex, tokenizer, max_length)
    if (final / "dataset_info.json").is_file():
        return datasets.load_from_disk(str(final))
    ds = _tokenize(ex, tokenizer, max_length)
    try:
        with renamed_into_place(final) as tmp:  # another rank or run may finish first: theirs is kept
            ds.save_to_disk(str(tmp))
    except OSError as err:
        if err.errno in NO_SPACE_ERRNOS:  # a full disk is said as one, with where to free space
            raise
        _note_unwritable(cache_dir, err)
        return ds
    return datasets.load_from_disk(str(final))


_noted: set[Path] = set()


def _note_unwritable(cache_dir: Path, err: OSError) -> None:
    """The tokenized data is a cache: where it cannot be kept (a CRILD_HOME shared read-only,
    with the offline data prepared once for everyone), the stage tokenizes in memory, as a
    run would the first time, and says so once, on rank 0."""
    if cache_dir in _noted or not is_main_rank():
        return
    _noted.add(cache_dir)
    print(f"crild: note: the tokenized-data cache {cache_dir} cannot be written ({err.strerror or one_error(err)}); "
          f"tokenizing in memory, anew in each stage (set CRILD_HOME to a folder you can write to keep it)", flush=True)
