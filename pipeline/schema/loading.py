"""Reading configuration files: YAML that refuses duplicate keys, ``section.key=value``
overrides applied before validation, and any validation error turned into one line that
names the file, the dotted key, what was expected and what was given."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.errors import UserError
from pipeline.schema.messages import error_line
from pipeline.schema.nesting import check_shape, too_deep
from pipeline.schema.paths import read_utf8, shipped

M = TypeVar("M", bound=BaseModel)


class DuplicateKey(yaml.YAMLError):
    def __init__(self, key, first: int, second: int):
        super().__init__(f"duplicate key '{key}'")
        self.key, self.first, self.second = key, first, second


TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
# tags yaml.safe_load turns into values JSON has no form for: a configuration is JSON's types
NOT_PLAIN_TAGS = {"binary": "bytes", "set": "a set", "timestamp": "a date"}


class UnsupportedTag(yaml.YAMLError):
    def __init__(self, tag: str, line: int):
        super().__init__(f"tag !!{tag}")
        self.tag, self.line = tag, line


class _PlainLoader(yaml.SafeLoader):
    """yaml.safe_load, reading JSON's types only (YAML 1.2's core schema): text that looks like
    a date (``output_dir: 2024-01-01``, ``seed: 2024-01-01``) stays text, where PyYAML's YAML
    1.1 makes a date that no setting takes and no record can hold, and a tag asking for bytes,
    a set or a date is refused at its line."""


_PlainLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != TIMESTAMP_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def _refuse_tag(name: str):
    def construct(loader: _PlainLoader, node: yaml.Node):
        raise UnsupportedTag(name, node.start_mark.line + 1)
    return construct


for _name in NOT_PLAIN_TAGS:
    _PlainLoader.add_constructor(f"tag:yaml.org,2002:{_name}", _refuse_tag(_name))


def unsupported_tag(where: str, err: UnsupportedTag) -> UserError:
    """``where`` names the file and line, or the override."""
    return UserError(f"{where}: tag !!{err.tag} makes {NOT_PLAIN_TAGS[err.tag]}, which no setting takes; "
                     f"expected text, a number, true/false, null, a list or a mapping")


def plain_load(text: str):
    """One YAML document as JSON's types (see ``_PlainLoader``)."""
    loader = _PlainLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


class _UniqueKeyLoader(_PlainLoader):
    """``plain_load``, except that a key given twice in one mapping is an error (PyYAML
    keeps the last value silently, even for whole sections)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.setdefault(key, key_node.start_mark.line + 1)
        except TypeError:  # an unhashable key: PyYAML's own error follows
            continue
        if first != key_node.start_mark.line + 1:
            raise DuplicateKey(key, first, key_node.start_mark.line + 1)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: str | os.PathLike, what: str = "config file") -> dict:
    """The mapping at the top of a YAML file. A file with no settings at all (empty, or blank
    lines and comments only) is refused: it is far likelier a file not yet written, or one
    truncated, than a wish for every default, and as {} it would start the default run (the
    whole pipeline on the offline model) where the user meant their own. ``{}`` says that."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; expected a {what} (YAML)")
    if not path.is_file():
        bundled = None if path.exists() or path.is_absolute() else shipped(str(path))
        raise UserError(f"{path}: not a regular file (a pipe or a device); expected a {what} (YAML)"
                        if path.exists() else f"{path}: {what} not found" + (
                            f" here; crild's own {path} is {bundled}" if bundled else ""))
    text, loader = read_utf8(path), None
    try:
        loader = _UniqueKeyLoader(text)  # checks the characters already
        raw = loader.get_single_data()
    except DuplicateKey as err:
        raise UserError(f"{path}: duplicate key '{err.key}' on lines {err.first} and {err.second}; "
                        f"a key may appear once per section") from None
    except UnsupportedTag as err:
        raise unsupported_tag(f"{path}: line {err.line}", err) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where} is not valid YAML ({getattr(err, 'problem', err)})") from None
    except RecursionError:
        raise too_deep(str(path)) from None
    finally:
        if loader is not None:
            loader.dispose()
    if raw is None:
        raise UserError(f"{path}: has no settings (the file is empty, or blank lines and comments only); "
                        + ("write {} in it to take every default" if what == "config file" else f"expected a {what}"))
    check_shape(raw, str(path))
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def parse_override(text: str) -> tuple[str, Any]:
    """``section.key=value`` with the value read as YAML (``a=[1, 2]``, ``b=null``)."""
    if "=" not in text or text.startswith("="):
        second = "; a command reads one configuration file, and this looks like a second" \
            if text.lower().endswith((".yaml", ".yml")) else ""
        raise UserError(f"override '{text}': expected section.key=value{second}")
    key, _, value = text.partition("=")
    where = f"override '{key.strip()}=...'"
    try:
        parsed = plain_load(value) if value.strip() else value  # a blank is what was written, not null
    except UnsupportedTag as err:
        raise unsupported_tag(where, err) from None
    except yaml.YAMLError:
        parsed = value
    except RecursionError:
        raise too_deep(where) from None
    check_shape(parsed, where)
    return key.strip(), parsed


def apply_override(raw: dict, text: str, source: str) -> None:
    dotted, value = parse_override(text)
    where = f"{source} (override '{text}')"
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"{where}: override '{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def validate(model: type[M], raw: dict, source: str, overrides: list[str] | None = None,
             context: dict | None = None) -> M:
    """``raw`` (plus overrides) as a ``model``; any problem is one UserError line. ``context``
    reaches the model's validators (pydantic's validation context)."""
    raw = json.loads(json.dumps(raw))  # deep copy, plain types only
    for text in overrides or []:
        apply_override(raw, text, source)
    try:
        return model.model_validate(raw, context=context)
    except ValidationError as err:
        raise UserError(error_line(err, model, source, overrides)) from None
