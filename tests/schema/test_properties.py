"""Property-based tests (hypothesis): whatever configuration or data file a user writes,
crild ends in a valid run plan or in exit code 2 with one ``crild: error:`` line, never in a
traceback; well-formed data files read back exactly."""
import csv
import io
import json
import math
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import REPO, tiny_run_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.cli import main
from pipeline.config import RunConfig, TaskConfig, from_dict
from pipeline.data.sources import load_split
from pipeline.data.tasks import TASKS
from pipeline.errors import UserError
from pipeline.schema.explain import explain_rows
from pipeline.schema.loading import read_yaml
from pipeline.stages import STAGES

KEYS = [key for key, type_, _, _ in explain_rows(RunConfig) if type_ != "section"]
SECTIONS = [key for key, type_, _, _ in explain_rows(RunConfig) if type_ == "section"]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**40, max_value=2**40) | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
    | st.sampled_from(["auto", "cr-ild", "last", "clean", "ema", "..", ".", "/", "2e-4", "teacher", "nan", "-inf"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6)


def _set(raw: dict, dotted: str, value) -> None:
    node = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


@st.composite
def configurations(draw, folder: Path, model: Path, data: Path) -> str:
    """YAML text: the tiny test configuration with a few keys replaced by anything, unknown
    keys added, and sometimes a key written twice."""
    raw = tiny_run_config(folder, model, data)
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(KEYS + SECTIONS) | st.text(min_size=1, max_size=10).map(lambda t: "stages." + t))
        _set(raw, key, draw(values))
    text = yaml.safe_dump(raw, allow_unicode=True)
    if draw(st.booleans()):
        key = draw(st.sampled_from(sorted(raw)))
        text += yaml.safe_dump({key: draw(values)}, allow_unicode=True)  # the same top-level key again
    return text


def run_config_command(path: Path, capsys) -> tuple[int, str, str]:
    try:
        main(["config", str(path)])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


@SETTINGS
@given(draw=st.data())
def test_any_configuration_is_a_plan_or_one_line(tmp_path, capsys, tiny_bert, sentiment_dir, draw):
    """Through every check crild run makes before its first stage (the files there, each
    stage's DeepSpeed config, models and layer maps), on a real model and data."""
    path = tmp_path / "run.yaml"
    path.write_text(draw.draw(configurations(tmp_path, tiny_bert, sentiment_dir)), encoding="utf-8")
    code, out, err = run_config_command(path, capsys)
    if code == 0:
        plan = from_dict(yaml.safe_load(out), "printed")  # what it printed is itself a valid configuration
        assert all(math.isfinite(v) for v in _numbers(plan.model_dump()))
        assert not (tmp_path / "run").exists()  # validating writes nothing
    else:
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, (code, err)
        # the file's own mistakes name the file; a stage's, found by its checks, name the stage
        assert lines[0].startswith(f"crild: error: {path}") or "checked before the first stage runs)" in lines[0], \
            lines[0]


def _numbers(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _numbers(v)
    elif isinstance(node, list):
        for v in node:
            yield from _numbers(v)
    elif isinstance(node, float):
        yield node


@SETTINGS
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_as_a_configuration_are_one_line(tmp_path, capsys, data):
    path = tmp_path / "run.yaml"
    path.write_bytes(data)
    code, _, err = run_config_command(path, capsys)
    lines = err.strip().splitlines()
    assert code == 0 or (code == 2 and len(lines) == 1 and lines[0].startswith("crild: error: ")), (code, err)


# YAML 1.1's timestamps (a date, or a date and a time with an optional zone) and text near them
timestamps = st.from_regex(r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}([Tt ][0-9]{1,2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,3})?"
                           r"( ?Z| ?[+-][0-9]{1,2}(:[0-9]{2})?)?)?", fullmatch=True)
JSON_TYPES = (type(None), bool, int, float, str, list, dict)


def _json_typed(node) -> bool:
    if isinstance(node, dict):
        return all(_json_typed(k) and _json_typed(v) for k, v in node.items())
    if isinstance(node, list):
        return all(_json_typed(v) for v in node)
    return isinstance(node, JSON_TYPES)


@SETTINGS
@given(scalar=timestamps | st.text(alphabet="0123456789-:.TtZ+ ", min_size=1, max_size=24),
       key=st.sampled_from(["seed", "output_dir", "task.name", "stages.teacher.learning_rate", "pipeline", "2024-01-01"]),
       tag=st.sampled_from(["", "", "!!str ", "!!timestamp ", "!!binary ", "!!set ", "!!omap "]),
       as_key=st.booleans())
