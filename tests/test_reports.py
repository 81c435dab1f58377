"""Report writers: the predictions CSV reads back exactly, as pandas' own writer's would."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from orchestrator.run.reports import PREDICTION_COLUMNS, predictions_csv_text, write_predictions_csv


def _predictions(n: int = 500, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {
        "timestamp": pd.date_range("2020-01-01", periods=n, freq="h").to_numpy(),
        "fold_id": np.full(n, 3, dtype=np.int64),
        "segment": np.where(np.arange(n) < n // 3, "calibration", "validation"),
    }
    for name in PREDICTION_COLUMNS[3:]:
        out[name] = rng.normal(size=n) * 10.0 ** rng.integers(-9, 4, size=n)
    out["mu"][7] = np.nan  # an undefined value is an empty field
    return out


def test_the_csv_reads_back_exactly_and_as_pandas_writes_it(tmp_path: Path) -> None:
    path = write_predictions_csv(tmp_path, 3, _predictions())
    assert path.name.startswith("predictions_fold_3_") and path.parent.name == "predictions"
    ours = pd.read_csv(path)
    frame = pd.DataFrame(_predictions())
    frame["timestamp"] = frame["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S")
    reference = pd.read_csv(io.StringIO(frame.to_csv(index=False)))  # pandas' own writer
    assert list(ours.columns) == list(PREDICTION_COLUMNS)
    pd.testing.assert_frame_equal(ours, reference, check_exact=True)
    for name in PREDICTION_COLUMNS[3:]:  # bit for bit what the fold computed
        assert np.array_equal(ours[name].to_numpy(), frame[name].to_numpy(), equal_nan=True)


def test_quotes_only_where_needed() -> None:
    plain = predictions_csv_text(pd.DataFrame({"a": ["x", "2020-01-01T00:00:00"], "b": [1.5, np.nan]}))
    assert plain.splitlines() == ["a,b", "x,1.5", "2020-01-01T00:00:00,"]
    quoted = predictions_csv_text(pd.DataFrame({"a": ["x", "y,z"], "b": [1.5, np.nan]}))
    assert pd.read_csv(io.StringIO(quoted))["a"].tolist() == ["x", "y,z"]


def test_timestamps_are_written_as_pandas_strftime_writes_them(tmp_path: Path) -> None:
    """numpy's formatter on datetime64 (sub-second, before 1970) and pandas' on other input agree
    with ``strftime("%Y-%m-%dT%H:%M:%S")``."""
    rng = np.random.default_rng(4)
    stamps = np.datetime64("1950-01-01", "ns") + rng.integers(0, 2**61, 300).astype("timedelta64[ns]")
    want = pd.Series(pd.to_datetime(stamps)).dt.strftime("%Y-%m-%dT%H:%M:%S").tolist()
    assert len(want) == 300 and min(want) < "1970" < max(want)  # both sides of the epoch
    for given in (stamps, stamps.astype(str)):
        predictions = {**_predictions(300), "timestamp": given}
        ours = pd.read_csv(write_predictions_csv(tmp_path, 1, predictions), dtype={"timestamp": str})
        assert ours["timestamp"].tolist() == want
