"""Valid messages of the wire contract as the tests publish them, and what tests read of records.

The hub validates what it releases, so a test publishes whole messages: ``epoch`` fills every
metric of ``epoch_metrics`` (None unless given), ``note`` makes a notification whose ``message``
is its label. ``body`` reads a released record back as a dict, for assertions on its JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from orchestrator.events.record import EventRecord, read_payload, stamped
from orchestrator.messages import EPOCH_METRIC_FIELDS


def note(label: object, kind: str = "test") -> dict[str, Any]:
    """A notification whose ``message`` is ``str(label)``."""
    return {"type": "notification", "level": "info", "kind": kind, "message": str(label)}


def epoch(fold_id: Any, n: int, **metrics: Any) -> dict[str, Any]:
    """A whole ``epoch_metrics``: every metric None unless given."""
    values: dict[str, Any] = dict.fromkeys(EPOCH_METRIC_FIELDS)
    values.update(elapsed_seconds=0.0, **metrics)
    return {"type": "epoch_metrics", "fold_id": fold_id, "epoch": n, **values}


def start(folds: int, epochs: int) -> dict[str, Any]:
    return {"type": "training_start", "use_cv": True, "total_folds": folds, "total_epochs": epochs}


def fold_done(fold_id: int, val_auc: float | None = None) -> dict[str, Any]:
    return {
        "type": "fold_complete",
        "fold_id": fold_id,
        "predictions_path": f"p{fold_id}.csv",
        "calibration_method": "raw",
        "calibration_warning": None,
        "coverage_warning": None,
        "val_auc": val_auc,
    }


def complete() -> dict[str, Any]:
    return {"type": "training_complete", "folds_completed": 1, "summary_path": "s"}


def error(text: str) -> dict[str, Any]:
    return {"type": "training_error", "error": text}


def record(seq: int, run_id: str, message: dict[str, Any] | None = None, ts: float = 1.0) -> EventRecord:
    """A released record of ``message`` (a notification by default), as the hub makes one."""
    model, text = read_payload(message or note(seq))
    return stamped(model, text, run_id, seq, ts)


def body(record: EventRecord) -> dict[str, Any]:
    """A record's text as a dict."""
    value: dict[str, Any] = json.loads(record.text)
    return value


def bodies(records: Iterable[EventRecord]) -> list[dict[str, Any]]:
    return [body(r) for r in records]


def labels(records: Iterable[EventRecord]) -> list[str]:
    """The ``message`` of each notification (``note``'s label)."""
    return [str(body(r)["message"]) for r in records]


def seqs(records: Iterable[EventRecord]) -> list[int]:
    return [r.seq for r in records]
