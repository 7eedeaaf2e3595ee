"""Read a task's raw examples from a GLUE directory, local JSONL, CSV, TSV or Parquet files,
the prepared offline data, or the hub (``datasets.load_dataset``)."""
from __future__ import annotations

import csv
import io
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from pipeline.data.columns import pair_hint, text_columns
from pipeline.data.hub_data import hub_name, is_own_hub, load_hub_split, split_names, unpinned_commit
from pipeline.data.parquet import column_values, read_parquet
from pipeline.data.tasks import TABLE_SUFFIXES, TASKS, GlueFile, TaskSpec, table_files
from pipeline.errors import UserError, clipped, shown
from pipeline.runtime import environment, hub
from pipeline.schema.json_objects import marked_object
from pipeline.schema.messages import suggest
from pipeline.schema.nesting import too_deep
from pipeline.schema.paths import read_utf8

if TYPE_CHECKING:
    from pipeline.config import TaskConfig

UNLABELLED = -1

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass
class Examples:
    """Raw examples of one split. ``labels`` holds class indices (int64), scores
    (float32, regression) or UNLABELLED."""

    text_a: list
    text_b: Optional[list]
    labels: np.ndarray
    source: str = ""
    ids: np.ndarray = field(default=None)  # position in the original file
    notes: list = field(default_factory=list)  # what a stage should say about how the file was read
    commit_note: Optional[str] = None  # of those, the commit an unpinned hub dataset was read at

    def __post_init__(self):
        if self.ids is None:
            self.ids = np.arange(len(self.text_a))

    def __len__(self) -> int:
        return len(self.text_a)

    @property
    def labelled(self) -> bool:
        return len(self.labels) > 0 and bool((self.labels != UNLABELLED).all())

    def select(self, idx) -> "Examples":
        idx = np.asarray(idx, dtype=np.int64)
        return Examples([self.text_a[i] for i in idx],
                        None if self.text_b is None else [self.text_b[i] for i in idx],
                        self.labels[idx].copy(), self.source, self.ids[idx].copy(), list(self.notes))


def _by_row(path) -> bool:
    """Whether records of ``path`` are counted in rows (a Parquet file, a hub dataset), not lines."""
    return not str(path).endswith((".jsonl", ".csv", ".tsv"))


def _at(path, n: int) -> str:
    """Where record ``n`` of ``path`` is, as a message names it: its line in a text file, its
    row in a Parquet file or a hub dataset, which have no lines."""
    return f"{path}: row {n}" if _by_row(path) else f"{path}:{n}"


def crild_home() -> Path:
    return environment.crild_home()


def offline_data_dir() -> Path:
    return crild_home() / "data"


# --------------------------------------------------------------------------- labels


def _as_written(value) -> str:
    """A label value as its file writes it: text quoted, anything else as JSON (``true``,
    ``NaN``, ``["bug"]``, not Python's ``True``, ``nan``, ``['bug']``)."""
    if isinstance(value, str):
        return clipped(repr(value), 80)
    try:
        return clipped(json.dumps(value, ensure_ascii=False), 80)
    except (TypeError, ValueError):  # a Parquet cell numpy holds
        return clipped(repr(value), 80)


def _label_index(value, spec: TaskSpec, where: str):
    if spec.regression:
        try:
            score = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            score = math.nan
        if not math.isfinite(score):
            raise UserError(f"{where}: label {_as_written(value)} is not a finite number (task {spec.name} is a regression)")
        return score
    text = str(value).strip()
    if text in spec.labels and not isinstance(value, bool):
        return spec.labels.index(text)
    if isinstance(value, (bool, np.bool_)):  # a JSON or Parquet boolean: by name, where the labels are false and true
        named = {label.casefold(): i for i, label in enumerate(spec.labels)}
        if set(named) == {"false", "true"}:
            return named[str(bool(value)).casefold()]
        rename = "" if spec.name in TASKS else ", or name the task's labels false, true"
        raise UserError(f"{where}: label {_as_written(bool(value))} is a boolean, and the labels of task {spec.name} "
                        f"are {', '.join(spec.labels)}; write the label's name or id{rename}")
    k = _label_id(value)
    if k is not None and k < len(spec.labels):
        return spec.labels.index(spec.numbering[k])
    numbers = f", or their ids 0-{len(spec.labels) - 1}" if spec.named_labels else ""
    near = suggest(text, spec.labels, cutoff=0.75) if isinstance(value, str) else ""
    raise UserError(f"{where}: label {_as_written(value)} is not one of {', '.join(spec.labels)}{numbers} (task "
                    f"{spec.name}){near}")


