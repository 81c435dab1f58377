"""batch_progress and prediction_delta, produced by a real (in-process) run, only for a live audience.

Per-epoch ``prediction_delta`` (a calibration of the fold per epoch) and ``batch_progress`` are
optional work; a fold does it only while some consumer (a /ws client's subscription through the
stream, an ``--events-out`` file, a listener) takes that type, the final delta of each fold too
(its rows are in the predictions CSV either way). Skipping the live detail never changes a result.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from orchestrator.config import config_from_mapping
from orchestrator.events.publish import InProcessSink
from orchestrator.execution.local import LocalExecutor
from orchestrator.lifecycle import RunState
from orchestrator.run.driver import execute_run, new_run
from tests.made_events import bodies
from tests.synthetic import ar1_ohlcv
from tests.test_pipeline import run_local, write_csv
from tests.wire import validate_wire
from workers.deltas import DELTA_FIELDS, PredictionDeltaTracker


@pytest.fixture(scope="module")
def detailed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("detail")
    path = write_csv(tmp, ar1_ohlcv(2500, seed=21))
    return run_local(tmp, path, folds=2, epochs=4, batch_size=32, batch_progress_interval_s=0.05)


def test_heavy_events_are_schema_valid(detailed_run: Any) -> None:
    run, events = detailed_run
    assert run.state is RunState.COMPLETED, run.error
    kinds = {e["type"] for e in events}
    assert {"batch_progress", "prediction_delta"} <= kinds
    for event in events:
        if event["type"] in ("batch_progress", "prediction_delta"):
            validate_wire(event)


def test_batch_progress_is_rate_limited(detailed_run: Any) -> None:
    run, events = detailed_run
    assert {e["fold_id"] for e in events if e["type"] == "batch_progress"} == {0, 1}
    for fold in (0, 1):
        progress = [e for e in events if e["type"] == "batch_progress" and e["fold_id"] == fold]
        epochs = [e for e in events if e["type"] == "epoch_metrics" and e["fold_id"] == fold]
        assert progress, "no batch_progress for fold"
        total = progress[0]["total_batches"]
        assert all(p["total_batches"] == total and 0 <= p["batch"] < total for p in progress)
        # at most one report per interval, plus one closing report per epoch
        span = progress[-1]["ts"] - progress[0]["ts"]
        assert len(progress) <= span / 0.05 + len(epochs) + 1
        assert len(progress) < total * len(epochs)  # the limit actually dropped some
        assert all(p["samples_per_second"] > 0 for p in progress)


def test_prediction_deltas_rebuild_the_final_csv(detailed_run: Any) -> None:
    run, events = detailed_run
    summary = json.loads(Path(run.summary_path).read_text())
    assert [fold["fold_id"] for fold in summary["folds"]] == [0, 1]
    for fold in summary["folds"]:
        state: dict[str, dict[str, float]] = {}
        deltas = [e for e in events if e["type"] == "prediction_delta" and e["fold_id"] == fold["fold_id"]]
        assert deltas[-1]["final"] is True and deltas[-1]["epoch"] == fold["best_epoch"]
        assert len({d["epoch"] for d in deltas if not d["final"]}) == fold["epochs_run"]
        for delta in deltas:
            assert len(json.dumps(delta)) < 256 * 1024
            for row in delta["predictions"]:
                state[row["timestamp"]] = row
        frame = pd.read_csv(fold["predictions_path"])
        val = frame[frame.segment == "validation"]
        assert len(state) == len(val)
        for _, row in val.iterrows():
            sent = state[row.timestamp + "Z"]
            for name in DELTA_FIELDS:
                assert sent[name] == row[name], (name, row.timestamp)


def test_delta_sends_only_changes_and_chunks_under_limit() -> None:
    ts = np.arange("2020-01-01", "2020-03-01", dtype="datetime64[D]").astype("datetime64[ns]")
    n = len(ts)
    rows = {name: np.linspace(0.1, 0.9, n) for name in DELTA_FIELDS}
    tracker = PredictionDeltaTracker(ts, rtol=1e-3, max_bytes=2048)
    first = tracker.update(0, 0, rows)
    assert sum(len(m.predictions) for m in first) == n and len(first) > 1
    assert all(len(m.model_dump_json()) < 2048 for m in first)
    assert [m.chunk for m in first] == list(range(len(first))) and first[0].chunks == len(first)
    rows2 = {k: v.copy() for k, v in rows.items()}
    rows2["mu"][5] *= 1.5
    rows2["sigma"][7] *= 1 + 1e-5  # below the tolerance
    second = tracker.update(0, 1, rows2)
    assert [r.timestamp for m in second for r in m.predictions] == ["2020-01-06T00:00:00Z"]
    assert tracker.update(0, 2, rows2) == []
    final = tracker.update(0, 2, rows2, final=True)
    assert [r.timestamp for m in final for r in m.predictions] == ["2020-01-08T00:00:00Z"]


def _run(tmp: Path, data: str, interest: frozenset[str]) -> tuple[Any, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    config = config_from_mapping(
        {
            "data": data,
            "reports_dir": str(tmp / "reports"),
            "executor": "local",
            "min_samples": 500,
            "folds": 2,
            "epochs": 3,
            "lookback": 10,
            "batch_size": 32,
            "batch_progress_interval_s": 0.01,
        }
    )
    run = new_run(config)
    sink = InProcessSink(listener=lambda records: events.extend(bodies(records)), interest=interest)
    execute_run(run, sink, LocalExecutor())
    assert run.state is RunState.COMPLETED, run.error
    return run, events


def test_unwatched_run_skips_live_detail_and_gets_the_same_results(tmp_path: Path) -> None:
    data = write_csv(tmp_path, ar1_ohlcv(1800, seed=5))
    watched, watched_events = _run(tmp_path / "w", data, frozenset({"prediction_delta", "batch_progress"}))
    alone, alone_events = _run(tmp_path / "a", data, frozenset())

    def kinds(events: list[dict[str, Any]]) -> list[str]:
        return [e["type"] for e in events]

    assert "batch_progress" in kinds(watched_events) and "batch_progress" not in kinds(alone_events)
    live = [e for e in watched_events if e["type"] == "prediction_delta" and not e["final"]]
    assert {e["epoch"] for e in live} == {0, 1, 2}
    finals = [e for e in watched_events if e["type"] == "prediction_delta" and e["final"]]
    assert {e["fold_id"] for e in finals} == {0, 1}
    assert not [e for e in alone_events if e["type"] == "prediction_delta"]
    for fold in (0, 1):
        alone_csv = pd.read_csv(next(Path(alone.run_dir).rglob(f"predictions_fold_{fold}_*.csv")))
        watched_csv = pd.read_csv(next(Path(watched.run_dir).rglob(f"predictions_fold_{fold}_*.csv")))
        # the audience changes what is sent, never what is computed
        pd.testing.assert_frame_equal(alone_csv, watched_csv)
        sent = [e for e in watched_events if e["type"] == "prediction_delta" and e["fold_id"] == fold]
        rows = {r["timestamp"] for e in sent for r in e["predictions"]}
        assert len(rows) == int((alone_csv.segment == "validation").sum())
