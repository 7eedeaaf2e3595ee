"""Parquet files, read with pyarrow: the format the hub converts every dataset to, and what
``Dataset.to_parquet`` and ``DataFrame.to_parquet`` write. A file pyarrow cannot read (another
format, damaged, a folder) is one line naming it."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

from pipeline.errors import UserError, clipped, shown

T = TypeVar("T")


def read_parquet(path: Path, read: Callable[["pyarrow.parquet.ParquetFile"], T]) -> T:  # noqa: F821
    """``read(ParquetFile(path))``. pyarrow's ``read_table`` would go through its dataset
    layer, which reads a folder of files as one and refuses a column named twice with a
    message about its own fields; a single file is what a split is."""
    import pyarrow
    import pyarrow.parquet as pq

    try:
        return read(pq.ParquetFile(path))
    except UnicodeDecodeError as err:  # a damaged schema: pyarrow decodes its names without checking
        raise UserError(f"{path}: not a Parquet file crild can read (a name in its schema is not UTF-8: byte "
                        f"{err.object[err.start]:#04x})") from None
    except (OSError, EOFError, pyarrow.ArrowException) as err:
        why = clipped(str(err).splitlines()[0], 120) if str(err) else type(err).__name__
        raise UserError(f"{path}: not a Parquet file crild can read ({why})") from None


def column_values(table, index: int, path: Path) -> list:
    """Column ``index`` of ``table`` as Python values. A string column whose bytes are not
    UTF-8 (pyarrow reads them without checking) is one line naming the row."""
    column = table.column(index)
    try:
        return column.to_pylist()
    except UnicodeDecodeError:
        for row in range(len(column)):
            try:
                column[row].as_py()
            except UnicodeDecodeError as err:
                name = shown(table.column_names[index])
                raise UserError(f"{path}: row {row + 1}: column '{name}' is not UTF-8 text (byte "
                                f"{err.object[err.start]:#04x} at offset {err.start}); expected text") from None
        raise
