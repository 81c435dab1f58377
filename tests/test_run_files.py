"""orchestrator.run.files: a fold's newest predictions CSV as diagnostics, and events.jsonl read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from orchestrator.run.files import diagnostics_of_fold, fold_predictions_csv, read_events
from orchestrator.run.reports import write_predictions_csv


def fake_predictions(
    n_cal: int = 60, n_val: int = 140, seed: int = 0, fold_id: int = 0
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = n_cal + n_val
    y = rng.normal(scale=0.01, size=n)
    mu = rng.normal(scale=0.002, size=n)
    sigma = np.full(n, 0.01)
    p = rng.uniform(0.2, 0.8, size=n)
    return {
        "timestamp": np.datetime64("2020-01-01") + np.arange(n).astype("timedelta64[D]"),
        "fold_id": np.full(n, fold_id),
        "segment": np.array(["calibration"] * n_cal + ["validation"] * n_val),
        "y": y,
        "mu": mu,
        "sigma": sigma,
        "p_up_raw": p,
        "p_up_cal": np.clip(p * 0.9 + 0.05, 0, 1),
        "conformal_lo": mu - 0.0165,
        "conformal_hi": mu + 0.0165,
        "conformal_p": rng.uniform(size=n),
        "pit_z": (y - mu) / sigma,
    }


def test_the_newest_csv_of_the_fold_is_read(tmp_path: Path) -> None:
    assert fold_predictions_csv(tmp_path, 0) is None
    folder = tmp_path / "predictions"
    folder.mkdir()
    for name in (
        "predictions_fold_0_20260101_000000.csv",
        "predictions_fold_0_20260102_000000.csv",
        "predictions_fold_10_20260103_000000.csv",
        "notes.csv",
    ):
        (folder / name).write_text("x\n")
    assert fold_predictions_csv(tmp_path, 0) == folder / "predictions_fold_0_20260102_000000.csv"
    assert fold_predictions_csv(tmp_path, 10) == folder / "predictions_fold_10_20260103_000000.csv"
    assert fold_predictions_csv(tmp_path, 1) is None


def test_diagnostics_of_a_written_predictions_csv(tmp_path: Path) -> None:
    assert diagnostics_of_fold(tmp_path, 0, alpha=0.1) is None
    write_predictions_csv(tmp_path, 0, fake_predictions())
    out = diagnostics_of_fold(tmp_path, 0, alpha=0.2, n_bins=5)
    assert out is not None
    assert out["fold_id"] == 0 and out["rows"] == 140
    assert out["predictions_file"].startswith("predictions_fold_0_")
    assert out["reliability"]["n_bins"] == 5 and len(out["pit"]["counts"]) == 5
    assert out["coverage"]["target"] == pytest.approx(0.8)
    assert out["coverage"]["timestamps"][0] == "2020-03-01T00:00:00"  # the first validation row
    json.dumps(out, allow_nan=False)  # JSON-ready: no NaN


def test_read_events_filters_types_and_skips_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    assert read_events(path) == []
    lines = [
        {"type": "training_start", "seq": 1},
        {"type": "epoch_metrics", "seq": 2, "fold_id": 0},
        {"type": "batch_progress", "seq": 3},
    ]
    path.write_text("\n".join(json.dumps(e) for e in lines) + '\n[1, 2]\n{"type": "epoch_me')
    assert [e["seq"] for e in read_events(path)] == [1, 2, 3]
    assert [e["seq"] for e in read_events(path, {"epoch_metrics"})] == [2]