def test_yaml_is_read_as_json_types_or_refused_in_one_line(tmp_path, scalar, key, tag, as_key):
    """Whatever date-like text a file holds, bare or tagged, as a value or a key: it is read
    as JSON's types (a date stays text) and then validated, or refused in one line at its
    line; never a date, bytes or a set, which the copy before validation failed on."""
    *sections, last = key.split(".")
    text = "".join(f"{'  ' * i}{s}:\n" for i, s in enumerate(sections))
    indent = "  " * len(sections)
    text += f"{indent}? {tag}{scalar}\n{indent}: 1\n" if as_key else f"{indent}{last}: {tag}{scalar}\n"
    path = tmp_path / "run.yaml"
    path.write_text(text)
    try:
        raw = read_yaml(path)
    except UserError as err:
        assert "\n" not in str(err) and str(err).startswith(str(path)), err
        return
    assert _json_typed(raw), raw
    try:
        from_dict(raw, str(path))
    except UserError as err:
        assert "\n" not in str(err), err


blank_or_comments = st.lists(st.sampled_from(["", " ", "   ", "# seed: 1", "  # stages:", "#"]), max_size=4)
no_settings = st.tuples(st.sampled_from(["", "---"]), blank_or_comments, st.sampled_from(["", "null", "~"]),
                        blank_or_comments).map(lambda p: "\n".join([p[0], *p[1], p[2], *p[3]]))


@SETTINGS
@given(text=no_settings, name=st.sampled_from(["run.yaml", "base.yml"]))
def test_a_file_without_settings_is_refused_not_read_as_every_default(tmp_path, capsys, text, name):
    """Empty, or blank lines, comments and YAML's null alone: one line naming the file, where
    it used to start the default run; a file of {} is the way to ask for every default."""
    path = tmp_path / name
    path.write_text(text)
    code, out, err = run_config_command(path, capsys)
    assert (code, out) == (2, "") and err == (f"crild: error: {path}: has no settings (the file is empty, or blank "
                                              f"lines and comments only); write {{}} in it to take every default\n")
    path.write_text("# every default, on purpose\n{}\n")
    assert read_yaml(path) == {}


# --------------------------------------------------------------------------- data files

texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
rows_strategy = st.lists(st.tuples(texts, st.sampled_from(["fresh", "rotten"])), min_size=1, max_size=8)
SPEC = TASKS["rotten_tomatoes"]
FORMATS = ["csv", "tsv", "jsonl", "parquet"]


def _write(folder: Path, fmt: str, rows, bom: bool, header: tuple = ("sentence", "label")) -> Path:
    path = folder / f"train.{fmt}"
    if fmt == "parquet":  # binary: no byte-order mark
        pq.write_table(pa.table({header[0]: [t for t, _ in rows], header[1]: [y for _, y in rows]}), path)
        return path
    if fmt == "jsonl":
        text = "".join(json.dumps({header[0]: t, header[1]: y}, ensure_ascii=False) + "\n" for t, y in rows)
    else:
        buf = io.StringIO(newline="")
        writer = csv.writer(buf, delimiter="," if fmt == "csv" else "\t")  # Excel's dialect: \r\n, quoted \r
        writer.writerow(header)
        writer.writerows(rows)
        text = buf.getvalue()
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


@SETTINGS
@given(rows=rows_strategy, fmt=st.sampled_from(FORMATS), bom=st.booleans())
def test_well_formed_files_read_back_exactly(tmp_path_factory, rows, fmt, bom):
    folder = tmp_path_factory.mktemp("data")
    _write(folder, fmt, rows, bom)
    ex = load_split(TaskConfig(data_dir=str(folder)), SPEC, "train")
    kept = [(t, y) for t, y in rows]
    assert ex.text_a == [t for t, _ in kept]
    assert ex.labels.tolist() == [SPEC.labels.index(y) for _, y in kept]


@SETTINGS
@given(rows=rows_strategy, fmt=st.sampled_from(FORMATS), cut=st.integers(0, 400),
       junk=st.binary(max_size=20), encoding=st.sampled_from(["utf-8", "latin-1", "utf-16", "cp1252"]))
def test_damaged_files_are_read_or_one_line(tmp_path_factory, rows, fmt, cut, junk, encoding):
    folder = tmp_path_factory.mktemp("data")
    path = _write(folder, fmt, rows, False)
    data = path.read_bytes()
    if fmt != "parquet":
        data = data.decode("utf-8").encode(encoding, errors="replace")
    path.write_bytes(data[:cut] + junk + data[cut:])
    try:
        ex = load_split(TaskConfig(data_dir=str(folder)), SPEC, "train")
    except UserError as err:
        message = str(err)
        assert "\n" not in message and str(path) in message, message
        return
    assert len(ex) >= 1 and set(ex.labels.tolist()) <= {0, 1}


@SETTINGS
@given(revision=st.text(alphabet="0123456789abcdefABCDEFghz-_/ ", max_size=44)
       | st.text(alphabet="0123456789abcdef", min_size=40, max_size=40))