def _label_id(value) -> Optional[int]:
    """A label written as a number: a JSON integer, or digits in a CSV or TSV field; a whole
    number written as a float too (1.0: pandas writes an integer column with a gap so)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value) if value >= 0 else None
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"[0-9]+(\.0*)?", value.strip()):
        return int(float(value))
    return None


def numbering_note(raw_labels, spec: TaskSpec, path) -> Optional[str]:
    """Labels given as ids where the task's labels are words: say which word each id became,
    since a file that numbers its classes otherwise would train (and export) every class under
    another's name without a word."""
    if raw_labels is None or not spec.named_labels:
        return None
    if not any(str(v).strip() not in spec.labels and _label_id(v) is not None for v in raw_labels):
        return None
    ids = ", ".join(f"{k}={name}" for k, name in enumerate(spec.numbering))
    numbering = f"the Hugging Face dataset's numbering for {spec.name}" if spec.name in TASKS else \
        "the order of the task's labels setting"
    return (f"note: {path}: labels given as numbers, read as {ids} ({numbering}); where a file numbers them "
            f"otherwise, write the label names in it")


def _make(rows_a, rows_b, raw_labels, spec, path, line_numbers) -> Examples:
    if not rows_a:
        raise UserError(f"{path}: no examples (empty dataset)")
    if raw_labels is None:
        labels = np.full(len(rows_a), UNLABELLED, dtype=np.int64)
    else:
        labels = np.array([_label_index(v, spec, _at(path, n)) for v, n in zip(raw_labels, line_numbers)],
                          dtype=np.float32 if spec.regression else np.int64)
    notes = [numbering_note(raw_labels, spec, path), empty_text_note(rows_a, rows_b, path, line_numbers)]
    return Examples(rows_a, rows_b, labels, str(path), notes=[n for n in notes if n])


def empty_text_note(rows_a, rows_b, path, line_numbers) -> Optional[str]:
    """Examples whose text is empty (a blank field, often a column that another writer left
    out): their input is the special tokens alone. Said, with the first line, not refused:
    some corpora hold a few."""
    empty = [n for n, a, b in zip(line_numbers, rows_a, rows_b or [None] * len(rows_a))
             if not a.strip() or (b is not None and not b.strip())]
    if not empty:
        return None
    first = f"in row {empty[0]}" if _by_row(path) else f"on line {empty[0]}"
    return (f"note: {path}: {len(empty)} of {len(rows_a)} examples have an empty text field (the first {first}); "
            f"their input is the special tokens alone")


# --------------------------------------------------------------------------- text files


