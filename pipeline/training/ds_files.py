"""Reading a DeepSpeed JSON file: its path resolved, its text or its JSON object, or one
line saying what is wrong. No torch or DeepSpeed here: the configuration checks and the
stage fingerprints read these files before any engine exists."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import UserError
from pipeline.schema.json_objects import RepeatedKey, unique_object
from pipeline.schema.nesting import check_shape, too_deep
from pipeline.schema.paths import read_utf8, resolve_path


def read_ds_text(path: str, source: str) -> tuple[Path, str]:
    """A DeepSpeed config file's path and text (UTF-8), or one line saying what is wrong."""
    p = resolve_path(path, "deepspeed_config", source)
    if not p.is_file():
        raise UserError(f"{source}: deepspeed_config: '{path}' is not a file")
    return p, read_utf8(p)


def load_ds_json(path: str, source: str) -> tuple[Path, dict]:
    p, text = read_ds_text(path, source)
    try:
        data = json.loads(text, object_pairs_hook=unique_object)
    except json.JSONDecodeError as err:
        raise UserError(f"{p}: not valid JSON (line {err.lineno}: {err.msg})") from None
    except RepeatedKey as err:  # DeepSpeed would take the last without a word
        raise UserError(f"{p}: key '{err.key}' appears twice in one object; a key may appear once per "
                        f"section") from None
    except RecursionError:
        raise too_deep(str(p)) from None
    check_shape(data, str(p))
    if not isinstance(data, dict):
        raise UserError(f"{p}: expected a JSON object")
    return p, data
