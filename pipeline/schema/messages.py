"""pydantic's validation errors as crild's one-line messages: the file, the dotted key
(``stages.distill.supplementary[0].ratio``), what was expected, what was given, and for a
misspelt key or choice the nearest valid one."""
from __future__ import annotations

import difflib
import re
import reprlib
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError


@dataclass(frozen=True)
class Expect:
    """Annotated metadata: what a value of this type is, in the words of an error message
    ("a ratio in [0, 1)")."""

    text: str


# pydantic error type -> how the expected value reads
_TYPE_WORDS = {"int_type": "an integer", "int_from_float": "an integer", "float_type": "a number",
               "bool_type": "true or false", "string_type": "a string", "list_type": "a list",
               "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
               "tuple_type": "a list"}
_BOUNDS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number"}
CUSTOM = "crild"


def field_error(message: str, key: str | None = None) -> PydanticCustomError:
    """An error raised by a validator: ``message`` shown as is, under the validated model's
    key plus ``key`` (for cross-field checks that blame one field)."""
    return PydanticCustomError(CUSTOM, "{message}", {"message": message, "key": key or ""})


def suggest(name: str, names, cutoff: float = 0.4) -> str:
    """'; did you mean 'x'?' for the nearest of ``names``, or ''."""
    names = [str(n) for n in names]
    by_case = {n.casefold(): n for n in names}
    near = difflib.get_close_matches(str(name).casefold(), list(by_case), n=1, cutoff=cutoff)
    return f"; did you mean '{by_case[near[0]]}'?" if near else ""


