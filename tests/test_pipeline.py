"""The whole run in-process (local executor): events, reports, metrics recomputed from the CSV."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from orchestrator.config import config_from_mapping
from orchestrator.events.publish import InProcessSink
from orchestrator.execution.local import LocalExecutor
from orchestrator.lifecycle import RunState
from orchestrator.run.driver import execute_run, new_run
from tests.synthetic import ar1_ohlcv, random_walk_ohlcv
from tests.wire import validate_wire
from workers.data import load_ohlcv
from workers.features import build_features


def run_local(tmp_path: Path, data: str, **overrides: Any) -> tuple[Any, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    values = {
        "data": data,
        "reports_dir": str(tmp_path / "reports"),
        "executor": "local",
        "min_samples": 500,
        "folds": 2,
        "epochs": 4,
        "lookback": 10,
        **overrides,
    }
    run = new_run(config_from_mapping(values))
    execute_run(run, InProcessSink(listener=events.extend), LocalExecutor())
    return run, events


def write_csv(tmp_path: Path, frame: pd.DataFrame, name: str = "bars.csv") -> str:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return str(path)


@pytest.fixture(scope="module")
def ar1_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[dict[str, Any]], Path]:
    tmp = tmp_path_factory.mktemp("ar1")
    path = write_csv(tmp, ar1_ohlcv(3000, seed=1, phi=0.3))
    run, events = run_local(tmp, path, folds=3, epochs=6)
    return run, events, tmp


def test_event_sequence_is_complete_and_schema_valid(ar1_run: Any) -> None:
    run, events, _ = ar1_run
    assert run.state is RunState.COMPLETED, run.error
    types = [e["type"] for e in events]
    assert types[0] == "dataset_ready" and types[1] == "training_start"
    assert types[-1] == "training_complete"
    assert types.count("epoch_metrics") == 3 * 6
    assert types.count("fold_complete") == 3
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    for event in events:
        validate_wire(event)
        assert event["run_id"] == run.run_id
        json.dumps(event, allow_nan=False)  # no NaN or Infinity anywhere
    for fold in range(3):
        epochs = [e["epoch"] for e in events if e["type"] == "epoch_metrics" and e["fold_id"] == fold]
        assert epochs == list(range(6))
        complete_at = next(
            i for i, e in enumerate(events) if e["type"] == "fold_complete" and e["fold_id"] == fold
        )
        last_epoch_at = max(
            i for i, e in enumerate(events) if e["type"] == "epoch_metrics" and e["fold_id"] == fold
        )
        assert last_epoch_at < complete_at


def test_events_jsonl_matches_stream(ar1_run: Any) -> None:
    run, events, _ = ar1_run
    lines = (Path(run.run_dir) / "events.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == events


def test_summary_metrics_match_predictions_csv(ar1_run: Any) -> None:
    """A reviewer's independent recomputation (DESIGN 6) from the CSV matches to 1e-6 relative."""
    run, events, _ = ar1_run
    summary = json.loads(Path(run.summary_path).read_text())
    assert [f["fold_id"] for f in summary["folds"]] == [0, 1, 2]
    for fold in summary["folds"]:
        frame = pd.read_csv(fold["predictions_path"])
        assert list(frame.columns) == [
            "timestamp",
            "fold_id",
            "segment",
            "y",
            "mu",
            "sigma",
            "p_up_raw",
            "p_up_cal",
            "conformal_lo",
            "conformal_hi",
            "conformal_p",
            "pit_z",
        ]
        val = frame[frame.segment == "validation"]
        cal = frame[frame.segment == "calibration"]
        assert len(cal) == fold["segments"]["calibration"]["stop"] - fold["segments"]["calibration"]["start"]
        y, mu, sigma, p = (val[c].to_numpy() for c in ("y", "mu", "sigma", "p_up_raw"))
        y_up = (y > 0).astype(float)
        m = fold["metrics"]
        nll = np.mean(-stats.norm.logpdf(y, mu, sigma))
        assert m["val_nll"] == pytest.approx(nll, rel=1e-6)
        assert m["val_bce"] == pytest.approx(log_loss(y_up, p), rel=1e-6)
        assert m["val_brier"] == pytest.approx(brier_score_loss(y_up, p), rel=1e-6)
        assert m["val_loss"] == pytest.approx(nll + log_loss(y_up, p) + brier_score_loss(y_up, p), rel=1e-6)
        assert m["val_auc"] == pytest.approx(roc_auc_score(y_up, p), rel=1e-6)
        assert m["DirAcc"] == pytest.approx(np.mean((p > 0.5) == y_up), rel=1e-6)
        bins = np.minimum((p * 10).astype(int), 9)
        ece = sum(
            np.mean(bins == b) * abs(y_up[bins == b].mean() - p[bins == b].mean())
            for b in range(10)
            if np.any(bins == b)
        )
        assert m["ECE"] == pytest.approx(ece, rel=1e-6)
        import statsmodels.api as sm

        ols = sm.OLS(y, sm.add_constant(mu)).fit()
        assert m["MZ_intercept"] == pytest.approx(ols.params[0], rel=1e-6)
        assert m["MZ_slope"] == pytest.approx(ols.params[1], rel=1e-6)
        assert m["MZ_F_p"] == pytest.approx(float(ols.f_test("const = 0, x1 = 1").pvalue), rel=1e-6)
        assert m["PIT_KS_p"] == pytest.approx(stats.kstest((y - mu) / sigma, "norm").pvalue, rel=1e-6)
        cover = np.mean((y >= val.conformal_lo) & (y <= val.conformal_hi))
        assert m["conformal_coverage"] == pytest.approx(cover, rel=1e-6)
        assert m["conformal_width"] == pytest.approx(np.mean(val.conformal_hi - val.conformal_lo), rel=1e-6)
        # conformal q from the calibration rows only: k-th smallest normalized score
        scores = np.sort(np.abs(cal.y - cal.mu) / cal.sigma)
        k = int(np.ceil((len(scores) + 1) * 0.9))
        assert np.allclose(val.conformal_hi - val.mu, scores[k - 1] * val.sigma, rtol=1e-9)
        assert m["ECE_cal"] == pytest.approx(
            sum(
                np.mean(b2 == b) * abs(y_up[b2 == b].mean() - val.p_up_cal.to_numpy()[b2 == b].mean())
                for b2 in [np.minimum((val.p_up_cal.to_numpy() * 10).astype(int), 9)]
                for b in range(10)
                if np.any(b2 == b)
            ),
            rel=1e-6,
        )
        assert np.allclose(frame.pit_z, (frame.y - frame.mu) / frame.sigma, rtol=1e-9)


