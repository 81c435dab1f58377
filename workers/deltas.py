"""``prediction_delta``: which validation predictions changed since a fold's last delta.

Pure bookkeeping over arrays. Rows are split into messages that stay under ``max_bytes`` of
JSON, so a client's frame limit is never hit.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from orchestrator.messages import PredictionDelta

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
        self._stamps = np.asarray(timestamps, dtype="datetime64[s]")
        self._timestamps: list[str] | None = None  # their ISO strings, made at the first delta
        self.rtol = rtol
        self.max_bytes = max_bytes
        self._sent: dict[str, np.ndarray] | None = None

    @property
    def timestamps(self) -> list[str]:
        """The validation rows' timestamps as the wire has them (ISO 8601, seconds, ``Z``)."""
        if self._timestamps is None:  # one vectorized conversion, only once a delta is sent
            self._timestamps = [f"{text}Z" for text in np.datetime_as_string(self._stamps, unit="s")]
        return self._timestamps

    def forget(self) -> None:
        """Forget what was sent: the next update sends every row again."""
        self._sent = None

    def changed(self, rows: dict[str, np.ndarray], rtol: float) -> np.ndarray:
        if self._sent is None:
            return np.ones(len(self._stamps), dtype=bool)
        mask = np.zeros(len(self._stamps), dtype=bool)
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
        columns = {name: np.asarray(rows[name], dtype=np.float64)[indices].tolist() for name in DELTA_FIELDS}
        every = [
            {"timestamp": self.timestamps[i], **{name: columns[name][k] for name in DELTA_FIELDS}}
            for k, i in enumerate(indices.tolist())
        ]
        chunks = _chunked(every, self.max_bytes)
        # one validation per message (pydantic-core walks the rows), not one model per row
        return [
            PredictionDelta.model_validate(
                {
                    "fold_id": fold_id,
                    "epoch": epoch,
                    "predictions": chunk,
                    "chunk": k,
                    "chunks": len(chunks),
                    "final": final,
                }
            )
            for k, chunk in enumerate(chunks)
        ]


def _chunked(rows: list[dict[str, Any]], max_bytes: int) -> list[list[dict[str, Any]]]:
    """``rows`` in consecutive chunks whose JSON stays under ``max_bytes`` with the envelope."""
    budget = max_bytes - _OVERHEAD_BYTES
    longest = max((len(row["timestamp"]) for row in rows), default=0)
    if len(rows) * (_ROW_FRAME_BYTES + longest + 2 + _MAX_FLOAT_BYTES * len(DELTA_FIELDS)) <= budget:
        return [rows]  # fits even if every float took its longest form: nothing to measure
    if len(json.dumps(rows)) <= budget:  # one C-encoder pass decides
        return [rows]
    chunks: list[list[dict[str, Any]]] = [[]]
    size = 0
    for row in rows:
        row_bytes = _row_json_size(row)
        if chunks[-1] and size + row_bytes > budget:
            chunks.append([])
            size = 0
        chunks[-1].append(row)
        size += row_bytes
    return chunks


# json.dumps of a row with empty strings/zero-length numbers: what every row has besides its values
_ROW_FRAME_BYTES = len(json.dumps({"timestamp": "", **dict.fromkeys(DELTA_FIELDS, 0)})) - len(DELTA_FIELDS)
_NON_FINITE_BYTES = len("-Infinity")
_MAX_FLOAT_BYTES = len(repr(-2.2250738585072014e-308))  # 24: no float's repr is longer


def _row_json_size(row: dict[str, Any]) -> int:
    """Bytes of a row as ``json.dumps`` writes it (floats by ``repr``), plus its separator."""
    size = _ROW_FRAME_BYTES + len(row["timestamp"]) + 2
    for name in DELTA_FIELDS:
        value = row[name]
        size += len(repr(value)) if math.isfinite(value) else _NON_FINITE_BYTES
    return size


def as_rows(predictions: dict[str, Any], segment_mask: np.ndarray) -> dict[str, np.ndarray]:
    return {name: np.asarray(predictions[name])[segment_mask] for name in DELTA_FIELDS}