def _csv_rows(path: Path, text: str, delimiter: str, quoting: int = csv.QUOTE_MINIMAL) -> list[tuple[int, list[str]]]:
    """(physical line where the record starts, fields) of every record: a quoted field may
    span lines, so record numbers are not line numbers. A quote never closed is refused: the
    csv module would read the rest of the file into that one field, and the error would then
    be a count of fields. Other lapses from strict CSV (``"ab"c``) are read as spreadsheets and
    pandas read them."""
    kind = "TSV" if delimiter == "\t" else "CSV"
    rows: list[tuple[int, list[str]]] = []
    physical: list[str] = []  # the file's lines, split once where a record over lines is checked
    for strict in (True, False):
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=strict)
        rows, line = [], 1
        try:
            for row in reader:
                if not strict and reader.line_num > line:
                    physical = physical or io.StringIO(text, newline="").readlines()
                    _no_quote_that_swallowed_lines(path, physical[line - 1:reader.line_num], line, delimiter, quoting)
                rows.append((line, row))
                line = reader.line_num + 1
            return rows
        except csv.Error as err:
            if strict and str(err) == "unexpected end of data":
                raise UserError(f"{path}:{line}: a quote (\") opened in this record is never closed; expected a "
                                f"closing quote before the end of the file (line {reader.line_num})") from None
            if not strict:
                raise UserError(f"{path}:{reader.line_num}: not valid {kind} ({err})") from None
    return rows


def _no_quote_that_swallowed_lines(path: Path, lines: list[str], first: int, delimiter: str, quoting: int) -> None:
    """A record over ``lines``, from line ``first``, that strict CSV would not read is refused.
    A text that starts with a quote it does not close on its line (``"Quoted" he said``, common
    in hand-written TSV) opens a quoted field that runs on, over the line breaks and the
    records after it, until some later quote, where the reader gives up strictness and reads
    the rest of that line into the field: those records would vanish into one text, under a
    later record's label, without a word. A field over lines that is quoted as CSV writers
    quote it reads strictly and is kept."""
    last = first + len(lines) - 1
    reader = csv.reader(io.StringIO("".join(lines), newline=""), delimiter=delimiter, quoting=quoting, strict=True)
    try:
        for _ in reader:
            pass
    except csv.Error:
        lapse = first + reader.line_num - 1
        raise UserError(f"{path}:{first}: a quote (\") opens a field here that runs over the line breaks to line "
                        f"{lapse}, where it closes in mid-field, so lines {first}-{last} would read as one record; "
                        f"expected a field that starts with a quote to end with one (write a quote in the text as "
                        f"\"\" inside a quoted field)") from None


# --------------------------------------------------------------------------- GLUE TSV


def read_glue_tsv(path: Path, gf: GlueFile, spec: TaskSpec) -> Examples:
    if not path.is_file():
        raise UserError(f"{path}: GLUE file not found (task {spec.name} expects {gf.filename})")
    numbered = _csv_rows(path, read_utf8(path), "\t", csv.QUOTE_NONE)
    rows = [row for _, row in numbered]
    if gf.header:
        if not rows:
            raise UserError(f"{path}: no examples (empty dataset)")
        header, numbered = rows[0], numbered[1:]
        _no_repeated_columns(header, f"{path}:1", "in the header")
        cols = {}
        for key in ("text_a", "text_b", "label"):
            name = getattr(gf, key)
            if name is None:
                continue
            if name not in header:
                raise UserError(f"{path}: missing column '{name}' (header has: {_names(header)})")
            cols[key] = header.index(name)
    else:
        cols = {k: getattr(gf, k) for k in ("text_a", "text_b", "label") if getattr(gf, k) is not None}
    width = max(cols.values()) + 1
    a, b, lab, lines = [], [] if "text_b" in cols else None, [] if "label" in cols else None, []
    for n, row in numbered:
        if not row or (len(row) == 1 and not row[0]):
            continue
        if len(row) < width:
            raise UserError(f"{path}:{n}: expected at least {width} tab-separated columns, got {len(row)}")
        a.append(row[cols["text_a"]])
        if b is not None:
            b.append(row[cols["text_b"]])
        if lab is not None:
            lab.append(row[cols["label"]])
        lines.append(n)
    return _make(a, b, lab, spec, path, lines)


# --------------------------------------------------------------------------- JSONL / CSV / TSV / Parquet


