"""A study's selection diagnostics: the rows, blocks and matrix, the recomputed pbo and dsr, and
the verdicts on simulated walk-forward studies (seeded, small). The statistics themselves are
held to ffn and the papers in test_overfitting.py."""

from __future__ import annotations

import io
import itertools
import json
import math

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest
from scipy import stats

from orchestrator.hpo.overfitting import sharpe_stats, sign_strategy
from orchestrator.hpo.selection import (
    Selection,
    TrialRows,
    block_bounds,
    block_count,
    selection_diagnostics,
    trial_rows,
    trial_rows_from_frame,
)
from orchestrator.hpo.trial_rows import BLOCK_METRICS
from orchestrator.messages import EPOCH_METRIC_FIELDS
from tests.edge_rules import dsr_by_rule, pbo_by_rule
from workers.baselines import diebold_mariano, naive_forecast, naive_rows
from workers.metrics import roc_auc

SCALE = 0.01  # the simulated returns' standard deviation


def test_block_rules() -> None:
    assert block_count(10_000) == 16
    assert block_count(200) == 10 and block_count(239) == 10  # 20 rows a block at least
    assert block_count(79) == 2 and block_count(39) == 0
    assert block_count(200, max_blocks=8, min_block_rows=5) == 8
    with pytest.raises(ValueError, match="max_blocks must be even"):
        block_count(100, max_blocks=15)
    bounds = block_bounds(103, 16)
    sizes = [b - a for a, b in bounds]
    assert (
        bounds[0][0] == 0
        and bounds[-1][1] == 103
        and all(a == b for (_, a), (b, _) in itertools.pairwise(bounds))
    )
    assert sizes == [7] * 7 + [6] * 9  # within one row, the longer ones first


