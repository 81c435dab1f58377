"""Loading and validating OHLCV bars: the bundled set, files, frames and every bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from orchestrator.errors import DataValidationError
from tests.synthetic import random_walk_ohlcv
from workers.data import CANONICAL_COLUMNS, data_fingerprint, load_ohlcv, validate_ohlcv


@pytest.fixture
def bars() -> pd.DataFrame:
    return random_walk_ohlcv(50, seed=7)


def _assert_canonical(df: pd.DataFrame) -> None:
    assert tuple(df.columns) == CANONICAL_COLUMNS
    assert df["timestamp"].dtype == np.dtype("datetime64[ns]")
    for name in CANONICAL_COLUMNS[1:]:
        assert df[name].dtype == np.float64, name
    assert isinstance(df.index, pd.RangeIndex)
    assert df["timestamp"].is_monotonic_increasing


# --- good inputs --------------------------------------------------------------------------------


def test_sp500_loads_the_bundled_daily_bars() -> None:
    df = load_ohlcv("SP500")
    _assert_canonical(df)
    assert len(df) == 5031
    assert df["timestamp"].iloc[0] == pd.Timestamp("1999-01-04")
    assert df["timestamp"].iloc[-1].year == 2018
    assert df["timestamp"].is_unique


def test_frame_input_is_canonicalised_and_not_modified(bars: pd.DataFrame) -> None:
    original = bars.copy()
    df = load_ohlcv(bars)
    _assert_canonical(df)
    pd.testing.assert_frame_equal(bars, original)
    pd.testing.assert_frame_equal(df, bars)


def test_csv_round_trip(tmp_path: Path, bars: pd.DataFrame) -> None:
    path = tmp_path / "bars.csv"
    bars.to_csv(path, index=False)
    df = load_ohlcv(path)
    _assert_canonical(df)
    pd.testing.assert_frame_equal(df, bars, check_exact=False, rtol=1e-12)


def test_gzipped_csv_round_trip(tmp_path: Path, bars: pd.DataFrame) -> None:
    path = tmp_path / "bars.csv.gz"
    bars.to_csv(path, index=False)
    pd.testing.assert_frame_equal(load_ohlcv(str(path)), bars, check_exact=False, rtol=1e-12)


@pytest.mark.parametrize("suffix", [".parquet", ".pq"])
def test_parquet_round_trip_is_exact(tmp_path: Path, bars: pd.DataFrame, suffix: str) -> None:
    path = tmp_path / f"bars{suffix}"
    bars.to_parquet(path, index=False)
    df = load_ohlcv(path)
    _assert_canonical(df)
    pd.testing.assert_frame_equal(df, bars)
    assert data_fingerprint(df) == data_fingerprint(bars)


def test_parquet_with_datetime_index(tmp_path: Path, bars: pd.DataFrame) -> None:
    path = tmp_path / "indexed.parquet"
    bars.set_index("timestamp").to_parquet(path)
    pd.testing.assert_frame_equal(load_ohlcv(path), bars)


def test_column_names_are_case_insensitive_and_stripped(bars: pd.DataFrame) -> None:
    renamed = bars.rename(columns={c: f" {c.upper()} " for c in bars.columns})
    renamed["Adj Close"] = 1.0  # extra columns are ignored
    pd.testing.assert_frame_equal(load_ohlcv(renamed), bars)


@pytest.mark.parametrize("name", ["date", "Date", "datetime", "time"])
def test_time_column_aliases(bars: pd.DataFrame, name: str) -> None:
    pd.testing.assert_frame_equal(load_ohlcv(bars.rename(columns={"timestamp": name})), bars)


def test_datetime_index_input(bars: pd.DataFrame) -> None:
    indexed = bars.set_index("timestamp")
    indexed.index.name = None
    pd.testing.assert_frame_equal(load_ohlcv(indexed), bars)


def test_text_timestamps_with_zones_become_naive_utc(bars: pd.DataFrame) -> None:
    text = bars.head(3).copy()
    text["timestamp"] = [
        "2020-01-02T09:30:00-05:00",
        "2020-01-02T10:30:00-05:00",
        "2020-01-02T16:00:00Z",
    ]
    df = load_ohlcv(text)
    assert list(df["timestamp"]) == [
        pd.Timestamp("2020-01-02 14:30"),
        pd.Timestamp("2020-01-02 15:30"),
        pd.Timestamp("2020-01-02 16:00"),
    ]
    assert df["timestamp"].dtype == np.dtype("datetime64[ns]")


def test_tz_aware_index_becomes_naive_utc(bars: pd.DataFrame) -> None:
    indexed = bars.set_index("timestamp").tz_localize("America/New_York")
    df = load_ohlcv(indexed)
    assert df["timestamp"].dt.tz is None
    expected = bars["timestamp"] + pd.Timedelta(hours=5)  # January: EST is UTC-5
    assert df["timestamp"].iloc[0] == expected.iloc[0]


def test_integer_volume_and_prices_become_float64(bars: pd.DataFrame) -> None:
    ints = bars.copy()
    ints["volume"] = ints["volume"].astype(np.int64)
    df = load_ohlcv(ints)
    assert df["volume"].dtype == np.float64


def test_zero_volume_is_valid(bars: pd.DataFrame) -> None:
    zero = bars.assign(volume=0.0)
    assert (load_ohlcv(zero)["volume"] == 0.0).all()


def test_fingerprint_is_stable_and_sensitive(bars: pd.DataFrame) -> None:
    first = data_fingerprint(bars)
    assert first == data_fingerprint(bars.copy())
    assert len(first) == 64 and int(first, 16) >= 0
    changed = bars.copy()
    changed.loc[10, "volume"] += 1.0
    assert data_fingerprint(changed) != first
    shifted = bars.copy()
    shifted["timestamp"] = shifted["timestamp"] + pd.Timedelta(seconds=1)
    assert data_fingerprint(shifted) != first


# --- bad inputs ---------------------------------------------------------------------------------


def _with(bars: pd.DataFrame, row: int, **values: object) -> pd.DataFrame:
    out = bars.astype({name: object for name in values})
    for name, value in values.items():
        out.loc[row, name] = value
    return out


def test_missing_column_names_it_and_counts_but_never_quotes_the_headers(bars: pd.DataFrame) -> None:
    renamed = bars.drop(columns=["volume"]).rename(columns={"open": "root:x:0:0:secret"})
    with pytest.raises(
        DataValidationError, match=r"missing column\(s\) open, volume; the data has 5 column"
    ) as err:
        load_ohlcv(renamed)
    assert "secret" not in str(err.value)


def test_missing_time_column(bars: pd.DataFrame) -> None:
    with pytest.raises(DataValidationError, match=r"missing column\(s\) timestamp, high"):
        load_ohlcv(bars.drop(columns=["timestamp", "high"]))


def test_unparseable_timestamp_names_the_row_but_never_quotes_the_cell(bars: pd.DataFrame) -> None:
    bad = bars.astype({"timestamp": str})
    bad.loc[17, "timestamp"] = "not a date"
    with pytest.raises(
        DataValidationError, match=r"unparseable timestamp in column 'timestamp' at row 17$"
    ) as err:
        load_ohlcv(bad)
    assert "not a date" not in str(err.value)


def test_unparseable_timestamp_in_csv(tmp_path: Path, bars: pd.DataFrame) -> None:
    bad = bars.astype({"timestamp": str})
    bad.loc[3, "timestamp"] = "2000-13-45"
    path = tmp_path / "bad.csv"
    bad.to_csv(path, index=False)
    with pytest.raises(DataValidationError, match=r"unparseable timestamp .* at row 3$") as err:
        load_ohlcv(path)
    assert "2000-13-45" not in str(err.value)


def test_non_increasing_timestamps_name_row_and_both_times(bars: pd.DataFrame) -> None:
    bad = bars.copy()
    bad.loc[[20, 21], "timestamp"] = bad.loc[[21, 20], "timestamp"].to_numpy()
    t20, t21 = bars["timestamp"].iloc[20], bars["timestamp"].iloc[21]
    with pytest.raises(
        DataValidationError, match=rf"not increasing at row 21: {t20} comes after {t21} \(row 20\)"
    ):
        load_ohlcv(bad)


def test_duplicate_timestamps_name_rows(bars: pd.DataFrame) -> None:
    bad = bars.copy()
    bad.loc[31, "timestamp"] = bad.loc[30, "timestamp"]
    with pytest.raises(DataValidationError, match=r"duplicate timestamp .* at rows 30, 31"):
        load_ohlcv(bad)


@pytest.mark.parametrize("column", ["open", "high", "low", "close", "volume"])
def test_nan_names_column_and_row(bars: pd.DataFrame, column: str) -> None:
    bad = bars.copy()
    bad.loc[12, column] = np.nan
    with pytest.raises(DataValidationError, match=rf"column '{column}' has a missing/NaN value at row 12"):
        load_ohlcv(bad)


@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_inf_names_column_and_row(bars: pd.DataFrame, value: float) -> None:
    bad = bars.copy()
    bad.loc[5, "volume"] = value
    with pytest.raises(DataValidationError, match=r"column 'volume' has an infinite value at row 5"):
        load_ohlcv(bad)


@pytest.mark.parametrize("price", [0.0, -3.5])
def test_non_positive_price_names_column_row_value(bars: pd.DataFrame, price: float) -> None:
    bad = bars.copy()
    bad.loc[8, ["open", "low"]] = [bad.loc[8, "close"], price]
    with pytest.raises(
        DataValidationError, match=rf"column 'low' has a non-positive price at row 8: {price}"
    ):
        load_ohlcv(bad)


def test_high_below_low_names_row_and_values(bars: pd.DataFrame) -> None:
    bad = bars.copy()
    bad.loc[9, ["high", "low"]] = [99.0, 101.0]
    with pytest.raises(DataValidationError, match=r"high < low at row 9: high=99.0, low=101.0"):
        load_ohlcv(bad)


def test_high_below_body_names_row(bars: pd.DataFrame) -> None:
    bad = bars.copy()
    bad.loc[4, "high"] = max(bad.loc[4, "open"], bad.loc[4, "close"]) * 0.999
    bad.loc[4, "low"] = min(bad.loc[4, "low"], bad.loc[4, "high"])
    with pytest.raises(DataValidationError, match=r"high below max\(open, close\) at row 4"):
        load_ohlcv(bad)


def test_low_above_body_names_row(bars: pd.DataFrame) -> None:
    bad = bars.copy()
    bad.loc[6, "low"] = min(bad.loc[6, "open"], bad.loc[6, "close"]) * 1.001
    bad.loc[6, "high"] = max(bad.loc[6, "high"], bad.loc[6, "low"])
    with pytest.raises(DataValidationError, match=r"low above min\(open, close\) at row 6"):
        load_ohlcv(bad)


def test_negative_volume_names_row(bars: pd.DataFrame) -> None:
    bad = bars.copy()
    bad.loc[2, "volume"] = -10.0
    with pytest.raises(DataValidationError, match=r"column 'volume' has a negative value at row 2: -10.0"):
        load_ohlcv(bad)


def test_non_numeric_price_names_column_and_row_but_never_quotes_the_cell(bars: pd.DataFrame) -> None:
    bad = _with(bars, 11, close="s3cret-12,5")
    with pytest.raises(
        DataValidationError, match=r"column 'close' has a non-numeric value at row 11$"
    ) as err:
        load_ohlcv(bad)
    assert "s3cret" not in str(err.value)


def test_non_numeric_in_csv(tmp_path: Path, bars: pd.DataFrame) -> None:
    path = tmp_path / "bad.csv"
    _with(bars, 14, high="n/a?").to_csv(path, index=False)
    with pytest.raises(DataValidationError, match=r"column 'high' has a non-numeric value at row 14"):
        load_ohlcv(path)


def test_missing_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.csv"
    with pytest.raises(DataValidationError, match=r"data file not found: .*nowhere\.csv"):
        load_ohlcv(path)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("latin1.csv", b"timestamp,open\n2020-01-01,1\ns3cret \xff\xfe,2\n"),
        ("text.parquet", b"root:x:0:0:s3cret:/root:/bin/bash\n"),
        ("ragged.csv", b"a,b\n1,2\n3,4,s3cret,6\n"),
    ],
)
def test_an_unreadable_file_is_named_without_quoting_its_bytes(
    tmp_path: Path, name: str, content: bytes
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataValidationError, match=rf"cannot read data file .*{name}': \w") as err:
        load_ohlcv(path)
    assert "s3cret" not in str(err.value) and "\\x" not in str(err.value)


def test_unknown_extension_names_it(tmp_path: Path) -> None:
    path = tmp_path / "bars.xlsx"
    path.write_text("x")
    with pytest.raises(DataValidationError, match=r"unknown data file extension .*bars\.xlsx.*'\.xlsx'"):
        load_ohlcv(path)


def test_empty_frame(bars: pd.DataFrame) -> None:
    with pytest.raises(DataValidationError, match="no rows"):
        load_ohlcv(bars.head(0))


def test_numeric_timestamps_are_rejected(bars: pd.DataFrame) -> None:
    numeric = bars.assign(timestamp=np.arange(len(bars)))
    with pytest.raises(DataValidationError, match=r"time column 'timestamp' is numeric"):
        load_ohlcv(numeric)


def test_two_columns_with_one_meaning(bars: pd.DataFrame) -> None:
    doubled = bars.assign(Close=bars["close"])
    with pytest.raises(DataValidationError, match=r"columns 'close' and 'Close' both mean 'close'"):
        validate_ohlcv(doubled)


# --- one format per time column (issue 15, case 2) ----------------------------------------------

DATA = Path(__file__).parent / "data"


def _with_times(bars: pd.DataFrame, stamps: list[str]) -> pd.DataFrame:
    return bars.head(len(stamps)).assign(timestamp=stamps)


def test_day_first_csv_reads_with_one_format() -> None:
    # The first 40 bars of the case's file: sorted business days from 2 January 2015, %d/%m/%Y.
    # Read value by value, row 7 ('13/01/2015') came out before row 6 ('12/01/2015' as 1 Dec).
    df = load_ohlcv(DATA / "dayfirst_dates.csv")
    _assert_canonical(df)
    expected = pd.bdate_range("2015-01-02", periods=40)
    assert list(df["timestamp"]) == list(expected)
    assert df["timestamp"].iloc[6] == pd.Timestamp("2015-01-12")


def test_month_first_with_dashes_times_and_two_digit_years(bars: pd.DataFrame) -> None:
    # Another member: US-style month-first stamps with a clock; '01-13-15' rules out day-first.
    stamps = ["01-12-15 09:30", "01-12-15 16:00", "01-13-15 09:30", "02-01-15 09:30"]
    df = load_ohlcv(_with_times(bars, stamps))
    assert list(df["timestamp"]) == [
        pd.Timestamp("2015-01-12 09:30"),
        pd.Timestamp("2015-01-12 16:00"),
        pd.Timestamp("2015-01-13 09:30"),
        pd.Timestamp("2015-02-01 09:30"),
    ]


def test_only_the_reading_that_keeps_times_in_order_is_used(bars: pd.DataFrame) -> None:
    # Every value reads both ways; month-first would put 1 December before 2 January.
    df = load_ohlcv(_with_times(bars, ["12/01/2015", "01/02/2015", "02/02/2015"]))
    assert list(df["timestamp"]) == [
        pd.Timestamp("2015-01-12"),
        pd.Timestamp("2015-02-01"),
        pd.Timestamp("2015-02-02"),
    ]


def test_ambiguous_column_is_refused_naming_both_formats_and_the_flag(bars: pd.DataFrame) -> None:
    # Monthly bars dated on the 1st: sorted both as 1 Feb, 1 Mar, ... and as 2 Jan, 3 Jan, ...
    stamps = [f"01/{month:02d}/2015" for month in range(2, 8)]
    with pytest.raises(DataValidationError) as err:
        load_ohlcv(_with_times(bars, stamps))
    text = str(err.value)
    assert "ambiguous" in text and "'%d/%m/%Y'" in text and "'%m/%d/%Y'" in text
    assert "--date-format" in text and "date_format" in text
    assert "row 0 is 2015-02-01 or 2015-01-02" in text and "'01/02/2015'" not in text


def test_date_format_resolves_an_ambiguous_column(bars: pd.DataFrame) -> None:
    stamps = [f"01/{month:02d}/2015" for month in range(2, 8)]
    day_first = load_ohlcv(_with_times(bars, stamps), date_format="%d/%m/%Y")
    assert list(day_first["timestamp"]) == list(pd.date_range("2015-02-01", periods=6, freq="MS"))
    month_first = validate_ohlcv(_with_times(bars, stamps), date_format="%m/%d/%Y")
    assert list(month_first["timestamp"]) == list(pd.date_range("2015-01-02", periods=6))


def test_value_not_matching_date_format_names_the_row(bars: pd.DataFrame) -> None:
    stamps = ["02/01/2015", "05/01/2015", "2015-01-06", "07/01/2015"]
    with pytest.raises(
        DataValidationError,
        match=r"unparseable timestamp .* at row 2 \(date_format '%d/%m/%Y'\)",
    ):
        load_ohlcv(_with_times(bars, stamps), date_format="%d/%m/%Y")
    with pytest.raises(DataValidationError, match=r"date_format '%Q' is not a valid format"):
        load_ohlcv(_with_times(bars, stamps), date_format="%Q")


def test_unsorted_day_first_file_keeps_the_unsorted_error(bars: pd.DataFrame) -> None:
    stamps = ["13/01/2015", "15/01/2015", "14/01/2015", "16/01/2015"]
    with pytest.raises(DataValidationError, match=r"not increasing at row 2: .*sort the bars"):
        load_ohlcv(_with_times(bars, stamps))


def test_mixed_formats_in_one_column_name_the_odd_row(bars: pd.DataFrame) -> None:
    stamps = ["2015-01-02", "2015-01-05", "06/01/2015", "2015-01-07"]
    with pytest.raises(DataValidationError, match=r"unparseable .* at row 2$"):
        load_ohlcv(_with_times(bars, stamps))