def _read_records(path: Path) -> list[tuple[int, dict]]:
    """(line, record) of a JSONL, CSV or TSV file with named columns; (row, record) of a
    Parquet file."""
    if path.suffix == ".parquet":
        return _parquet_records(path)
    text = read_utf8(path)
    return _jsonl_records(path, text) if path.suffix == ".jsonl" else _table_records(path, text)


def _jsonl_records(path: Path, text: str) -> list[tuple[int, dict]]:
    out = []
    for n, line in enumerate(text.split("\n"), start=1):  # JSON Lines: "\n" only (not U+2028 & co.)
        if not line.strip():
            continue
        try:
            rec = json.loads(line, object_pairs_hook=marked_object)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{n}: not valid JSON ({err.msg})") from None
        except RecursionError:
            raise too_deep(f"{path}:{n}") from None
        if not isinstance(rec, dict):
            raise UserError(f"{path}:{n}: expected a JSON object per line")
        if rec.repeated is not None:  # json keeps the last value, as a CSV reader keeps one of two columns
            raise UserError(f"{path}:{n}: key '{shown(rec.repeated)}' appears twice in the record; expected each "
                            f"column once")
        out.append((n, rec))
    return out


def _table_records(path: Path, text: str) -> list[tuple[int, dict]]:
    """(line, record) of a CSV or TSV file, its first record the header."""
    rows = [(n, row) for n, row in _csv_rows(path, text, "\t" if path.suffix == ".tsv" else ",")
            if row and any(field.strip() for field in row)]  # blank lines carry no record
    if not rows:
        return []
    (_, header), body = rows[0], rows[1:]
    _no_repeated_columns(header, f"{path}:{rows[0][0]}", "in the header")
    _one_column_of_another_separator(header, path, rows[0][0])
    out = []
    for n, row in body:
        if row == header:  # files joined with cat: the second file's header would be read as an example
            raise UserError(f"{path}:{n}: repeats the header (line {rows[0][0]}); expected it once, at the top (were "
                            f"files joined with cat? join them without their headers: tail -n +2)")
        if len(row) != len(header):
            raise UserError(f"{path}:{n}: {len(row)} fields, the header (line {rows[0][0]}) has {len(header)}")
        out.append((n, dict(zip(header, row))))
    return out


_SEPARATORS = {",": "commas", "\t": "tabs", ";": "semicolons", "|": "vertical bars"}


def _one_column_of_another_separator(header: list, path: Path, line: int) -> None:
    """A CSV or TSV header that reads as one column holding another separator (a
    spreadsheet's export with semicolons, a .csv with tabs) is refused: its rows would read as
    one text each, the label inside it, and an unlabelled split would be scored on them."""
    expected = "\t" if path.suffix == ".tsv" else ","
    found = next((sep for sep in _SEPARATORS if sep != expected and len(header) == 1 and sep in header[0]), None)
    if found is not None:
        raise UserError(f"{path}:{line}: the header '{shown(header[0])}' is one column: the fields are separated by "
                        f"{_SEPARATORS[found]}, and crild reads {path.suffix} files as separated by "
                        f"{_SEPARATORS[expected]}; save it with commas as .csv or with tabs as .tsv")


def _parquet_records(path: Path) -> list[tuple[int, dict]]:
    """(row, record) of a Parquet file, rows counted from 1. Values are pyarrow's Python
    values, so a list, struct or binary column meets the same checks as a JSON array."""
    table = read_parquet(path, lambda file: file.read())
    _no_repeated_columns(table.column_names, str(path), "in the file's schema")
    columns = [column_values(table, i, path) for i in range(table.num_columns)]
    names = table.column_names
    return [(n, dict(zip(names, values))) for n, values in enumerate(zip(*columns), start=1)]


def _no_repeated_columns(header: list[str], where: str, place: str) -> None:
    """A header (or a Parquet schema) that names a column twice: a reader would keep one of
    them without a word."""
    seen = set()
    for name in header:
        if name in seen and name.strip():
            raise UserError(f"{where}: column '{shown(name)}' appears twice {place}; expected each column once")
        seen.add(name)