def test_planted_signal_is_learned(ar1_run: Any) -> None:
    run, _, _ = ar1_run
    summary = json.loads(Path(run.summary_path).read_text())
    assert summary["aggregate"]["val_auc"]["mean"] > 0.56


def test_every_fold_and_the_run_are_scored_against_the_naive_forecast(ar1_run: Any) -> None:
    """DESIGN 12: each fold's naive forecast (its train segment's mean, std, up-share), its scores
    and the model's skill on the CSV's validation rows, recomputed with numpy, scipy, statsmodels."""
    run, events, _ = ar1_run
    summary = json.loads(Path(run.summary_path).read_text())
    features = build_features(load_ohlcv(run.config.data), run.config.lookback)
    completes = {e["fold_id"]: e for e in events if e["type"] == "fold_complete"}
    diffs, truths = [], []
    for fold in summary["folds"]:
        train, valid = fold["segments"]["train"], fold["segments"]["validation"]
        y_train = features.y[train["start"] : train["stop"]]
        val = pd.read_csv(fold["predictions_path"]).query("segment == 'validation'")
        y = val["y"].to_numpy()
        assert np.array_equal(y, features.y[valid["start"] : valid["stop"]])  # the same rows
        m, s, share = y_train.mean(), y_train.std(ddof=1), np.mean(y_train > 0)
        assert fold["naive"] == pytest.approx({"mu": m, "sigma": s, "p_up": share, "n_train": len(y_train)})
        up = (y > 0).astype(float)
        naive_nll = -stats.norm.logpdf(y, m, s)
        assert fold["baseline"]["val_nll"] == pytest.approx(naive_nll.mean(), rel=1e-9)
        assert fold["baseline"]["val_brier"] == pytest.approx(np.mean((share - up) ** 2), rel=1e-9)
        assert fold["baseline"]["DirAcc"] == pytest.approx(np.mean((share > 0.5) == up), rel=1e-12)
        d = -stats.norm.logpdf(y, val["mu"], val["sigma"]) - naive_nll
        p = val["p_up_cal"].to_numpy()
        skill = fold["skill"]
        assert skill["nll_diff"] == pytest.approx(d.mean(), rel=1e-9)
        assert skill["brier_skill"] == pytest.approx(1 - np.mean((p - up) ** 2) / np.mean((share - up) ** 2))
        assert skill["dm_p"] == pytest.approx(_one_sided_dm(d), rel=1e-9)
        assert (completes[fold["fold_id"]]["nll_diff"], completes[fold["fold_id"]]["dm_p"]) == (
            skill["nll_diff"],
            skill["dm_p"],
        )
        diffs.append(d)
        truths.append(val["timestamp"].to_numpy())
    path = np.concatenate(diffs)
    assert list(np.concatenate(truths)) == sorted(np.concatenate(truths))  # folds tile the time line
    whole = summary["aggregate"]["skill"]
    assert whole["nll_diff"] == pytest.approx(path.mean(), rel=1e-9)
    assert whole["dm_p"] == pytest.approx(_one_sided_dm(path), rel=1e-9)
    assert whole["nll_diff"] < 0 and whole["dm_p"] < 0.01  # the planted AR(1) beats doing nothing


