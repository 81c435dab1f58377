"""Load and validate OHLCV bars: one canonical frame for the rest of the pipeline.

The canonical frame has exactly the columns ``timestamp`` (``datetime64[ns]``, tz-naive, UTC
where the input carried a zone), ``open``, ``high``, ``low``, ``close``, ``volume`` (all
``float64``) and a ``RangeIndex``. Every check raises ``DataValidationError`` with a message
that names the column and the row.

Row numbers in messages are **0-based data row positions** (the first bar after the header of a
CSV is row 0), whatever index the input frame carried.

Sources:

* ``"sp500"`` (any case): the S&P 500 daily bars 1999-2018 that ``arch`` ships (5031 rows, no
  network). Its ``Close`` is used, not ``Adj Close``: open/high/low are unadjusted, so only the
  unadjusted close keeps each bar consistent (for this index the two columns are equal anyway).
* a path to CSV (``.csv``, ``.csv.gz``) or Parquet (``.parquet``, ``.pq``);
* a ``pandas.DataFrame`` (never modified; a copy is validated).

Column names are matched case-insensitively after stripping blanks. The time column may be
called ``timestamp``, ``date``, ``datetime`` or ``time`` (first found in that order), or be the
frame's ``DatetimeIndex``. Extra columns are ignored.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from orchestrator.errors import DataValidationError

__all__ = [
    "OHLCV_COLUMNS",
    "PRICE_COLUMNS",
    "TIME_COLUMN_ALIASES",
    "load_ohlcv",
    "validate_ohlcv",
    "data_fingerprint",
]

PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")
OHLCV_COLUMNS: tuple[str, ...] = (*PRICE_COLUMNS, "volume")
TIME_COLUMN_ALIASES: tuple[str, ...] = ("timestamp", "date", "datetime", "time")
CANONICAL_COLUMNS: tuple[str, ...] = ("timestamp", *OHLCV_COLUMNS)

_CSV_SUFFIXES = (".csv", ".csv.gz")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_FINGERPRINT_VERSION = b"ohlcv-fingerprint-v1\n"


def load_ohlcv(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """Read ``source`` ("sp500", a CSV/Parquet path or a frame) into the canonical frame."""
    if isinstance(source, pd.DataFrame):
        raw = source
    elif isinstance(source, str) and source.strip().lower() == "sp500":
        raw = _load_sp500()
    else:
        raw = _read_file(Path(source))
    return validate_ohlcv(raw)


def validate_ohlcv(df: pd.DataFrame) -> pd.DataFrame:
    """Return the canonical frame built from ``df``, or raise ``DataValidationError``.

    The checks run in this order, so the first problem found is the one reported: missing
    columns, empty data, timestamps (unparseable, duplicate, non-increasing), non-numeric
    values, NaN/inf, non-positive prices, inconsistent high/low, negative volume.
    """
    columns = _normalized_columns(df)
    missing = [c for c in OHLCV_COLUMNS if c not in columns]
    time_source = _find_time_source(df, columns)
    if time_source is None:
        missing.insert(0, "timestamp")
    if missing:
        found = ", ".join(repr(str(c)) for c in df.columns) or "none"
        raise DataValidationError(
            f"missing column(s) {', '.join(missing)}; columns found: {found} "
            f"(the time column may be named {'/'.join(TIME_COLUMN_ALIASES)} or be a DatetimeIndex)"
        )
    if len(df) == 0:
        raise DataValidationError("the data has no rows")

    assert time_source is not None
    timestamps = _parse_timestamps(time_source[0], time_source[1])
    _check_timestamp_order(timestamps)

    out = pd.DataFrame({"timestamp": timestamps})
    for name in OHLCV_COLUMNS:
        out[name] = _numeric_column(df.iloc[:, columns[name]], name)
    _check_values(out)
    return out


def data_fingerprint(df: pd.DataFrame) -> str:
    """sha256 hex of the canonical bytes: timestamps as int64 ns, then the five float64 columns.

    ``df`` is validated (and canonicalised) first, so two inputs that load to the same bars
    (a CSV and its Parquet copy, say) share a fingerprint.
    """
    canonical = validate_ohlcv(df)
    digest = hashlib.sha256(_FINGERPRINT_VERSION)
    digest.update(np.int64(len(canonical)).astype("<i8").tobytes())
    ns = canonical["timestamp"].to_numpy(dtype="datetime64[ns]").view("i8")
    digest.update(np.ascontiguousarray(ns, dtype="<i8").tobytes())
    for name in OHLCV_COLUMNS:
        digest.update(np.ascontiguousarray(canonical[name].to_numpy(), dtype="<f8").tobytes())
    return digest.hexdigest()


# --- reading ------------------------------------------------------------------------------------


def _load_sp500() -> pd.DataFrame:
    from arch.data import sp500  # lazy: arch is only needed for the bundled data set

    bars = sp500.load()
    return bars.drop(columns=["Adj Close"])


def _read_file(path: Path) -> pd.DataFrame:
    name = path.name.lower()
    if not name.endswith(_CSV_SUFFIXES + _PARQUET_SUFFIXES):
        known = ", ".join(_CSV_SUFFIXES + _PARQUET_SUFFIXES)
        raise DataValidationError(
            f"unknown data file extension for {str(path)!r} (suffix {''.join(path.suffixes)!r}); "
            f"expected one of {known}, or 'sp500'"
        )
    if not path.is_file():
        raise DataValidationError(f"data file not found: {str(path)!r}")
    try:
        if name.endswith(_CSV_SUFFIXES):
            return pd.read_csv(path)
        return pd.read_parquet(path)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise DataValidationError(f"cannot read data file {str(path)!r}: {err}") from err


# --- columns and timestamps ---------------------------------------------------------------------


def _normalized_columns(df: pd.DataFrame) -> dict[str, int]:
    """Lower-cased, stripped column name -> position; two columns with one name is an error."""
    positions: dict[str, int] = {}
    for pos, raw in enumerate(df.columns):
        name = str(raw).strip().lower()
        if name in positions and name in (*OHLCV_COLUMNS, *TIME_COLUMN_ALIASES):
            first = df.columns[positions[name]]
            raise DataValidationError(
                f"columns {str(first)!r} and {str(raw)!r} both mean {name!r}; keep only one"
            )
        positions.setdefault(name, pos)
    return positions


def _find_time_source(df: pd.DataFrame, columns: dict[str, int]) -> tuple[pd.Series, str] | None:
    """The time values and the name to use in messages, from a column or the index."""
    for alias in TIME_COLUMN_ALIASES:
        if alias in columns:
            return df.iloc[:, columns[alias]], str(df.columns[columns[alias]])
    index_name = str(df.index.name).strip().lower() if df.index.name is not None else ""
    if isinstance(df.index, pd.DatetimeIndex) or index_name in TIME_COLUMN_ALIASES:
        return pd.Series(df.index, name=df.index.name), f"index {df.index.name or ''}".strip()
    return None


def _parse_timestamps(values: pd.Series, label: str) -> pd.Series:
    """Parse to tz-naive ``datetime64[ns]``; tz-aware values are converted to UTC first."""
    values = values.reset_index(drop=True)
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        parsed = values.dt.tz_convert("UTC").dt.tz_localize(None)
    elif pd.api.types.is_datetime64_dtype(values.dtype):
        parsed = values
    elif pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values):
        raise DataValidationError(
            f"time column {label!r} is numeric ({values.dtype}); epoch numbers are ambiguous "
            f"(seconds, milliseconds or nanoseconds), write timestamps as ISO-8601 text"
        )
    else:
        parsed = _parse_timestamp_text(values)
        bad = (parsed.isna() & values.notna()).to_numpy()
        if (row := _first_row(bad)) is not None:
            raise DataValidationError(
                f"unparseable timestamp in column {label!r} at row {row}: {values.iloc[row]!r}"
            )
    if parsed.isna().any():
        row = int(np.flatnonzero(parsed.isna().to_numpy())[0])
        raise DataValidationError(f"missing timestamp in column {label!r} at row {row}")
    try:
        return parsed.astype("datetime64[ns]").rename("timestamp")
    except (pd.errors.OutOfBoundsDatetime, OverflowError) as err:
        raise DataValidationError(
            f"timestamp in column {label!r} outside the datetime64[ns] range (1677-2262): {err}"
        ) from err


def _parse_timestamp_text(values: pd.Series) -> pd.Series:
    # utc=True: naive text stays as written, text with offsets (even mixed ones) becomes UTC.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Could not infer format", category=UserWarning)
        parsed = pd.to_datetime(values, errors="coerce", utc=True)
        if parsed.isna().any():
            # The fast path infers one format from the first value; retry value by value so
            # that only text no format can read is reported.
            parsed = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
    return parsed.dt.tz_localize(None)


def _check_timestamp_order(timestamps: pd.Series) -> None:
    duplicated = timestamps.duplicated(keep=False).to_numpy()
    if duplicated.any():
        first = int(np.flatnonzero(duplicated)[0])
        value = timestamps.iloc[first]
        rows = np.flatnonzero((timestamps == value).to_numpy())
        shown = ", ".join(str(r) for r in rows[:10]) + (", ..." if len(rows) > 10 else "")
        raise DataValidationError(f"duplicate timestamp {value} at rows {shown}")
    ns = timestamps.to_numpy().view("i8")
    decreasing = np.flatnonzero(np.diff(ns) < 0)
    if decreasing.size:
        row = int(decreasing[0]) + 1
        raise DataValidationError(
            f"timestamps are not increasing at row {row}: {timestamps.iloc[row]} "
            f"comes after {timestamps.iloc[row - 1]} (row {row - 1}); sort the bars by time"
        )


# --- values -------------------------------------------------------------------------------------


def _numeric_column(values: pd.Series, name: str) -> pd.Series:
    values = values.reset_index(drop=True)
    if pd.api.types.is_bool_dtype(values.dtype) or not pd.api.types.is_numeric_dtype(values.dtype):
        coerced = pd.to_numeric(values, errors="coerce")
        bad = (coerced.isna() & values.notna()).to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataValidationError(
                f"column {name!r} has a non-numeric value at row {row}: {values.iloc[row]!r}"
            )
        values = coerced
    return values.astype("float64").rename(name)


def _fmt(value: float) -> str:
    return repr(float(value))


def _first_row(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else None


def _check_values(bars: pd.DataFrame) -> None:
    arrays = {name: bars[name].to_numpy() for name in OHLCV_COLUMNS}
    for name, values in arrays.items():
        if (row := _first_row(np.isnan(values))) is not None:
            raise DataValidationError(f"column {name!r} has a missing/NaN value at row {row}")
        if (row := _first_row(np.isinf(values))) is not None:
            raise DataValidationError(f"column {name!r} has an infinite value at row {row}")
    for name in PRICE_COLUMNS:
        values = arrays[name]
        if (row := _first_row(values <= 0)) is not None:
            raise DataValidationError(
                f"column {name!r} has a non-positive price at row {row}: {_fmt(values[row])}"
            )
    o, h, lo, c = (arrays[name] for name in PRICE_COLUMNS)
    if (row := _first_row(h < lo)) is not None:
        raise DataValidationError(
            f"high < low at row {row}: high={_fmt(h[row])}, low={_fmt(lo[row])}"
        )
    top = np.maximum(o, c)
    if (row := _first_row(h < top)) is not None:
        raise DataValidationError(
            f"high below max(open, close) at row {row}: high={_fmt(h[row])}, "
            f"open={_fmt(o[row])}, close={_fmt(c[row])}"
        )
    bottom = np.minimum(o, c)
    if (row := _first_row(lo > bottom)) is not None:
        raise DataValidationError(
            f"low above min(open, close) at row {row}: low={_fmt(lo[row])}, "
            f"open={_fmt(o[row])}, close={_fmt(c[row])}"
        )
    volume = arrays["volume"]
    if (row := _first_row(volume < 0)) is not None:
        raise DataValidationError(
            f"column 'volume' has a negative value at row {row}: {_fmt(volume[row])}"
        )
