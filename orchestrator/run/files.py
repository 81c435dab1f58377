"""Reads a run folder back for the pages: a fold's predictions CSV as diagnostics, and events.jsonl.

The dashboard's diagnostics route and the HTML report writer both go through here, so the two
draw the same numbers. No torch: the API imports this module.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator.messages import sanitize
from workers.diagnostics import fold_diagnostics

__all__ = ["diagnostics_of_fold", "fold_predictions_csv", "read_events"]

_PREDICTIONS = re.compile(r"^predictions_fold_(\d+)_(\d{8}_\d{6})\.csv$")


def fold_predictions_csv(run_dir: str | Path, fold_id: int) -> Path | None:
    """The newest ``predictions/predictions_fold_{fold_id}_<stamp>.csv`` of the run, or None."""
    folder = Path(run_dir) / "predictions"
    if not folder.is_dir():
        return None
    found = []
    for path in folder.iterdir():
        match = _PREDICTIONS.match(path.name)
        if match and int(match.group(1)) == fold_id and path.is_file():
            found.append((match.group(2), path.name, path))
    return max(found)[2] if found else None


def diagnostics_of_fold(
    run_dir: str | Path, fold_id: int, alpha: float, *, n_bins: int = 10
) -> dict[str, Any] | None:
    """``workers.diagnostics.fold_diagnostics`` of the fold's predictions CSV (None if it has none yet)."""
    path = fold_predictions_csv(run_dir, fold_id)
    if path is None:
        return None
    frame = pd.read_csv(path, dtype={"timestamp": str, "segment": str})
    columns = {name: frame[name].to_numpy() for name in frame.columns}
    out = fold_diagnostics(columns, alpha, n_bins=n_bins, pit_bins=n_bins)
    out["fold_id"] = fold_id
    out["predictions_file"] = path.name
    result: dict[str, Any] = sanitize(out)
    return result


def read_events(path: str | Path, types: Collection[str] | None = None) -> list[dict[str, Any]]:
    """The events of an ``events.jsonl`` (of ``types`` if given), in file order.

    A missing file is no events; a line that is not a JSON object (a torn last line) is skipped.
    """
    events: list[dict[str, Any]] = []
    try:
        handle = open(path, encoding="utf-8")
    except FileNotFoundError:
        return events
    with handle:
        for line in handle:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict) and (types is None or event.get("type") in types):
                events.append(event)
    return events