def _one_sided_dm(d: np.ndarray) -> float:
    import statsmodels.api as sm

    lags = int(4 * (len(d) / 100) ** (2 / 9))
    fit = sm.OLS(d, np.ones_like(d)).fit(cov_type="HAC", cov_kwds={"maxlags": lags})
    return float(stats.norm.cdf(fit.tvalues[0]))


def test_random_walk_has_nothing_to_learn(tmp_path: Path) -> None:
    path = write_csv(tmp_path, random_walk_ohlcv(3000, seed=2))
    run, _ = run_local(tmp_path, path, folds=3, epochs=5)
    assert run.state is RunState.COMPLETED, run.error
    summary = json.loads(Path(run.summary_path).read_text())
    assert abs(summary["aggregate"]["val_auc"]["mean"] - 0.5) < 0.04


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    path = write_csv(tmp_path, ar1_ohlcv(1500, seed=3))
    outputs = []
    for i in range(2):
        run, _ = run_local(tmp_path / str(i), path, epochs=2)
        summary = json.loads(Path(run.summary_path).read_text())
        outputs.append(
            [pd.read_csv(f["predictions_path"]).drop(columns="timestamp") for f in summary["folds"]]
        )
    for a, b in zip(*outputs, strict=True):
        pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_too_few_samples_is_a_training_error(tmp_path: Path) -> None:
    path = write_csv(tmp_path, random_walk_ohlcv(400, seed=4))
    run, events = run_local(tmp_path, path, min_samples=2048)
    assert run.state is RunState.FAILED
    assert [e["type"] for e in events] == ["dataset_ready", "training_error"]
    assert "2048" in events[-1]["error"] and str(events[0]["size"]) in events[-1]["error"]


def test_bad_data_is_a_readable_training_error(tmp_path: Path) -> None:
    frame = random_walk_ohlcv(800, seed=5).drop(columns="volume")
    run, events = run_local(tmp_path, write_csv(tmp_path, frame))
    assert run.state is RunState.FAILED
    assert events[-1]["type"] == "training_error"
    assert "volume" in events[-1]["error"] and "Traceback" not in events[-1]["error"]
    assert not (Path(run.run_dir) / "summary.json").exists()


def test_no_cv_gives_one_fold(tmp_path: Path) -> None:
    path = write_csv(tmp_path, ar1_ohlcv(1200, seed=6))
    run, events = run_local(tmp_path, path, use_cv=False, folds=1, epochs=2)
    start = next(e for e in events if e["type"] == "training_start")
    assert start["use_cv"] is False and start["total_folds"] == 1
    assert [e["type"] for e in events].count("fold_complete") == 1