def _names(columns) -> str:
    """The column names a file has, as an error lists them (a header cut short can hold a
    line break)."""
    return ", ".join(shown(str(c)) for c in columns)


def _text(rec: dict, col: str, path: Path, n: int) -> str:
    """A text field: a string (or a number, read as its digits); a missing or null field, or a
    list, object or boolean, is refused rather than written out as Python's repr."""
    if col not in rec:
        raise UserError(f"{_at(path, n)}: missing column '{col}' (has: {_names(rec)})")
    value = rec[col]
    if value is None:
        raise UserError(f"{_at(path, n)}: column '{col}' is null; expected text")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        kinds = ((bool, "a boolean"), (list, "an array"), (dict, "an object"), (bytes, "binary data"))
        kind = next((name for kind, name in kinds if isinstance(value, kind)), type(value).__name__)
        raise UserError(f"{_at(path, n)}: column '{col}' is {kind}; expected text")
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # only a JSON escape such as "\ud83d" makes one; a tokenizer fails on it
        raise UserError(f"{_at(path, n)}: column '{col}' holds {text[err.start]!r}, half of a UTF-16 pair without its "
                        f"other half (text cut inside an emoji, say); expected whole characters") from None
    return text


def read_table(path: Path, spec: TaskSpec, task_cfg: TaskConfig, need_label: bool, where: str = "task") -> Examples:
    ca, cb, cl = spec.canonical_columns
    columns = (task_cfg.columns.text_a or ca, (task_cfg.columns.text_b or cb) if spec.pair else None,
               task_cfg.columns.label or cl)
    records = _read_records(path)
    note = None
    if records:  # a file of other column names: say which setting names them (a later record is judged alone)
        have = records[0][1]
        columns, note = text_columns(list(have), columns, _names_text(task_cfg), where)
        for key, col in zip(("text_a", "text_b", "label"), columns):
            if col is not None and col not in have and (key != "label" or need_label):
                raise UserError(f"{path}: missing column '{col}' (has: {_names(have)}); name the file's column in "
                                f"{where}.columns.{key}{pair_hint(list(have), columns, spec.name not in TASKS, where)}")
    examples = _from_records(records, path, columns, spec, need_label)
    examples.notes += [note] if note else []
    return examples


def _names_text(task_cfg: TaskConfig) -> bool:
    """Whether the configuration names a text column (``task.columns.text_a`` or ``text_b``)."""
    return bool(task_cfg.columns.text_a or task_cfg.columns.text_b)


def _from_records(records: list[tuple[int, dict]], path, columns: tuple, spec: TaskSpec, need_label: bool) -> Examples:
    """The examples of ``records`` ((line or row, record)), from the columns (text_a, text_b
    or None, label) they name."""
    ca, cb, cl = columns
    if not records:
        raise UserError(f"{path}: no examples (empty dataset)")
    has_label = cl in records[0][1]
    if need_label and not has_label:
        raise UserError(f"{path}: missing column '{cl}' (has: {_names(records[0][1])})")
    a, b, lab, lines = [], [] if cb else None, [] if has_label else None, []
    for n, rec in records:
        a.append(_text(rec, ca, path, n))
        if cb:
            b.append(_text(rec, cb, path, n))
        if has_label:
            if rec.get(cl) is None or rec.get(cl) == "":
                raise UserError(f"{_at(path, n)}: missing value for label column '{cl}'")
            lab.append(rec[cl])
        lines.append(n)
    return _make(a, b, lab, spec, path, lines)


# what the hub and other tools call crild's splits: a folder's validation.jsonl (datasets'
# to_json of a DatasetDict writes one) is its dev split
HUB_SPLIT_NAMES = {"dev": ("validation", "valid", "val")}


