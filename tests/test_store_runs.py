"""What released events change in a stored run's row, and the row as a snapshot (pure)."""

from __future__ import annotations

import json

from orchestrator.events.record import EventRecord
from orchestrator.store.runs import (
    INTERRUPTED_PREFIX,
    ended_state,
    merge_metrics,
    patches_for,
    snapshot_of_row,
)
from tests.made_events import complete, epoch, error, fold_done, note, record, start


def _at(ts: float, run_id: str, message: dict[str, object]) -> EventRecord:
    return record(int(ts), run_id, message, ts=ts)


def test_lifecycle_events_set_the_state_and_times() -> None:
    patches = patches_for([_at(10.0, "a", start(3, 5)), _at(11.0, "b", error("boom"))])
    assert patches["a"].values == {"state": "running", "started_at": 10.0, "folds_total": 3}
    assert patches["b"].values == {"state": "failed", "ended_at": 11.0, "error": "boom"}


def test_the_last_lifecycle_event_of_a_batch_wins_and_progress_adds_up() -> None:
    patch = patches_for(
        [
            _at(1.0, "a", start(2, 5)),
            _at(2.0, "a", epoch(0, 1, val_auc=0.5)),
            _at(3.0, "a", epoch(0, 2, val_auc=0.6)),
            _at(4.0, "a", fold_done(0)),
            _at(5.0, "a", complete()),
        ]
    )["a"]
    assert patch.values["state"] == "completed" and patch.values["ended_at"] == 5.0
    assert patch.increments == {"epochs_done": 2, "folds_done": 1}
    latest = patch.metrics["0"]
    assert list(patch.metrics) == ["0"] and (latest["epoch"], latest["val_auc"]) == (2, 0.6)
    assert {"type", "seq", "run_id", "ts"}.isdisjoint(latest) and latest["fold_id"] == 0


def test_events_that_change_nothing_make_no_patch() -> None:
    assert patches_for([_at(1.0, "a", note(1))]) == {}


def test_the_ended_state_of_an_error_message() -> None:
    assert ended_state("run r1 was cancelled") == "cancelled"
    assert ended_state("run r1 was cancelled (fold 2)") == "cancelled"
    assert ended_state(INTERRUPTED_PREFIX + "its server is gone") == "interrupted"
    assert ended_state("fold 1 failed: x") == "failed"


def test_metrics_merge_per_fold() -> None:
    merged = json.loads(merge_metrics(json.dumps({"0": {"e": 1}, "1": {"e": 1}}), {"1": {"e": 2}}))
    assert merged == {"0": {"e": 1}, "1": {"e": 2}}
    assert json.loads(merge_metrics(None, {"0": {"e": 1}})) == {"0": {"e": 1}}


def test_a_row_becomes_the_snapshot_of_a_run() -> None:
    row = {
        "run_id": "r",
        "state": "running",
        "config": json.dumps({"epochs": 5}),
        "priority": 0,
        "created_at": 1.0,
        "started_at": 2.0,
        "ended_at": None,
        "error": None,
        "run_dir": "d",
        "summary_path": None,
        "folds_total": 2,
        "folds_done": 1,
        "epochs_done": 7,
        "latest_metrics": json.dumps({"10": {"e": 1}, "2": {"e": 2}}),
    }
    snap = snapshot_of_row(row)
    assert snap["progress"] == {"folds_total": 2, "folds_done": 1, "epochs_total": 10, "epochs_done": 7}
    assert list(snap["latest_metrics"]) == ["2", "10"]
    assert snap["config"] == {"epochs": 5} and snap["state"] == "running"
