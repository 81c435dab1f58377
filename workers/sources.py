"""Read an OHLCV source (``sp500``, a CSV or Parquet file) into a raw frame, its header checked first.

pandas reads a CSV whose header names a column twice by renaming the second one (``Close`` becomes
``Close.1``, pandas-dev/pandas#14704) without a word, and Parquet readers fail with an Arrow
message about field references. So the header is read as written first: a column the pipeline
reads (the time column's names and ``open``..``volume``, matched case-insensitively after
stripping blanks) that appears twice is refused, naming each such name and its positions, never
the header's text. Duplicates among the other (ignored) columns are left alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from orchestrator.errors import DataValidationError

__all__ = ["CSV_SUFFIXES", "PARQUET_SUFFIXES", "read_source_file", "load_sp500", "check_header"]

CSV_SUFFIXES = (".csv", ".csv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")


def load_sp500() -> pd.DataFrame:
    """The S&P 500 daily bars that ``arch`` ships, without ``Adj Close``."""
    from arch.data import sp500  # lazy: arch is only needed for the bundled data set

    bars = sp500.load()
    return bars.drop(columns=["Adj Close"])


def read_source_file(path: Path, read_names: Sequence[str]) -> pd.DataFrame:
    """The raw frame of a CSV or Parquet file; ``DataValidationError`` for an unknown extension,
    a missing or unreadable file, or a column of ``read_names`` named twice in its header."""
    name = path.name.lower()
    if not name.endswith(CSV_SUFFIXES + PARQUET_SUFFIXES):
        known = ", ".join(CSV_SUFFIXES + PARQUET_SUFFIXES)
        raise DataValidationError(
            f"unknown data file extension for {str(path)!r} (suffix {''.join(path.suffixes)!r}); "
            f"expected one of {known}, or 'sp500'"
        )
    if not path.is_file():
        raise DataValidationError(f"data file not found: {str(path)!r}")
    csv = name.endswith(CSV_SUFFIXES)
    try:
        header = _csv_header(path) if csv else list(pq.read_schema(path).names)
        check_header(header, read_names, str(path))
        return pd.read_csv(path) if csv else pd.read_parquet(path)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        # a parser's message says where the structure breaks; others may quote the file's bytes
        reason = str(err) if isinstance(err, (pd.errors.ParserError, pd.errors.EmptyDataError)) else ""
        reason = reason or (err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__)
        raise DataValidationError(f"cannot read data file {str(path)!r}: {reason}") from err


def _csv_header(path: Path) -> list[str]:
    """The first row as written (``header=None``: pandas renames nothing), '' for an empty file."""
    try:
        first = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return []
    return [str(value) for value in first.iloc[0].tolist()] if len(first) else []


def check_header(header: Sequence[object], read_names: Sequence[str], where: str) -> None:
    """Refuse a header in which a column of ``read_names`` appears more than once (case and
    surrounding blanks ignored), naming every duplicated column by the name it is read as and its
    1-based positions (never the header's text: messages do not quote a file, docs/method.md)."""
    positions: dict[str, list[int]] = {}
    for number, raw in enumerate(header, start=1):
        key = str(raw).strip().lower()
        if key in read_names:
            positions.setdefault(key, []).append(number)
    repeated = {key: numbers for key, numbers in positions.items() if len(numbers) > 1}
    if not repeated:
        return
    described = "; ".join(
        f"{key!r} at columns " + " and ".join(str(number) for number in numbers)
        for key, numbers in repeated.items()
    )
    raise DataValidationError(
        f"duplicate column name(s) in {where}: {described}; keep one column of each name "
        "(a reader would silently keep the first and rename or drop the others)"
    )