def _find_table(directory: Path, split: str) -> Optional[Path]:
    """The one file of ``split`` in ``directory``, by crild's name or the hub's (dev:
    ``validation``): two of them (a train.csv beside a newer train.jsonl, a dev.csv beside a
    validation.csv) would leave which one is read to an order the user never chose."""
    found = [p for name in (split, *HUB_SPLIT_NAMES.get(split, ())) for ext in TABLE_SUFFIXES
             if (p := directory / f"{name}{ext}").is_file()]
    if len(found) > 1:
        raise UserError(f"{directory}: {' and '.join(p.name for p in found)} are both the {split} split; crild "
                        f"reads one file per split: remove or rename the others")
    return found[0] if found else None


# --------------------------------------------------------------------------- hub


def read_hub(spec: TaskSpec, split: str, need_label: bool, where: str = "task", user_named: bool = False) -> Examples:
    """A split of the task's dataset through ``datasets.load_dataset``, read as the records of
    a file are (so its text and labels meet the same checks), rows counted from 1;
    ``user_named``: the configuration names its text columns."""
    if spec.hub is None:
        raise UserError(f"task {spec.name} has no hub dataset; set task.data_dir")
    ds = load_hub_split(spec, split, where)
    source = f"{hub_name(spec)}:{spec.hub_splits[split]}"
    have = list(ds.column_names)
    (ca, cb, cl), note = text_columns(have, spec.hub_columns, user_named, where)
    for key, col in (("text_a", ca), ("text_b", cb)) + ((("label", cl),) if need_label else ()):
        if col is not None and col not in have:
            raise UserError(f"{source}: no column '{col}' (has: {_names(have)}); name the dataset's column in "
                            f"{where}.columns.{key}{pair_hint(have, (ca, cb, cl), spec.name not in TASKS, where)}")
    labels = _hub_labels(ds.features[cl], list(ds[cl]), spec, source, where, need_label) if cl in have else None
    values = {col: list(ds[col]) for col in (ca, cb) if col is not None}
    if labels is not None:
        values[cl] = labels
    names = list(values)
    records = [(n, dict(zip(names, row))) for n, row in enumerate(zip(*values.values()), start=1)]
    examples = _from_records(records, source, (ca, cb, cl), spec, need_label)
    examples.notes += [note] if note else []
    commit = unpinned_commit(spec, ds)
    if commit:
        hub.read_at("dataset", spec.hub[0], commit)  # the stages this process launches read it too
        newest = "the newest in the datasets cache" if hub.offline() else "its newest"
        examples.commit_note = (f"note: {hub_name(spec)} is read at commit {commit} ({newest}); {where}.hub_revision: "
                                f"{commit} keeps every run on it")
        examples.notes.append(examples.commit_note)
    return examples


def _hub_labels(feature, raw: list, spec: TaskSpec, source: str, where: str, need_label: bool) -> Optional[list]:
    """The label column's values as the records carry them: a class label's ids as its names
    where they are the task's label names (in any order), ids in the task's numbering for a
    built-in task that writes its labels as digits; None for a split of -1s alone, the hub's
    unlabelled split (a GLUE test set). A task of one's own whose label names are not the
    dataset's is one line: mapping ids by position would name every class as chance has it."""
    names = getattr(feature, "names", None)  # a ClassLabel's
    if names is None:
        return raw
    if all(v == -1 for v in raw):
        if need_label:
            raise UserError(f"{source}: every label is -1, the hub's mark of an unlabelled split; crild trains on a "
                            f"labelled one ({where}.hub_splits.train)")
        return None
    if spec.labels is not None and set(names) == set(spec.labels):
        return [names[v] if v >= 0 else None for v in raw]
    if not spec.glue_files:  # a task of one's own
        wanted = f"{where}.labels lists {', '.join(spec.labels)}" if spec.labels else f"task {spec.name} is a regression"
        raise UserError(f"{source}: column '{spec.hub_columns[2]}' holds the classes {', '.join(names)}, and {wanted}; "
                        f"expected those names (in any order: crild maps the classes by name)")
    return [v if v >= 0 else None for v in raw]