def _study(
    seed: int, n_trials: int = 30, phi: float = 0.0, signal_trial: int | None = None, n_val: int = 1000
) -> tuple[list[TrialRows], int]:
    """A walk-forward study: 4 folds of validation rows after 500 train rows, each row's naive
    forecast from its fold's expanding train segment; every trial but ``signal_trial`` forecasts
    the naive mu plus noise, ``signal_trial`` the AR(1) mean phi * y_{t-1}. Also the best trial
    by the objective (mean over folds of val_nll)."""
    rng = np.random.default_rng(seed)
    n_train, folds = 500, 4
    y = np.zeros(n_train + n_val)
    shocks = rng.normal(0.0, SCALE, y.size)
    for t in range(1, y.size):
        y[t] = phi * y[t - 1] + shocks[t]
    times = np.datetime64("2015-01-01") + np.arange(y.size)
    fold_id = np.repeat(np.arange(folds), n_val // folds)
    naive = {k: naive_forecast(y[: n_train + k * (n_val // folds)]) for k in range(folds)}
    naive_mu, naive_sigma, _ = naive_rows(fold_id, naive)
    y_val, y_prev = y[n_train:], y[n_train - 1 : -1]
    trials, objective = [], []
    for k in range(n_trials):
        mu = phi * y_prev if k == signal_trial else naive_mu + rng.normal(0.0, 0.0005, n_val)
        sigma = np.full(n_val, SCALE)
        p_up = stats.norm.sf(0.0, mu, sigma)
        rows = trial_rows(
            k, times[n_train:], y_val, mu, sigma, p_up, p_up, naive_mu=naive_mu, naive_sigma=naive_sigma
        )
        trials.append(rows)
        nll = -stats.norm.logpdf(y_val, mu, sigma)
        objective.append(np.mean([nll[fold_id == f].mean() for f in range(folds)]))
    return trials, int(np.argmin(objective))


def test_random_walk_study_never_says_skill_and_its_pbo_is_near_one_half() -> None:
    pbos, dm_ps = [], []
    for seed in range(6):
        trials, best = _study(seed)
        report = selection_diagnostics(trials, metric="val_nll", direction="minimize", best_trial=best).report
        assert report["verdict"] == "no evidence of skill", seed
        assert report["dsr"] is not None and report["dsr"] < 0.95, seed
        pbos.append(report["pbo"])
        dm_ps.append(report["best_dm_p"])
    assert 0.35 < float(np.mean(pbos)) < 0.65  # the in-sample choice carries nothing out of sample
    # the best of 30 useless trials can beat the naive forecast 'significantly' on the rows it
    # was chosen on: the DM test alone would say skill, the deflation is what stops it
    assert min(dm_ps) < 0.01


def test_planted_ar1_signal_is_skill_and_the_selection_informative() -> None:
    trials, best = _study(0, n_trials=20, phi=0.3, signal_trial=7)
    assert best == 7
    report = selection_diagnostics(trials, metric="val_nll", direction="minimize", best_trial=best).report
    assert report["best_dm_p"] is not None and report["best_dm_p"] < 0.01
    assert report["dsr"] is not None and report["dsr"] >= 0.95
    assert report["verdict"] == "skill"
    assert report["pbo"] is not None and report["pbo"] < 0.1 and report["selection"] == "informative"


def test_recomputed_pbo_and_dsr_equal_the_report_through_csv_and_json() -> None:
    trials, best = _study(3, n_trials=12)
    selection = selection_diagnostics(trials, metric="val_nll", direction="minimize", best_trial=best)
    report = json.loads(json.dumps(selection.report, allow_nan=False))
    matrix = pd.read_csv(io.StringIO(selection.matrix.to_csv(index=False)))
    assert list(matrix.columns[:3]) == ["block", "first_timestamp", "last_timestamp"]
    assert [int(c) for c in matrix.columns[3:]] == list(range(12))
    assert pbo_by_rule(matrix, "minimize") == pytest.approx(report["pbo"], abs=1e-9)
    assert dsr_by_rule(report["dsr_inputs"]) == pytest.approx(report["dsr"], abs=1e-6)
    inputs = report["dsr_inputs"]
    srs = [sharpe_stats(sign_strategy(t.p_up_cal, t.y)).sr for t in trials]
    assert all(sr is not None for sr in srs)
    assert inputs["n_trials"] == 12 and inputs["t"] == 1000
    assert inputs["sr_variance"] == pytest.approx(
        float(np.var(np.array(srs, dtype=np.float64), ddof=1)), rel=1e-12
    )
    assert inputs["sr"] == srs[best]
    assert len(report["logits"]) == len(report["is_performance"]) == 12870 == math.comb(16, 8)


def test_best_dm_p_is_the_dm_test_of_the_best_trials_own_rows() -> None:
    trials, best = _study(4, n_trials=5, phi=0.2, signal_trial=2)
    report = selection_diagnostics(trials, metric="val_nll", direction="minimize", best_trial=best).report
    t = trials[best]
    assert t.naive_mu is not None and t.naive_sigma is not None
    d = -stats.norm.logpdf(t.y, t.mu, t.sigma) + stats.norm.logpdf(t.y, t.naive_mu, t.naive_sigma)
    assert report["best_dm_p"] == diebold_mariano(d).p_value
    without_naive = [
        trial_rows(r.number, r.timestamp, r.y, r.mu, r.sigma, r.p_up_raw, r.p_up_cal) for r in trials
    ]
    bare = selection_diagnostics(
        without_naive, metric="val_nll", direction="minimize", best_trial=best
    ).report
    assert bare["best_dm_p"] is None and bare["verdict"] == "no evidence of skill"
    assert any(note.startswith("best_dm_p") for note in bare["notes"])


def test_trials_with_other_lookbacks_share_their_common_rows() -> None:
    trials, _ = _study(5, n_trials=3, n_val=400)

    # trial 1 lost its first 30 rows (a longer lookback), trial 2 its last 10 and is given unsorted
    def subset(t: TrialRows, rows: npt.NDArray[np.intp]) -> TrialRows:
        return trial_rows(
            t.number,
            t.timestamp[rows],
            t.y[rows],
            t.mu[rows],
            t.sigma[rows],
            t.p_up_raw[rows],
            t.p_up_cal[rows],
        )

    trials[1] = subset(trials[1], np.arange(30, 400))
    trials[2] = subset(trials[2], np.random.default_rng(0).permutation(390))
    selection = selection_diagnostics(trials, metric="DirAcc", direction="maximize", best_trial=0)
    report, matrix = selection.report, selection.matrix
    assert report["rows"] == 360 and report["blocks"] == 16
    assert matrix["first_timestamp"].iloc[0] == np.datetime_as_string(trials[0].timestamp[30], unit="s")
    assert matrix["last_timestamp"].iloc[-1] == np.datetime_as_string(trials[0].timestamp[389], unit="s")
    first = trials[2]  # sorted again by trial_rows; block 0 is its shared rows 30..52 (23 rows)
    y_up = (first.y[30:53] > 0).astype(float)
    assert matrix["2"].iloc[0] == float(np.mean((first.p_up_raw[30:53] > 0.5) == (y_up > 0.5)))


def test_block_metric_is_the_workers_metric_and_undefined_blocks_leave_a_trial_out() -> None:
    trials, _ = _study(6, n_trials=4, n_val=200)
    # a NaN sigma in block 0 makes trial 3's val_nll undefined there
    broken = trials[3]
    sigma = broken.sigma.copy()
    sigma[:5] = np.nan
    trials[3] = trial_rows(3, broken.timestamp, broken.y, broken.mu, sigma, broken.p_up_raw, broken.p_up_cal)
    report = selection_diagnostics(trials, metric="val_nll", direction="minimize", best_trial=0).report
    assert report["excluded_trials"] == [3] and report["pbo_trials"] == [0, 1, 2]
    selection = selection_diagnostics(trials, metric="val_auc", direction="maximize", best_trial=0)
    t = trials[1]
    y_up = (t.y[20:40] > 0).astype(float)
    assert selection.matrix["1"].iloc[1] == roc_auc(y_up, t.p_up_raw[20:40])
    assert selection.report["blocks"] == 10 and selection.report["excluded_trials"] == []


def test_undefined_pbo_cases_are_null_with_a_note() -> None:
    trials, _ = _study(7, n_trials=3, n_val=200)
    one = selection_diagnostics(trials[:1], metric="val_nll", direction="minimize", best_trial=0).report
    assert one["pbo"] is None and one["selection"] is None and one["sr0"] == 0.0
    assert one["dsr_inputs"]["sr_variance"] is None and one["dsr"] is not None  # N = 1: the PSR against 0
    train_metric = selection_diagnostics(trials, metric="train_loss", direction="minimize", best_trial=0)
    assert train_metric.report["pbo"] is None and train_metric.matrix.shape == (0, 6)
    assert any("train_loss" in note for note in train_metric.report["notes"])
    few = selection_diagnostics(
        trials, metric="val_nll", direction="minimize", best_trial=0, min_block_rows=150
    )
    assert few.report["pbo"] is None and few.report["blocks"] == 0
    for report in (one, train_metric.report, few.report):
        json.dumps(report, allow_nan=False)


def test_every_study_metric_of_the_validation_rows_has_a_block_metric() -> None:
    not_on_validation_rows = {"train_loss", "train_nll", "train_bce", "train_brier", "cal_loss"}
    assert set(BLOCK_METRICS) == set(EPOCH_METRIC_FIELDS) - not_on_validation_rows


def test_trial_rows_validation_and_frames() -> None:
    times = np.array(["2020-01-02T00:00:00", "2020-01-01T00:00:00", "2020-01-03T00:00:00"])
    frame = pd.DataFrame(
        {
            "timestamp": np.r_[times, ["2019-12-31T00:00:00"]],
            "segment": ["validation"] * 3 + ["calibration"],
            "y": [0.02, 0.01, -0.01, 0.5],
            "mu": 0.0,
            "sigma": 0.01,
            "p_up_raw": 0.5,
            "p_up_cal": [0.6, 0.4, 0.5, 0.5],
            "naive_mu": 0.001,
            "naive_sigma": 0.02,
        }
    )
    rows = trial_rows_from_frame(4, frame)
    assert rows.number == 4 and rows.y.tolist() == [0.01, 0.02, -0.01]  # validation rows, sorted
    assert rows.p_up_cal.tolist() == [0.4, 0.6, 0.5] and rows.conformal_lo is None
    assert rows.naive_sigma is not None and rows.naive_sigma.tolist() == [0.02] * 3
    with pytest.raises(ValueError, match="trial 4: timestamp 2020-01-01T00:00:00 appears more than once"):
        trial_rows(
            4, np.r_[times, times[1:2]], np.zeros(4), np.zeros(4), np.ones(4), np.zeros(4), np.zeros(4)
        )
    with pytest.raises(ValueError, match="trial 5: p_up_cal must be finite"):
        trial_rows(5, times, np.zeros(3), np.zeros(3), np.ones(3), np.zeros(3), [0.5, np.nan, 0.5])
    with pytest.raises(ValueError, match="trial 5: mu has shape"):
        trial_rows(5, times, np.zeros(3), np.zeros(2), np.ones(3), np.zeros(3), np.zeros(3))
    other = trial_rows(6, times, [0.02, 0.01, 0.03], np.zeros(3), np.ones(3), np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="trials 4 and 6 have different y at 2020-01-03"):
        selection_diagnostics([rows, other], metric="val_nll", direction="minimize", best_trial=4)
    with pytest.raises(ValueError, match="best_trial=9 is not among the trials"):
        selection_diagnostics([rows], metric="val_nll", direction="minimize", best_trial=9)
    assert isinstance(
        selection_diagnostics([rows], metric="val_nll", direction="minimize", best_trial=4), Selection
    )
