"""``crild config --explain``: every key of a configuration model with its type, default
and help text, read from the model itself (the help lives on the fields)."""
from __future__ import annotations

import json
import typing
from typing import Literal

from pydantic import BaseModel

from pipeline.schema.hashing import BOOKKEEPING, to_dict
from pipeline.schema.messages import Expect, bounds_text, strip_annotation
from pipeline.schema.types import yaml_text


def type_text(annotation, metadata: list) -> str:
    tp, meta = strip_annotation(annotation)
    meta = list(metadata) + meta
    optional = type(None) in typing.get_args(annotation)
    expect = next((m.text for m in meta if isinstance(m, Expect)), None)
    if expect:
        text = expect
    elif typing.get_origin(tp) is Literal:
        text = " | ".join(str(a) for a in typing.get_args(tp))
    elif isinstance(tp, type) and issubclass(tp, BaseModel):
        text = "section"
    elif typing.get_origin(tp) in (list, dict):
        text = {list: "list", dict: "mapping"}[typing.get_origin(tp)]
        args = [type_text(a, [])[0] for a in typing.get_args(tp)]
        text += f" of {' -> '.join(args)}" if args else ""
    elif any(hasattr(m, a) for m in meta for a in ("ge", "gt", "le", "lt")):
        text = bounds_text(meta, tp is int)
    else:
        text = {int: "integer", float: "number", str: "string", bool: "true | false"}.get(tp, getattr(tp, "__name__",
                                                                                               str(tp)))
    return text + (" or null" if optional else ""), tp


def explain_rows(model: type[BaseModel], defaults: BaseModel | None = None,
                 prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, help) for every field, a section before its keys. A
    section's defaults are its default instance's (``stages.distill.kd`` has its own)."""
    rows = []
    for name, field in model.model_fields.items():
        key = prefix + name
        text, tp = type_text(field.annotation, field.metadata)
        default = getattr(defaults, name) if defaults is not None else field.get_default(call_default_factory=True)
        help_ = field.description or ""
        if name in getattr(model, "read_only_with", {}):
            decider, reading = model.read_only_with[name]
            help_ += f" (used only with {decider}: {' or '.join(map(yaml_text, reading))})"
        if field.json_schema_extra == BOOKKEEPING:
            help_ += " (bookkeeping: changing it neither redoes a finished stage nor drops checkpoints)"
        if isinstance(default, BaseModel):
            rows.append((key, text, "", help_))
            rows += explain_rows(type(default), default, key + ".")
            continue
        rows.append((key, text, json.dumps(to_dict(default)), help_))
    return rows


def explain(model: type[BaseModel]) -> str:
    rows = explain_rows(model)
    width = max(len(r[0]) for r in rows)
    lines = []
    for key, text, default, help_ in rows:
        head = f"{key.ljust(width)}  {text}" + (f" (default {default})" if default else "")
        lines.append(head)
        if help_:
            lines.append(" " * (width + 2) + help_)
    return "\n".join(lines) + "\n"
