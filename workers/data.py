"""Load and validate OHLCV bars: one canonical frame for the rest of the pipeline.

The canonical frame has exactly the columns ``timestamp`` (``datetime64[ns]``, tz-naive, UTC
where the input carried a zone), ``open``, ``high``, ``low``, ``close``, ``volume`` (all
``float64``) and a ``RangeIndex``. Every check raises ``DataValidationError`` with a message
that names the column and the row. A message never quotes a file's text (a cell as written, a
header, a parser's excerpt): the file may hold anything, and the message reaches ``/ws`` as a
run's ``training_error``. Values already read as numbers or timestamps of the OHLCV columns
(a price, a duplicate time) are named: they are the data the run trains on.

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
frame's ``DatetimeIndex``. Extra columns are ignored; a file whose header names a column that is
read (a time column's name or ``open``..``volume``) twice is refused (``workers.sources``).
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.tseries.api import guess_datetime_format

from orchestrator.errors import DataValidationError
from workers.sources import load_sp500, read_source_file

__all__ = [
    "OHLCV_COLUMNS",
    "PRICE_COLUMNS",
    "TIME_COLUMN_ALIASES",
    "infer_date_format",
    "text_date_format",
    "load_ohlcv",
    "validate_ohlcv",
    "data_fingerprint",
]

PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")
OHLCV_COLUMNS: tuple[str, ...] = (*PRICE_COLUMNS, "volume")
TIME_COLUMN_ALIASES: tuple[str, ...] = ("timestamp", "date", "datetime", "time")
CANONICAL_COLUMNS: tuple[str, ...] = ("timestamp", *OHLCV_COLUMNS)
# The columns read from a file: a header naming one of them twice is refused (workers.sources).
_READ_NAMES: tuple[str, ...] = (*TIME_COLUMN_ALIASES, *OHLCV_COLUMNS)

_FINGERPRINT_VERSION = b"ohlcv-fingerprint-v1\n"


def load_ohlcv(source: str | Path | pd.DataFrame, date_format: str | None = None) -> pd.DataFrame:
    """Read ``source`` ("sp500", a CSV/Parquet path or a frame) into the canonical frame.

    ``date_format`` (a ``strptime`` format or ``"ISO8601"``) reads a text time column; by
    default one format is inferred from the whole column (``infer_date_format``).
    """
    if isinstance(source, pd.DataFrame):
        raw = source
    elif isinstance(source, str) and source.strip().lower() == "sp500":
        raw = load_sp500()
    else:
        raw = read_source_file(Path(source), _READ_NAMES)
    return validate_ohlcv(raw, date_format)


def text_date_format(source: str | Path, date_format: str | None = None) -> str | None:
    """The one format of ``source``'s text time column: ``date_format`` if given, else the one
    ``infer_date_format`` finds in the whole column; None when the times are not text. Rows
    appended to a watched file later are read with it, not guessed again row by row."""
    raw = read_source_file(Path(source), _READ_NAMES)
    found = _find_time_source(raw, _normalized_columns(raw))
    if found is None or not pd.api.types.is_string_dtype(found[0].dtype):
        return date_format
    return date_format if date_format is not None else infer_date_format(found[0].astype(str), found[1])


def validate_ohlcv(df: pd.DataFrame, date_format: str | None = None) -> pd.DataFrame:
    """Return the canonical frame built from ``df``, or raise ``DataValidationError``.

    The checks run in this order, so the first problem found is the one reported: missing
    columns, empty data, timestamps (unparseable or ambiguous, duplicate, non-increasing),
    non-numeric values, NaN/inf, non-positive prices, inconsistent high/low, negative volume.
    """
    columns = _normalized_columns(df)
    missing = [c for c in OHLCV_COLUMNS if c not in columns]
    time_source = _find_time_source(df, columns)
    if time_source is None:
        missing.insert(0, "timestamp")
    if missing:
        raise DataValidationError(
            f"missing column(s) {', '.join(missing)}; the data has {len(df.columns)} column(s), "
            "matched by name ignoring case and surrounding blanks (the time column may be named "
            f"{'/'.join(TIME_COLUMN_ALIASES)} or be a DatetimeIndex)"
        )
    if len(df) == 0:
        raise DataValidationError("the data has no rows")

    assert time_source is not None
    timestamps = _parse_timestamps(time_source[0], time_source[1], date_format)
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


def _parse_timestamps(values: pd.Series, label: str, date_format: str | None) -> pd.Series:
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
        parsed = _parse_timestamp_text(values, label, date_format)
        bad = (parsed.isna() & values.notna()).to_numpy()
        if (row := _first_row(bad)) is not None:
            given = f" (date_format {date_format!r})" if date_format is not None else ""
            raise DataValidationError(f"unparseable timestamp in column {label!r} at row {row}{given}")
    if parsed.isna().any():
        row = int(np.flatnonzero(parsed.isna().to_numpy())[0])
        raise DataValidationError(f"missing timestamp in column {label!r} at row {row}")
    try:
        return parsed.astype("datetime64[ns]").rename("timestamp")
    except (pd.errors.OutOfBoundsDatetime, OverflowError) as err:
        raise DataValidationError(
            f"timestamp in column {label!r} outside the datetime64[ns] range (1677-2262): {err}"
        ) from err


def _parse_timestamp_text(values: pd.Series, label: str, date_format: str | None) -> pd.Series:
    """One format for the whole column: ``date_format``, else the one ``infer_date_format`` finds.

    Naive text stays as written; text with offsets (even mixed ones) becomes UTC.
    """
    if not all(isinstance(v, str) for v in values[values.notna()]):
        return _to_datetime(values, None).dt.tz_localize(None)  # datetime objects and the like
    fmt = date_format if date_format is not None else infer_date_format(values, label)
    return _to_datetime(values, fmt).dt.tz_localize(None)


def infer_date_format(values: pd.Series, label: str = "timestamp") -> str:
    """The one format that reads every value of a text time column (docs/method.md, "Data").

    Candidates: ISO 8601, day-first and month-first dates (``/``, ``-`` or ``.``, 4- or 2-digit
    year, optionally ``%H:%M[:%S]``), year-first with ``/``, and the two formats pandas guesses
    from the first value. A format counts only if it reads every non-missing value. Formats that
    read the same instants agree; if two readings differ (``01/02/2015``: 1 February or
    January 2), the one whose times do not decrease is used; if both or neither do, the column is
    ambiguous: ``DataValidationError`` names both formats and ``--date-format``. If no format
    reads every value, the one that reads most is returned (the caller names a row it cannot
    read).
    """
    present = values[values.notna()]
    sample = present.iloc[:_SAMPLE]
    first = str(present.iloc[0]) if len(present) else ""
    candidates = [
        fmt
        for fmt in _candidate_formats(first)
        if _to_datetime(sample, fmt).notna().any()  # cheap: most candidates read no sample value
    ]
    readings: dict[str, pd.Series] = {}
    closest: tuple[int, str] = (-1, "ISO8601")
    for fmt in candidates:
        parsed = _to_datetime(values, fmt)
        read = int(parsed.notna().sum())
        if read < len(present):
            closest = max(closest, (read, fmt), key=lambda c: c[0])
        elif not any(parsed.equals(other) for other in readings.values()):
            readings[fmt] = parsed
    ordered = [fmt for fmt, parsed in readings.items() if _non_decreasing(parsed)]
    if len(readings) <= 1 or len(ordered) == 1:
        return (ordered or list(readings) or [closest[1]])[0]
    fmt_a, fmt_b = (ordered if len(ordered) > 1 else list(readings))[:2]
    a, b = readings[fmt_a], readings[fmt_b]
    row = int(np.flatnonzero(((a != b) & values.notna()).to_numpy())[0])
    order = "both readings keep" if ordered else "neither reading keeps"
    raise DataValidationError(
        f"ambiguous timestamps in column {label!r}: every value reads as {fmt_a!r} and as "
        f"{fmt_b!r} with different dates (row {row} is {a.iloc[row]:%Y-%m-%d} or "
        f"{b.iloc[row]:%Y-%m-%d}), and {order} the times in "
        f"order; give the format with --date-format (config field date_format), "
        f"e.g. --date-format '{fmt_a}'"
    )


_SAMPLE = 50  # values a candidate format is first tried on
_CLOCKS = ("", " %H:%M", " %H:%M:%S")
_CANDIDATES: tuple[str, ...] = (
    "ISO8601",
    *(
        f"{first}{sep}{second}{sep}{year}{clock}"
        for sep in "/-."
        for first, second in (("%d", "%m"), ("%m", "%d"))
        for year in ("%Y", "%y")
        for clock in _CLOCKS
    ),
    *(f"%Y/%m/%d{clock}" for clock in _CLOCKS),
)


def _candidate_formats(first: str) -> list[str]:
    with warnings.catch_warnings():  # "Parsing dates in %d/%m/%Y format when dayfirst=False"
        warnings.simplefilter("ignore", UserWarning)
        guessed = [guess_datetime_format(first, dayfirst=d) for d in (False, True)] if first else []
    # No convention writes year-day-month; pandas' day-first guess of an ISO date would.
    usual = [g for g in guessed if g and not (g.startswith("%Y") and g.find("%d") < g.find("%m"))]
    return list(dict.fromkeys([*_CANDIDATES, *usual]))


def _to_datetime(values: pd.Series, fmt: str | None) -> pd.Series:
    try:
        with warnings.catch_warnings():
            # format=None (datetime objects) may warn that it infers a format per value
            warnings.filterwarnings("ignore", "Could not infer format", UserWarning)
            return pd.to_datetime(values, errors="coerce", utc=True, format=fmt)
    except ValueError as err:  # a bad directive in a format given by the user
        raise DataValidationError(f"date_format {fmt!r} is not a valid format: {err}") from err


def _non_decreasing(parsed: pd.Series) -> bool:
    ns = parsed.dropna().to_numpy(dtype="datetime64[ns]").view("i8")
    return bool(np.all(np.diff(ns) >= 0))


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
            raise DataValidationError(f"column {name!r} has a non-numeric value at row {row}")
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
        raise DataValidationError(f"high < low at row {row}: high={_fmt(h[row])}, low={_fmt(lo[row])}")
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
        raise DataValidationError(f"column 'volume' has a negative value at row {row}: {_fmt(volume[row])}")
