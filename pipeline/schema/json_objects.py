"""JSON objects that name a key twice. Python's json keeps the last value without a word;
crild's YAML loader refuses a repeated key, and the JSON it reads (DeepSpeed configs, JSONL
records) is held to the same rule."""
from __future__ import annotations

from typing import Optional


def repeated_key(pairs: list) -> Optional[str]:
    """The first key named twice among an object's (key, value) pairs, or None."""
    seen = set()
    for key, _ in pairs:
        if key in seen:
            return key
        seen.add(key)
    return None


class RepeatedKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def unique_object(pairs: list) -> dict:
    """``json.loads``' object_pairs_hook for files whose every object must name each key once."""
    record = dict(pairs)
    if len(record) < len(pairs):
        raise RepeatedKey(repeated_key(pairs))
    return record


class Record(dict):
    """A JSON object as read, with the first key it names twice (``repeated``), for files where
    only the top-level object's keys matter (a JSONL record's columns)."""
    repeated = None


def marked_object(pairs: list) -> Record:
    """``json.loads``' object_pairs_hook that marks rather than refuses a repeated key."""
    record = Record(pairs)
    if len(record) < len(pairs):
        record.repeated = repeated_key(pairs)
    return record