def dotted(loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def strip_annotation(tp) -> tuple[Any, list]:
    """Unwrap Annotated[...] and Optional[...], collecting the Annotated metadata."""
    meta: list = []
    while True:
        if typing.get_origin(tp) is typing.Annotated:
            args = typing.get_args(tp)
            tp, meta = args[0], meta + list(args[1:])
            continue
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
            tp = args[0]
            continue
        return tp, meta


def annotation_at(model: type, loc) -> tuple[Any, list]:
    """The type at ``loc`` inside ``model`` and the metadata (bounds, Expect) it carries."""
    tp, meta = model, []
    for part in loc:
        tp, _ = strip_annotation(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(part)
            if field is None:
                return None, []
            tp, meta = field.annotation, list(field.metadata)
        elif typing.get_origin(tp) in (list, tuple):
            tp, meta = typing.get_args(tp)[0], []
        elif typing.get_origin(tp) is dict:
            tp, meta = typing.get_args(tp)[1 if part != "[key]" else 0], []
        else:
            return None, []
    tp, more = strip_annotation(tp)
    return tp, meta + more


def bounds_text(meta: list, integer: bool) -> str:
    parts = []
    for m in meta:
        for attr, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(m, attr, None) is not None:
                parts.append(f"{op} {getattr(m, attr)}")
    noun = "an integer" if integer else "a finite number"
    return f"{noun} {' and '.join(parts)}".strip()


def _choices_text(choices) -> str:
    words = [str(c) for c in choices]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def _short_repr() -> reprlib.Repr:
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxdict, r.maxstring, r.maxother = 2, 4, 4, 80, 80
    return r


_SHORT = _short_repr()


def _given(value, with_type: bool = True) -> str:
    """The value as given, cut to a few dozen characters: a message stays one short line
    whatever was put where a number or a name belongs."""
    if value is None:
        return "null"
    return f"{_SHORT.repr(value)} ({type(value).__name__})" if with_type else _SHORT.repr(value)


def key_paths(model: type, name: str, prefix: str = "", depth: int = 0) -> list[str]:
    """Every dotted key of ``model`` whose last part is ``name`` (``max_length`` ->
    ``task.max_length``; ``epochs`` -> ``stages.teacher.epochs``, ...), a section's own before
    those of the sections in it, list items as ``[i]``."""
    found, nested = [], []
    for field_name, field in model.model_fields.items():
        key = f"{prefix}{field_name}"
        if field_name == name:
            found.append(key)
        tp, _ = strip_annotation(field.annotation)
        if typing.get_origin(tp) in (list, tuple) and typing.get_args(tp):
            tp, key = strip_annotation(typing.get_args(tp)[0])[0], f"{key}[i]"
        if isinstance(tp, type) and issubclass(tp, BaseModel) and depth < 6:
            nested.append((tp, f"{key}."))
    for tp, sub in nested:
        found += key_paths(tp, name, sub, depth + 1)
    return found


def nearest_first(keys: list[str], section: list[str]) -> list[str]:
    """``keys`` inside ``section`` (where the user put the key) first, then the shallowest."""
    def inside(key: str) -> bool:
        return key.replace("[i]", "").split(".")[:len(section)] == section
    return sorted(keys, key=lambda key: (not inside(key), key.count(".")))


def describe(err: dict, model: type) -> str:
    """One error (an entry of ValidationError.errors()) as 'key: expected ..., got ...'."""
    loc = list(err["loc"])
    kind = err["type"]
    key_error = bool(loc) and loc[-1] == "[key]"  # a mapping's key, not its value, is wrong
    if kind == CUSTOM:
        loc = loc[:-2] if key_error else loc
        ctx = err["ctx"]
        key = dotted(loc + ([ctx["key"]] if ctx.get("key") else []))
        return f"{key}: {ctx['message']}" if key else ctx["message"]
    if kind == "extra_forbidden":
        parent, _ = strip_annotation(annotation_at(model, loc[:-1])[0])
        names = list(parent.model_fields) if isinstance(parent, type) and issubclass(parent, BaseModel) else []
        # a key of another section, put in this one: where it belongs
        elsewhere = nearest_first(key_paths(model, str(loc[-1])), [str(p) for p in loc[:-1]])
        hint = (f"; '{loc[-1]}' is a key of another section: {' or '.join(elsewhere[:3])}"
                + (f" (and {len(elsewhere) - 3} more)" if len(elsewhere) > 3 else "")) if elsewhere else \
            suggest(loc[-1], names, cutoff=0.5) or (f"; valid keys: {', '.join(names)}" if names else "")
        return f"unknown key '{dotted(loc)}'{hint}"
    where = dotted(loc[:-2] if key_error else loc)
    tp, meta = annotation_at(model, loc)
    expect = next((m.text for m in meta if isinstance(m, Expect)), None)
    value = err.get("input")
    if kind == "literal_error":
        choices = typing.get_args(tp) if typing.get_origin(tp) is Literal else ()
        return (f"{where}: expected {expect or _choices_text(choices)}, got {_given(value, False)}"
                f"{suggest(value, choices) if isinstance(value, str) else ''}")
    if kind in _BOUNDS:
        return f"{where}: expected {expect or bounds_text(meta, tp is int)}, got {value}"
    if kind == "missing":
        return f"{where}: required"
    words = _TYPE_WORDS.get(kind)
    if words is None:  # a pydantic message crild has no wording for: keep pydantic's
        return f"{where}: {err['msg'][0].lower()}{err['msg'][1:]}, got {_given(value)}"
    hint = ""
    if kind in ("list_type", "tuple_type") and isinstance(value, str) and value.strip():
        items = ", ".join(part.strip() for part in value.split(","))
        hint = f"; YAML writes a list in brackets: [{items}]"  # a comma-separated string: the brackets forgotten
    return f"{where}: expected {words}, got {_given(value)}{hint}"


def error_line(err: ValidationError, model: type, source: str, overrides: list[str] | None = None) -> str:
    """The first problem (unknown keys before anything else) of a validation error, placed
    in the command-line override that set the key (or a section above it) when one did: the
    file does not hold the value it would otherwise be blamed for. A problem of a whole
    section (two of its keys at odds) is the file's, and also the override's that set the key
    the check blames or a key the message names."""
    errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
    where = ".".join(str(part) for part in errors[0]["loc"])
    text = describe(errors[0], model)
    # the key a section's check blames (field_error's key): task.labels of a check on task
    blamed = f"{where}.{errors[0]['ctx']['key']}" if errors[0]["type"] == CUSTOM and errors[0]["ctx"].get("key") else None
    keys = [o.partition("=")[0].strip() for o in reversed(overrides or [])]  # the last of a key holds
    owner = next((key for key in keys if where == key or where.startswith(key + ".")), None)
    named = [key for key in dict.fromkeys(keys) if where and key.startswith(where + ".") and (
        (blamed is not None and (blamed == key or blamed.startswith(key + ".")))
        or re.search(rf"(?<![\w.]){re.escape(key.rpartition('.')[2])}(?!\w)", text))]
    if owner is not None:
        source = f"override '{owner}=...'"
    elif named:
        quoted = ", ".join(f"'{key}=...'" for key in named)
        source = f"{source} with override{'s' if len(named) > 1 else ''} {quoted}"
    return f"{source}: {text}"
