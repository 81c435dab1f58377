"""``prediction_delta``: which validation predictions changed since a fold's last delta.

Pure bookkeeping over arrays. Rows are split into messages that stay under ``max_bytes`` of
JSON, so a client's frame limit is never hit.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from orchestrator.messages import PredictionDelta, PredictionRow

__all__ = ["DELTA_FIELDS", "PredictionDeltaTracker", "MAX_DELTA_BYTES"]

DELTA_FIELDS = ("mu", "sigma", "p_up_raw", "p_up_cal", "conformal_p", "pit_z")
MAX_DELTA_BYTES = 256 * 1024
# What one message carries besides its rows (type, ids, envelope stamped later by the hub).
_OVERHEAD_BYTES = 512


class PredictionDeltaTracker:
    """Remembers the values last sent per validation row and emits only the changed rows."""

    def __init__(
        self, timestamps: np.ndarray, *, rtol: float = 1e-6, max_bytes: int = MAX_DELTA_BYTES
    ) -> None:
        self.timestamps = [
            str(np.datetime_as_string(t, unit="s")) + "Z" for t in np.asarray(timestamps, dtype="datetime64[s]")
        ]
        self.rtol = rtol
        self.max_bytes = max_bytes
        self._sent: dict[str, np.ndarray] | None = None

    def changed(self, rows: dict[str, np.ndarray], rtol: float) -> np.ndarray:
        if self._sent is None:
            return np.ones(len(self.timestamps), dtype=bool)
        mask = np.zeros(len(self.timestamps), dtype=bool)
        for name in DELTA_FIELDS:
            new, old = np.asarray(rows[name], dtype=np.float64), self._sent[name]
            mask |= ~np.isclose(new, old, rtol=rtol, atol=0.0, equal_nan=True)
        return mask

    def update(
        self, fold_id: int, epoch: int, rows: dict[str, np.ndarray], *, final: bool = False
    ) -> list[PredictionDelta]:
        """Messages for the rows that changed (all the first time; exact comparison if final)."""
        mask = self.changed(rows, 0.0 if final else self.rtol)
        if self._sent is None:
            self._sent = {name: np.asarray(rows[name], dtype=np.float64).copy() for name in DELTA_FIELDS}
        else:
            for name in DELTA_FIELDS:
                self._sent[name][mask] = np.asarray(rows[name], dtype=np.float64)[mask]
        indices = np.flatnonzero(mask)
        if indices.size == 0 and not final:
            return []
        chunks: list[list[PredictionRow]] = [[]]
        size = _OVERHEAD_BYTES
        for i in indices:
            row = PredictionRow(
                timestamp=self.timestamps[i], **{name: float(rows[name][i]) for name in DELTA_FIELDS}
            )
            row_bytes = len(json.dumps(row.model_dump())) + 2
            if chunks[-1] and size + row_bytes > self.max_bytes:
                chunks.append([])
                size = _OVERHEAD_BYTES
            chunks[-1].append(row)
            size += row_bytes
        return [
            PredictionDelta(
                fold_id=fold_id, epoch=epoch, predictions=chunk, chunk=k, chunks=len(chunks), final=final
            )
            for k, chunk in enumerate(chunks)
        ]


def as_rows(predictions: dict[str, Any], segment_mask: np.ndarray) -> dict[str, np.ndarray]:
    return {name: np.asarray(predictions[name])[segment_mask] for name in DELTA_FIELDS}
