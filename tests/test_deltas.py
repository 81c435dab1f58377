"""prediction_delta bookkeeping: every row first, then only changed rows, chunks under the size cap."""

from __future__ import annotations

import json

import numpy as np

from orchestrator.messages import to_wire
from workers.deltas import DELTA_FIELDS, PredictionDeltaTracker


def _rows(n: int, value: float) -> dict[str, np.ndarray]:
    return {name: np.full(n, value) for name in DELTA_FIELDS}


def _timestamps(n: int) -> np.ndarray:
    return np.datetime64("2020-01-01") + np.arange(n).astype("timedelta64[D]")


def test_first_update_sends_every_row_then_only_the_changed_ones() -> None:
    tracker = PredictionDeltaTracker(_timestamps(5), rtol=1e-6)
    (first,) = tracker.update(0, 0, _rows(5, 0.5))
    assert len(first.predictions) == 5 and first.chunks == 1 and not first.final
    rows = _rows(5, 0.5)
    rows["mu"][3] = 0.6
    rows["sigma"][1] = 0.5 * (1 + 1e-9)  # within rtol: not a change
    (second,) = tracker.update(0, 1, rows)
    assert [p.timestamp for p in second.predictions] == ["2020-01-04T00:00:00Z"]
    assert tracker.update(0, 2, rows) == []  # nothing changed, not final: no message


def test_final_compares_exactly_and_is_sent_even_without_changes() -> None:
    tracker = PredictionDeltaTracker(_timestamps(3), rtol=1e-3)
    tracker.update(0, 0, _rows(3, 0.5))
    rows = _rows(3, 0.5)
    rows["pit_z"][0] = 0.5000001  # under rtol, but a final delta is exact
    (final,) = tracker.update(0, 5, rows, final=True)
    assert final.final and [p.timestamp for p in final.predictions] == ["2020-01-01T00:00:00Z"]
    (empty,) = tracker.update(0, 5, rows, final=True)
    assert empty.final and empty.predictions == []


def test_messages_stay_under_the_byte_cap() -> None:
    n, cap = 2000, 16 * 1024
    tracker = PredictionDeltaTracker(_timestamps(n), max_bytes=cap)
    rows = {name: np.random.default_rng(1).normal(size=n) for name in DELTA_FIELDS}
    messages = tracker.update(2, 0, rows)
    assert len(messages) > 1 and sum(len(m.predictions) for m in messages) == n
    assert [m.chunk for m in messages] == list(range(len(messages)))
    for message in messages:
        assert len(json.dumps(to_wire(message))) <= cap