# --------------------------------------------------------------------------- entry points


def resolve_source(task_cfg: TaskConfig, spec: TaskSpec, where: str = "task") -> tuple[str, Optional[Path]]:
    """(source kind, directory) for a task configuration."""
    source = task_cfg.source
    data_dir = Path(task_cfg.data_dir).expanduser() if task_cfg.data_dir else None
    if source == "auto":
        if data_dir is not None:
            table = _find_table(data_dir, "train")
            glue_train = bool(spec.glue_files) and (data_dir / spec.glue_files["train"].filename).is_file()
            source = "glue" if glue_train and (table is None or table.suffix == ".tsv") else "files"
        elif spec.offline:
            source = "offline"
        else:
            source = "hub"
    if source == "offline":
        data_dir = data_dir or offline_data_dir() / spec.name
        if not (data_dir / "train.jsonl").is_file():
            raise UserError(f"{data_dir}: offline data for task '{spec.name}' is not prepared; "
                            f"run `crild prepare-data` (tools/setup.sh does)")
        source = "files"
    if source in ("glue", "files"):
        if data_dir is None:
            raise UserError(f"{where}.data_dir: required when {where}.source is '{source}'")
        if data_dir.exists() and not data_dir.is_dir():
            raise UserError(f"{where}.data_dir: '{data_dir}' is a file; expected the folder that holds the split "
                            f"files (train, dev, test as {table_files('')}), e.g. '{data_dir.parent}'")
        if not data_dir.is_dir():
            raise UserError(f"{where}.data_dir: directory '{data_dir}' does not exist")
    if source == "glue" and not spec.glue_files:
        raise UserError(f"{where}.source: task {spec.name} has no GLUE file layout; use 'files'")
    named = [k for k in ("text_a", "text_b", "label") if getattr(task_cfg.columns, k) is not None]
    if named and source != "files" and not (source == "hub" and is_own_hub(spec)):
        reads = f"GLUE's TSV layout in {data_dir}" if source == "glue" else "the hub dataset"
        raise UserError(f"{where}.columns.{named[0]}: column names apply to CSV, JSONL and TSV files with a header "
                        f"(source files), and this task reads {reads}; remove columns or set {where}.source: files")
    return source, data_dir


def available_eval_splits(task_cfg: TaskConfig, spec: TaskSpec, where: str = "task") -> list[str]:
    source, data_dir = resolve_source(task_cfg, spec, where)
    if source == "glue":
        return [s for s, gf in spec.glue_files.items() if s != "train" and (data_dir / gf.filename).is_file()]
    if source == "files":
        names = spec.dev_splits if spec.glue_files else ("dev", "test")
        return [s for s in names if _find_table(data_dir, s) is not None]
    if is_own_hub(spec):
        have = split_names(spec, where)
        return [s for s in spec.dev_splits if spec.hub_splits[s] in have]
    return list(spec.dev_splits)


def export_split(task_cfg: TaskConfig, spec: TaskSpec, configured: Optional[str]) -> str:
    """The split the export is checked on: ``configured``, else test where the task has it,
    else its first held-out split."""
    if configured:
        return configured
    available = available_eval_splits(task_cfg, spec)
    return "test" if "test" in available else (available[0] if available else "dev")


