"""A watched OHLCV file: rows appended to it become ``chart_update`` candles and new run data.

``DataFeed`` holds the validated bars of a CSV or Parquet file in memory. ``poll`` reads what was
appended since the last call (CSV: complete new lines past the last byte read; Parquet: rows after
the last timestamp, re-read on change), validates each row on its own and against the last good
bar, keeps the good ones and reports each bad one as a warning: a malformed row is skipped and
nothing already loaded is lost. Good rows are written to a Parquet snapshot (atomically), which
is the data of the next run started while the file is watched.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from orchestrator.errors import DataValidationError, brief
from orchestrator.messages import Candle
from workers.data import CANONICAL_COLUMNS, load_ohlcv, text_date_format, validate_ohlcv

__all__ = ["CandleBook", "DataFeed", "DataWatcher", "FeedUpdate", "candles_of"]

log = logging.getLogger(__name__)


def _iso(ts: pd.Timestamp) -> str:
    return str(ts.strftime("%Y-%m-%dT%H:%M:%SZ"))


def candles_of(frame: pd.DataFrame) -> list[Candle]:
    return [
        Candle(
            timestamp=_iso(row.timestamp),
            open=row.open,
            high=row.high,
            low=row.low,
            close=row.close,
            volume=row.volume,
        )
        for row in frame.itertuples(index=False)
    ]


@dataclass
class FeedUpdate:
    candles: list[Candle] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class CandleBook:
    """Pages over a dataset's bars as candles (``GET /data/candles``)."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self._lock = threading.Lock()

    @classmethod
    def load(cls, source: str, date_format: str | None = None) -> CandleBook:
        return cls(load_ohlcv(source, date_format))

    def page(self, since: str | None, limit: int) -> tuple[list[Candle], str | None]:
        """Candles after ``since`` (exclusive ISO timestamp), at most ``limit``; and the cursor."""
        with self._lock:
            frame = self.frame
            if since:
                try:
                    cutoff = pd.Timestamp(since)
                except ValueError as err:
                    raise DataValidationError(
                        f"since must be an ISO timestamp, got since={brief(since)}"
                    ) from err
                if cutoff.tzinfo is not None:
                    cutoff = cutoff.tz_convert("UTC").tz_localize(None)
                frame = frame[frame["timestamp"] > cutoff]
            chunk = frame.iloc[:limit]
        candles = candles_of(chunk)
        more = len(frame) > limit
        return candles, (candles[-1].timestamp if candles and more else None)


class DataFeed(CandleBook):
    def __init__(self, path: str | Path, snapshot_dir: str | Path, date_format: str | None = None) -> None:
        super().__init__(load_ohlcv(path, date_format))  # the initial file must be valid as a whole
        # appended rows are read in the one format of the whole initial column
        self.date_format = text_date_format(path, date_format)
        self.path = Path(path)
        self.snapshot = Path(snapshot_dir) / f"{self.path.stem}.snapshot.parquet"
        self._is_csv = self.path.suffix.lower() == ".csv"
        self._offset = self.path.stat().st_size
        self._stat = self._signature()
        self._header = self._read_header() if self._is_csv else None
        self._line_no = len(self.frame) + 1  # 1-based file line of the next CSV row (header is 1)
        self._write_snapshot()

    def _signature(self) -> tuple[int, int]:
        st = self.path.stat()
        return st.st_size, st.st_mtime_ns

    def _read_header(self) -> list[str]:
        with self.path.open(newline="") as handle:
            return next(csv.reader(handle))

    def _write_snapshot(self) -> None:
        self.snapshot.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.snapshot.with_name(f".{self.snapshot.name}.tmp")
        self.frame.to_parquet(tmp, index=False)
        os.replace(tmp, self.snapshot)

    def poll(self) -> FeedUpdate:
        """Take the rows appended since the last poll; return the new candles and warnings."""
        with self._lock:
            try:
                signature = self._signature()
            except FileNotFoundError:
                return FeedUpdate(
                    warnings=[
                        f"watched file {self.path} disappeared; keeping the {len(self.frame)} bars loaded"
                    ]
                )
            if signature == self._stat:
                return FeedUpdate()
            self._stat = signature
            rows = self._new_csv_rows() if self._is_csv else self._new_parquet_rows()
            update = FeedUpdate()
            good: list[pd.DataFrame] = []
            for label, raw in rows:
                try:
                    bar = self._validated(raw)
                except DataValidationError as err:
                    update.warnings.append(f"{self.path.name} {label} skipped: {err}")
                    continue
                good.append(bar)
                self.frame = pd.concat([self.frame, bar], ignore_index=True)
            if good:
                update.candles = candles_of(pd.concat(good, ignore_index=True))
                self._write_snapshot()
            return update

    def _new_csv_rows(self) -> list[tuple[str, pd.DataFrame]]:
        size = self.path.stat().st_size
        if size < self._offset:  # truncated or replaced: nothing appended can be trusted
            self._offset = size
            return [("file", pd.DataFrame())]
        with self.path.open("rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read(size - self._offset)
        end = chunk.rfind(b"\n")
        if end < 0:
            return []  # no complete line yet
        self._offset += end + 1
        rows = []
        for line in chunk[: end + 1].decode("utf-8", errors="replace").splitlines():
            self._line_no += 1
            if not line.strip():
                continue
            values = next(csv.reader(io.StringIO(line)))
            label = f"line {self._line_no}"
            if len(values) != len(self._header or []):
                rows.append(
                    (
                        label,
                        pd.DataFrame(
                            {"error": [f"{len(values)} fields, header has {len(self._header or [])}"]}
                        ),
                    )
                )
                continue
            rows.append((label, pd.DataFrame([values], columns=self._header)))
        return rows

    def _new_parquet_rows(self) -> list[tuple[str, pd.DataFrame]]:
        frame = pd.read_parquet(self.path)
        n_known = len(self.frame)
        return [(f"row {i}", frame.iloc[[i]].reset_index(drop=True)) for i in range(n_known, len(frame))]

    def _validated(self, raw: pd.DataFrame) -> pd.DataFrame:
        if "error" in raw.columns:
            raise DataValidationError(str(raw["error"].iloc[0]))
        bar = validate_ohlcv(raw, self.date_format)[list(CANONICAL_COLUMNS)]
        last = self.frame["timestamp"].iloc[-1]
        if bar["timestamp"].iloc[0] <= last:
            raise DataValidationError(
                f"timestamp {bar['timestamp'].iloc[0]} is not after the last bar's {last}"
            )
        return bar


class DataWatcher:
    """Polls a ``DataFeed`` on a thread and hands updates to ``on_update``."""

    def __init__(
        self, feed: DataFeed, on_update: Callable[[FeedUpdate], None], interval_s: float = 0.2
    ) -> None:
        self.feed = feed
        self.on_update = on_update
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="data-watcher", daemon=True)

    def start(self) -> DataWatcher:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                update = self.feed.poll()
            except Exception as err:  # keep watching: one bad read must not end the feed
                log.exception("data watcher poll failed")
                update = FeedUpdate(warnings=[f"reading {self.feed.path} failed: {err}"])
            if update.candles or update.warnings:
                self.on_update(update)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
