"""What a batch of released events changes in the runs table, and a stored run row as the API's snapshot (pure).

A run's row follows its own events: ``training_start`` makes it running, ``training_complete``
completed (with its summary), ``training_error`` failed, cancelled (a cancel's message) or
interrupted (the message the store writes for a run whose writer is gone); ``fold_complete`` and
``epoch_metrics`` advance its progress. The snapshot has the keys of ``lifecycle.Run.snapshot``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.events.record import EventRecord
from orchestrator.lifecycle import (
    FOLLOWED_TYPES,
    INTERRUPTED_PREFIX,
    Run,
    RunState,
    ended_state,
    latest_metrics_of,
)
from orchestrator.messages import (
    EpochMetrics,
    FoldComplete,
    TrainingComplete,
    TrainingError,
    TrainingStart,
)

__all__ = [
    "INTERRUPTED_PREFIX",
    "RunPatch",
    "patches_for",
    "merge_metrics",
    "snapshot_of_row",
    "store_row",
    "ended_state",
]


@dataclass
class RunPatch:
    """The changes of one run's row: values to set, counters to add, latest metrics per fold."""

    values: dict[str, Any] = field(default_factory=dict)
    increments: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, column: str, n: int = 1) -> None:
        self.increments[column] = self.increments.get(column, 0) + n


def patches_for(records: Iterable[EventRecord]) -> dict[str, RunPatch]:
    """The row changes a batch of released records makes, per run, in seq order (only the types
    that change a row are parsed)."""
    patches: dict[str, RunPatch] = {}
    for record in records:
        if record.type not in FOLLOWED_TYPES:  # what a run's mirror follows changes its row
            continue
        patch = patches.setdefault(record.run_id, RunPatch())
        message, ts = record.message, record.ts
        if isinstance(message, TrainingStart):
            patch.values.update(state=RunState.RUNNING.value, started_at=ts, folds_total=message.total_folds)
        elif isinstance(message, TrainingComplete):
            patch.values.update(
                state=RunState.COMPLETED.value, ended_at=ts, summary_path=message.summary_path
            )
        elif isinstance(message, TrainingError):
            patch.values.update(state=ended_state(message.error).value, ended_at=ts, error=message.error)
        elif isinstance(message, FoldComplete):
            patch.add("folds_done")
        elif isinstance(message, EpochMetrics):
            patch.add("epochs_done")
            patch.metrics[str(message.fold_id)] = latest_metrics_of(message)
    return {run_id: p for run_id, p in patches.items() if p.values or p.increments or p.metrics}


def merge_metrics(stored: str | None, latest: Mapping[str, dict[str, Any]]) -> str:
    """The row's latest-metrics JSON with ``latest`` folds replacing the stored ones."""
    merged: dict[str, Any] = json.loads(stored) if stored else {}
    merged.update(latest)
    return json.dumps(merged, allow_nan=False)


def store_row(run: Run) -> dict[str, Any]:
    """The run as a new row of the runs table (``EventHub.record_run``)."""
    return {
        "run_id": run.run_id,
        "state": run.state.value,
        "config": run.config.model_dump_json(),
        "priority": run.priority,
        "created_at": run.created_at,
        "run_dir": run.run_dir,
    }


def snapshot_of_row(row: Mapping[Any, Any]) -> dict[str, Any]:
    """A stored run as ``GET /runs`` shows it (the keys of ``Run.snapshot``, plus times and priority)."""
    config = json.loads(row["config"]) if row["config"] else {}
    metrics = json.loads(row["latest_metrics"]) if row.get("latest_metrics") else {}
    epochs = config.get("epochs", 0) if isinstance(config, dict) else 0
    return {
        "run_id": row["run_id"],
        "state": row["state"],
        "created_at": row["created_at"],
        "started_at": row["started_at"],
        "ended_at": row["ended_at"],
        "error": row["error"],
        "run_dir": row["run_dir"],
        "summary_path": row["summary_path"],
        "priority": row["priority"],
        "queue_position": None,
        "progress": {
            "folds_total": row["folds_total"],
            "folds_done": row["folds_done"],
            "epochs_total": row["folds_total"] * epochs,
            "epochs_done": row["epochs_done"],
        },
        "latest_metrics": {k: metrics[k] for k in sorted(metrics, key=_fold_order)},
        "config": config,
    }


def _fold_order(key: str) -> tuple[int, str]:
    return (int(key), "") if key.lstrip("-").isdigit() else (1 << 30, key)