def checked_eval_splits(task_cfg: TaskConfig, spec: TaskSpec, splits: Optional[list[str]], source: str,
                        key: Optional[str] = None) -> list[str]:
    """The held-out splits to score: ``splits`` (None: the first the task's data has), each
    one a split the data has, or one line naming it and the splits there are (a hub user's
    ``validation`` is pointed to crild's ``dev``). ``source``: the configuration file;
    ``key``: the setting that named ``splits``."""
    available = available_eval_splits(task_cfg, spec)
    if not available and is_own_hub(spec):
        mapped = ", ".join(f"{k} to '{v}'" for k, v in spec.hub_splits.items() if k != "train") or "none"
        raise UserError(f"{hub_name(spec)}: no held-out split for task {spec.name}: task.hub_splits maps {mapped}, "
                        f"and the dataset has {', '.join(split_names(spec))}; set task.hub_splits.dev (or test) to one "
                        f"of them")
    if not available:
        folder = resolve_source(task_cfg, spec)[1]
        raise UserError(f"{folder}: no held-out split for task {spec.name}: expected {table_files('dev')} (or "
                        f"validation.*, or test.*) beside the training file{_unread(folder, ('dev', 'test'))}")
    if splits is None:
        return available[:1]
    for split in splits:
        if split not in available:
            crild_name = re.sub(rf"^({'|'.join(HUB_SPLIT_NAMES['dev'])})(?=_|$)", "dev", split)
            hint = f"; crild calls the hub's '{split}' split '{crild_name}'" if crild_name in available else ""
            named = f"{key}: '{split}'" if key else f"split '{split}'"
            raise UserError(f"{source}: {named} is not a held-out split of task {spec.name} "
                            f"(available: {', '.join(available) or 'none'}){hint}")
    return list(splits)


def _unread(folder: Optional[Path], splits: tuple) -> str:
    """What ``folder`` holds under the names of ``splits``, which have no file crild reads,
    named so that a user sees why the split is missing: ``train.json``, ``train.jsonl.gz``, a Spark
    folder ``train.parquet/``, the hub's shards ``train-00000-of-00002.parquet`` (and
    ``validation-…`` for ``dev``)."""
    if folder is None or not folder.is_dir():
        return ""
    prefixes = tuple(f"{name}{sep}" for split in splits for name in (split, *HUB_SPLIT_NAMES.get(split, ()))
                     for sep in ".-")
    others = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if p.name.lower().startswith(prefixes))
    if not others:
        return _in_subfolders(folder, splits)
    shown_names = ", ".join(shown(n) for n in others[:4]) + (f" and {len(others) - 4} more" if len(others) > 4 else "")
    return (f" (found {shown_names}: crild reads one {table_files('')} file per split, named train, dev (or "
            f"validation) or test)")


def _in_subfolders(folder: Path, splits: tuple) -> str:
    """Where ``folder`` is the parent of the data (``data/`` for ``data/my_task/train.csv``):
    the subfolders that hold the split's file, to give as the data folder instead."""
    try:
        holding = sorted(f"{p}/" for p in folder.iterdir() if p.is_dir() and any(
            _find_table(p, split) is not None for split in splits))
    except (OSError, UserError):  # an unreadable folder, or two files of one split there: no hint
        return ""
    if not holding:
        return ""
    which = f"subfolder {holding[0]} holds" if len(holding) == 1 else f"subfolders {', '.join(holding[:3])} hold"
    return f" (its {which} the split's file: give {'it' if len(holding) == 1 else 'one'} as the data folder)"


def load_split(task_cfg: TaskConfig, spec: TaskSpec, split: str, where: str = "task") -> Examples:
    """One split's examples; ``where`` is the configuration key of ``task_cfg`` (for messages)."""
    source, data_dir = resolve_source(task_cfg, spec, where)
    need_label = split == "train" and not spec.inputs_only
    if source == "glue":
        gf = spec.glue_files.get(split)
        if gf is None:
            raise UserError(f"task {spec.name} has no split '{split}' (has: {', '.join(spec.glue_files)})")
        return read_glue_tsv(data_dir / gf.filename, gf, spec)
    if source == "files":
        path = _find_table(data_dir, split)
        if path is None:
            raise UserError(f"{data_dir}: no {table_files(split)} for task {spec.name}{_unread(data_dir, (split,))}")
        return read_table(path, spec, task_cfg, need_label, where)
    return read_hub(spec, split, need_label, where, _names_text(task_cfg))
