"""Issue 15, cases 1-3, through the whole run (local executor): what a user sees for each input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from orchestrator.config import config_from_mapping
from orchestrator.console.main import build_parser, main
from orchestrator.console.run_flags import config_from_args
from orchestrator.events.publish import InProcessSink
from orchestrator.execution.local import LocalExecutor
from orchestrator.lifecycle import RunState
from orchestrator.run.driver import execute_run, new_run
from tests.made_events import bodies
from tests.synthetic import random_walk_ohlcv
from tests.wire import validate_wire
from workers.data import load_ohlcv
from workers.features import build_features

BARS = 2200  # the files: 2200 business-day bars of a Gaussian random walk from 2015-01-02


def _run(tmp_path: Path, data: Path, **overrides: Any) -> tuple[Any, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    values = {
        "data": str(data),
        "reports_dir": str(tmp_path / "reports"),
        "executor": "local",
        "folds": 2,
        "epochs": 3,
        **overrides,
    }
    run = new_run(config_from_mapping(values))
    execute_run(run, InProcessSink(listener=lambda records: events.extend(bodies(records))), LocalExecutor())
    return run, events


def _walk(seed: int) -> pd.DataFrame:
    return random_walk_ohlcv(BARS, seed=seed, start="2015-01-02")


def _volume_starts_late(path: Path) -> str:
    bars = _walk(seed=31)
    bars.loc[:1499, "volume"] = 0.0  # as in volume_starts_late.csv
    bars.to_csv(path, index=False)
    return "volume_z"


def _opens_filled_early(path: Path) -> str:
    # Another member of the kind: opens equal the previous close for 1500 bars (gap exactly 0).
    bars = _walk(seed=32)
    rows = np.arange(1, 1500)
    bars.loc[rows, "open"] = bars["close"].to_numpy()[rows - 1]
    bars["high"] = np.maximum(bars["high"], bars["open"])
    bars["low"] = np.minimum(bars["low"], bars["open"])
    bars.to_csv(path, index=False)
    return "gap"


# --- case 1: a feature constant in training -----------------------------------------------------


@pytest.mark.parametrize("make", [_volume_starts_late, _opens_filled_early])
def test_feature_constant_in_training_warns_and_forecasts_stay_on_the_return_scale(
    tmp_path: Path, make: Any
) -> None:
    feature = make(tmp_path / "bars.csv")
    run, events = _run(tmp_path, tmp_path / "bars.csv")
    assert run.state is RunState.COMPLETED, run.error
    for event in events:
        validate_wire(event)

    types = [e["type"] for e in events]
    warned = [e for e in events if e["type"] == "notification" and e["kind"] == "data_warning"]
    assert sorted(e["fold_id"] for e in warned) == [0, 1]  # both train segments end before bar 1500
    for event in warned:
        assert event["level"] == "warning" and repr(feature) in event["message"]
        assert event["message"].startswith(f"fold {event['fold_id']}: ")
        assert types.index("training_start") < events.index(event) < types.index("fold_complete")

    summary = json.loads(Path(run.summary_path).read_text())
    features = build_features(load_ohlcv(str(tmp_path / "bars.csv")), 20)
    for fold in summary["folds"]:
        (entry,) = fold["data_warnings"]
        assert entry["feature"] == feature and entry["reason"] == "constant_in_train"
        assert entry["rows"]["validation"] > 0
        train = fold["segments"]["train"]
        train_std = features.y[train["start"] : train["stop"]].std()
        rows = pd.read_csv(fold["predictions_path"])
        validation = rows[rows["segment"] == "validation"]
        # Before the fix volume_z met a scale of 1e-8: |mu| up to 59,503, sigma up to 282,721.
        assert validation["mu"].abs().max() < 10 * train_std
        assert validation["sigma"].max() < 10 * train_std
        assert fold["metrics"]["conformal_width"] < 10 * train_std


# --- case 2: one format per time column ---------------------------------------------------------


def _write_stamped(path: Path, stamps: list[str]) -> None:
    bars = random_walk_ohlcv(len(stamps), seed=33)
    bars.assign(timestamp=stamps).rename(columns={"timestamp": "Date"}).to_csv(path, index=False)


def test_ambiguous_dates_end_the_run_with_the_fix_and_date_format_applies(tmp_path: Path) -> None:
    # One day of 20-second bars stamped '01/02/2015 HH:MM:SS': 1 February or 2 January, and in
    # order either way.
    times = pd.date_range("2015-02-01 06:00", periods=2100, freq="20s")
    path = tmp_path / "intraday.csv"
    _write_stamped(path, list(times.strftime("%d/%m/%Y %H:%M:%S")))

    run, events = _run(tmp_path / "a", path)
    assert run.state is RunState.FAILED and [e["type"] for e in events] == ["training_error"]
    assert "ambiguous" in run.error and "--date-format" in run.error

    run, events = _run(tmp_path / "b", path, date_format="%d/%m/%Y %H:%M:%S", min_samples=10**6)
    assert events[0]["type"] == "dataset_ready" and events[0]["size"] == len(times) - 21
    assert "usable samples" in run.error  # loaded day-first, then refused for its size only


def test_date_format_flag_sets_the_config_field() -> None:
    args = build_parser().parse_args(["train", "--date-format", "%d/%m/%Y"])
    assert config_from_args(args).date_format == "%d/%m/%Y"
    assert config_from_args(build_parser().parse_args(["train"])).date_format is None


# --- case 3: a config the data cannot support ---------------------------------------------------


def test_alpha_the_calibration_cannot_support_is_refused_before_training(tmp_path: Path) -> None:
    path = tmp_path / "base.csv"
    _walk(seed=34).to_csv(path, index=False)
    run, events = _run(tmp_path, path, alpha=0.002)
    assert run.state is RunState.FAILED
    assert [e["type"] for e in events] == ["dataset_ready", "training_error"]  # no fold trained
    error = events[-1]["error"]
    assert "alpha=0.002" in error and "499" in error and "n_cal=190" in error
    assert not (Path(run.run_dir) / "summary.json").exists()


def test_train_command_exits_1_for_a_refused_batch_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Another member: batch size against the train segment (1077 samples in fold 0).
    path = tmp_path / "base.csv"
    _walk(seed=35).to_csv(path, index=False)
    code = main(
        [
            "train",
            "--executor",
            "local",
            "--data",
            str(path),
            "--folds",
            "2",
            "--quiet",
            "--reports-dir",
            str(tmp_path / "reports"),
            "--set",
            "batch_size=5000",
        ]
    )
    assert code == 1
    error = capsys.readouterr().err
    assert "batch_size=5000 is larger than fold 0's train segment of 1077" in error
