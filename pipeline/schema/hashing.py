"""Plain data and stable hashes of configuration models. Hashes cover only the settings
that differ from the defaults, so that a new option (whose default keeps the old behaviour)
does not invalidate finished stages, checkpoints or study records after an upgrade."""
from __future__ import annotations

import hashlib
import json

import yaml
from pydantic import BaseModel


def to_dict(cfg):
    """Plain data (dicts, lists, scalars) of a model or any part of it, in field order."""
    if isinstance(cfg, BaseModel):
        return {name: to_dict(getattr(cfg, name)) for name in type(cfg).model_fields}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def settings_dict(cfg):
    """Like to_dict, without the fields left at their defaults."""
    if isinstance(cfg, BaseModel):
        out = {}
        for name, field in type(cfg).model_fields.items():
            value = getattr(cfg, name)
            if to_dict(value) != to_dict(field.get_default(call_default_factory=True)):
                out[name] = settings_dict(value)
        return out
    if isinstance(cfg, (list, tuple)):
        return [settings_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: settings_dict(v) for k, v in cfg.items()}
    return cfg


def config_hash(obj) -> str:
    """Stable 16-hex-digit hash of a model (its non-default settings) or of plain data."""
    data = settings_dict(obj) if isinstance(obj, BaseModel) else obj
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def dump_yaml(cfg) -> str:
    """The whole model as YAML, every default filled in (what ``crild config`` prints and
    what every output keeps as config.resolved.yaml)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
