"""A watched CSV/Parquet file: appended rows become candles; bad rows are warnings, not losses."""

from __future__ import annotations

import threading
from pathlib import Path

import pandas as pd

from orchestrator.data.watch import DataFeed, DataWatcher, FeedUpdate
from tests.synthetic import random_walk_ohlcv
from workers.data import load_ohlcv


def _csv(tmp_path: Path, n: int = 50) -> tuple[Path, pd.DataFrame]:
    frame = random_walk_ohlcv(n + 3, seed=7)
    path = tmp_path / "bars.csv"
    frame.iloc[:n].to_csv(path, index=False, date_format="%Y-%m-%d")
    return path, frame


def _append(path: Path, text: str) -> None:
    with path.open("a") as handle:
        handle.write(text)


def _line(row: pd.Series) -> str:
    return f"{row.timestamp:%Y-%m-%d},{row.open},{row.high},{row.low},{row.close},{row.volume}\n"


def test_appended_rows_become_candles_and_next_run_data(tmp_path: Path) -> None:
    path, frame = _csv(tmp_path)
    feed = DataFeed(path, tmp_path / "snap")
    assert feed.poll().candles == []
    _append(path, _line(frame.iloc[50]) + _line(frame.iloc[51]))
    update = feed.poll()
    assert [c.timestamp for c in update.candles] == [
        f"{frame.timestamp[i]:%Y-%m-%dT%H:%M:%SZ}" for i in (50, 51)
    ]
    assert update.candles[1].close == frame.close[51] and update.warnings == []
    snapshot = load_ohlcv(feed.snapshot)
    assert len(snapshot) == 52 and snapshot.close.iloc[-1] == frame.close[51]


def test_appended_day_first_rows_are_read_in_the_files_own_format(tmp_path: Path) -> None:
    """A day-first file: an appended row dated 05/02 is 5 February, as the column says, not May."""
    frame = random_walk_ohlcv(40, seed=9, start="2021-01-01")
    path = tmp_path / "dayfirst.csv"
    frame.iloc[:30].to_csv(path, index=False, date_format="%d/%m/%Y")
    feed = DataFeed(path, tmp_path / "snap")
    assert feed.date_format == "%d/%m/%Y"
    row = frame.iloc[30]
    _append(path, f"{row.timestamp:%d/%m/%Y},{row.open},{row.high},{row.low},{row.close},{row.volume}\n")
    update = feed.poll()
    assert update.warnings == [] and [c.timestamp for c in update.candles] == [
        f"{row.timestamp:%Y-%m-%dT%H:%M:%SZ}"
    ]


def test_malformed_rows_are_skipped_with_a_warning(tmp_path: Path) -> None:
    path, frame = _csv(tmp_path)
    feed = DataFeed(path, tmp_path / "snap")
    bad_price = _line(frame.iloc[50]).replace(f",{frame.close[50]},", ",-1,", 1)
    _append(
        path,
        "2001-13-45,1,2,0.5,1,10\n" + bad_price + "garbage\n" + _line(frame.iloc[49]) + _line(frame.iloc[50]),
    )
    update = feed.poll()
    assert len(update.warnings) == 4, update.warnings
    assert "line 52" in update.warnings[0] and "timestamp" in update.warnings[0]
    assert "line 54" in update.warnings[2]
    assert "not after the last bar" in update.warnings[3]
    assert [c.close for c in update.candles] == [frame.close[50]]
    assert len(feed.frame) == 51  # nothing already loaded is lost


def test_partial_line_waits_for_its_newline(tmp_path: Path) -> None:
    path, frame = _csv(tmp_path)
    feed = DataFeed(path, tmp_path / "snap")
    line = _line(frame.iloc[50])
    _append(path, line[:10])
    assert feed.poll().candles == []
    _append(path, line[10:])
    assert len(feed.poll().candles) == 1


def test_parquet_rows_after_last_timestamp(tmp_path: Path) -> None:
    frame = random_walk_ohlcv(40, seed=8)
    path = tmp_path / "bars.parquet"
    frame.iloc[:30].to_parquet(path)
    feed = DataFeed(path, tmp_path / "snap")
    frame.iloc[:33].to_parquet(path)
    assert len(feed.poll().candles) == 3


def test_candle_pages(tmp_path: Path) -> None:
    path, frame = _csv(tmp_path)
    feed = DataFeed(path, tmp_path / "snap")
    first, cursor = feed.page(None, 20)
    assert len(first) == 20 and cursor == first[-1].timestamp
    rest, end = feed.page(cursor, 1000)
    assert len(rest) == 30 and end is None and rest[0].timestamp > cursor


def test_watcher_thread_delivers_within_a_second(tmp_path: Path) -> None:
    path, frame = _csv(tmp_path)
    got: list[FeedUpdate] = []
    arrived = threading.Event()

    def on_update(update: FeedUpdate) -> None:
        got.append(update)
        arrived.set()

    watcher = DataWatcher(DataFeed(path, tmp_path / "snap"), on_update, interval_s=0.05).start()
    try:
        _append(path, _line(frame.iloc[50]))
        assert arrived.wait(1.0)
        assert got[0].candles[0].close == frame.close[50]
    finally:
        watcher.stop()
