"""What released events change in a stored run's row, and the row as a snapshot (pure)."""

from __future__ import annotations

import json

from orchestrator.store.runs import (
    INTERRUPTED_PREFIX,
    ended_state,
    merge_metrics,
    patches_for,
    snapshot_of_row,
)


def test_lifecycle_events_set_the_state_and_times() -> None:
    patches = patches_for(
        [
            {"type": "training_start", "run_id": "a", "seq": 1, "ts": 10.0, "total_folds": 3},
            {"type": "training_error", "run_id": "b", "seq": 2, "ts": 11.0, "error": "boom"},
        ]
    )
    assert patches["a"].values == {"state": "running", "started_at": 10.0, "folds_total": 3}
    assert patches["b"].values == {"state": "failed", "ended_at": 11.0, "error": "boom"}


def test_the_last_lifecycle_event_of_a_batch_wins_and_progress_adds_up() -> None:
    patch = patches_for(
        [
            {"type": "training_start", "run_id": "a", "ts": 1.0, "total_folds": 2},
            {"type": "epoch_metrics", "run_id": "a", "ts": 2.0, "seq": 2, "fold_id": 0, "epoch": 1, "x": 1},
            {"type": "epoch_metrics", "run_id": "a", "ts": 3.0, "seq": 3, "fold_id": 0, "epoch": 2, "x": 2},
            {"type": "fold_complete", "run_id": "a", "ts": 4.0, "fold_id": 0},
            {"type": "training_complete", "run_id": "a", "ts": 5.0, "summary_path": "s"},
        ]
    )["a"]
    assert patch.values["state"] == "completed" and patch.values["ended_at"] == 5.0
    assert patch.increments == {"epochs_done": 2, "folds_done": 1}
    assert patch.metrics == {"0": {"fold_id": 0, "epoch": 2, "x": 2}}


def test_events_that_change_nothing_make_no_patch() -> None:
    assert patches_for([{"type": "notification", "run_id": "a"}, {"type": "x"}]) == {}


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
