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


# a field's json_schema_extra: how often a run checkpoints and logs, which never changes what it writes
BOOKKEEPING = {"bookkeeping": True}


def settings_dict(cfg, bookkeeping: bool = True):
    """Like to_dict, without the fields left at their defaults (and without the
    bookkeeping fields, when ``bookkeeping`` is False)."""
    if isinstance(cfg, BaseModel):
        out = {}
        for name, field in type(cfg).model_fields.items():
            if not bookkeeping and field.json_schema_extra == BOOKKEEPING:
                continue
            value, default = getattr(cfg, name), field.get_default(call_default_factory=True)
            if to_dict(value) == to_dict(default):
                continue
            sub = settings_dict(value, bookkeeping)
            if not bookkeeping and isinstance(value, BaseModel) and sub == settings_dict(default, bookkeeping):
                continue  # a section that differs from its default in bookkeeping settings alone
            out[name] = sub
        return out
    if isinstance(cfg, (list, tuple)):
        return [settings_dict(v, bookkeeping) for v in cfg]
    if isinstance(cfg, dict):
        return {k: settings_dict(v, bookkeeping) for k, v in cfg.items()}
    return cfg


def output_settings(cfg):
    """What of ``cfg`` an output depends on: its settings less the bookkeeping ones
    (checkpoint and log frequency), so that changing how often a run checkpoints or logs
    neither redoes a finished stage nor abandons the checkpoints of an interrupted one."""
    return settings_dict(cfg, bookkeeping=False)


def config_hash(obj) -> str:
    """Stable 16-hex-digit hash of a model (its non-default settings) or of plain data."""
    data = settings_dict(obj) if isinstance(obj, BaseModel) else obj
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def dump_yaml(cfg) -> str:
    """The whole model as YAML, every default filled in (what ``crild config`` prints and
    what every output keeps as config.resolved.yaml)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