def test_a_hub_revision_is_a_full_commit_hash_or_one_line(revision):
    """Only 40 lowercase hex digits pin a dataset; anything else (a branch, a short hash, a
    hash in capitals, which the cache's folders never are) is one line naming the key."""
    task = {"name": "tones", "labels": ["a", "b"], "hub": "someone/tones", "hub_revision": revision}
    is_commit = len(revision) == 40 and all(c in "0123456789abcdef" for c in revision)
    try:
        assert from_dict({"task": task}).task.hub_revision == revision and is_commit
    except UserError as err:
        assert not is_commit and "\n" not in str(err) and "task.hub_revision: expected the full commit hash" in str(err)


@SETTINGS
@given(parts=st.lists(st.sampled_from(["runs", "/", "x_1", "$", "{", "}", "$$", "$CRILD_A", "${CRILD_A}", "$CRILD_B",
                                       "${CRILD_B}", "$CRILD_UNSET", "${CRILD_UNSET}", "$1", "~", "-"]),
                      min_size=1, max_size=6),
       a=st.text(alphabet="abc/ ._-$", min_size=1, max_size=8))
def test_environment_variables_in_paths_expand_as_the_shells_do_or_are_one_line(parts, a, monkeypatch):
    """Where every variable a path names is set, it reads as Python's expandvars (the shell's
    rule for $NAME and ${NAME}) reads it, in one pass; where one is not, one line names it."""
    import os

    monkeypatch.setenv("CRILD_A", a)
    monkeypatch.setenv("CRILD_B", "/b")
    monkeypatch.delenv("CRILD_UNSET", raising=False)
    path = "".join(parts)
    names = [m.group(1) or m.group(2) for m in re.finditer(r"\$\{([A-Za-z_]\w*)\}|\$([A-Za-z_]\w*)", path)]
    unset = [name for name in names if not os.environ.get(name)]  # '$' + 'runs' names $runs
    try:
        got = from_dict({"output_dir": path}).output_dir
    except UserError as err:
        assert unset and "\n" not in str(err)
        assert f"whose environment variable {unset[0]} is not set here" in str(err)
        return
    assert not unset and path.strip()
    expected = "".join(os.path.expandvars(p) if p.startswith("$") else p for p in re.split(
        r"(\$\{[A-Za-z_]\w*\}|\$[A-Za-z_]\w*)", path))  # one pass: a value's own '$' is not read again
    assert got == os.path.expanduser(expected)


@settings(SETTINGS, max_examples=25)  # a dataset written and loaded through datasets each: slower than a file
@given(rows=rows_strategy, by_id=st.booleans())
def test_a_hub_datasets_rows_read_back_exactly(tmp_path_factory, rows, by_id):
    """A local copy of a hub dataset, its label a class label numbered otherwise than the
    task lists its labels (or plain names): read as its rows, the labels by name."""
    import datasets
    from helpers import write_hub_copy

    from pipeline.data.tasks import task_spec

    names = ["fresh", "rotten"]  # the task lists rotten, fresh
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=names) if by_id else datasets.Value("string")})
    folder = write_hub_copy(tmp_path_factory.mktemp("hub"), {"train": [
        {"text": t, "label": names.index(y) if by_id else y} for t, y in rows]}, features)
    task = TaskConfig(name="reviews", labels=["rotten", "fresh"], hub=str(folder), columns={"text_a": "text"},
                      hub_splits={"dev": None, "test": None})
    ex = load_split(task, task_spec(task), "train")
    assert ex.text_a == [t for t, _ in rows]
    assert ex.labels.tolist() == [["rotten", "fresh"].index(y) for _, y in rows]


def test_properties_run_on_the_real_readers():
    """Guard: the generated data goes through the same entry point every stage uses."""
    assert load_split.__module__ == "pipeline.data.sources" and REPO.is_dir()
    with pytest.raises(UserError):
        load_split(TaskConfig(data_dir="/nonexistent-crild"), SPEC, "train")


@SETTINGS
@given(st.lists(st.sampled_from(list(STAGES)), max_size=8), st.lists(st.sampled_from(["a", "b", "c"]), max_size=4))
def test_lists_are_accepted_exactly_when_each_entry_is_once_and_in_running_order(stages, models):
    """pipeline: at least one stage, each once, in the registry's order; evaluate.models: each
    folder once. Anything else is one line naming the list and the offending entry."""
    pipeline_ok = bool(stages) and stages == sorted(set(stages), key=list(STAGES).index)
    models_ok = len(set(models)) == len(models)
    try:
        cfg = from_dict({"pipeline": stages, "stages": {"evaluate": {"models": models}}})
    except UserError as exc:
        message = str(exc)
        assert not (pipeline_ok and models_ok) and "\n" not in message
        assert message.startswith("<config>: pipeline: " if not pipeline_ok else "<config>: stages.evaluate.models: ")
        if stages and not pipeline_ok:
            assert "listed twice" in message or "is listed after" in message
    else:
        assert pipeline_ok and models_ok and cfg.pipeline == stages and cfg.stages.evaluate.models == models
