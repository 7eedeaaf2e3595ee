"""Which columns of a data file or hub dataset hold a task's texts, where the task's default
names (``sentence``; ``sentence1`` and ``sentence2`` for pairs) are not there and the
configuration names none: as Hugging Face's run_glue finds them, the columns other than the
label, in the file's order (here with id columns left out, and only when their number is the
task's, so that a guess is never made among several)."""
from __future__ import annotations

from typing import Optional

# columns that number the rows rather than hold text (pandas writes its index as "" or "Unnamed: 0")
ID_COLUMNS = {"id", "idx", "index", "guid", "uid", "", "unnamed: 0"}


def text_columns(have: list, columns: tuple, user_named: bool, where: str) -> tuple[tuple, Optional[str]]:
    """(text_a, text_b or None, label) to read from a file or dataset whose columns are
    ``have``, and a note when they are not the defaults ``columns``. Nothing is found in their
    place when ``user_named`` (``task.columns`` names a text column), when any default text
    column is there, or when the columns left are not exactly as many as the task's texts; the
    caller then says which column is missing and which key names it."""
    a, b, label = columns
    wanted = [a] if b is None else [a, b]
    if user_named or any(column in have for column in wanted):
        return columns, None
    left = _candidates(have, label)
    if len(left) != len(wanted):
        return columns, None
    found = (left[0], left[1] if b is not None else None, label)
    keys = f"{where}.columns.text_a" + (f" and {where}.columns.text_b" if b is not None else "")
    if b is None:
        read = f"no column '{a}': the text is read from column '{left[0]}', the one column besides the label"
    else:
        read = (f"no columns '{a}' and '{b}': the texts are read from columns '{left[0]}' and '{left[1]}', in "
                f"that order, the two columns besides the label")
    return found, f"note: {where}: {read}; {keys} name{'s' if b is None else ''} other columns"


def pair_hint(have: list, columns: tuple, own_task: bool, where: str) -> str:
    """For a single-text task of one's own whose file has two text columns (premise and
    hypothesis) and not the default: the setting that reads them as a pair."""
    if not own_task or columns[1] is not None or columns[0] in have or len(_candidates(have, columns[2])) != 2:
        return ""
    return f"; or, for pairs of texts, set {where}.pair: true"


def _candidates(have: list, label: str) -> list:
    """The columns that may hold text: all but the label and the ids."""
    return [c for c in have if c != label and str(c).strip().lower() not in ID_COLUMNS]
