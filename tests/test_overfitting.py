"""orchestrator.hpo.overfitting against independent references: ffn 1.4's PBO and DSR, the DSR
paper's worked example, a plain loop of CSCV as the issue states it, scipy's moments."""

from __future__ import annotations

import itertools
import math

import ffn
import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest
from scipy import stats

from orchestrator.hpo import overfitting
from orchestrator.hpo.overfitting import (
    cscv,
    cscv_splits,
    deflated_sharpe,
    expected_max_sharpe,
    sharpe_stats,
    sign_strategy,
)

FloatArray = npt.NDArray[np.float64]


def _pbo_loop(values: FloatArray, direction: str) -> tuple[float, FloatArray]:
    """CSCV as the issue states it, one split at a time, with means and scipy's average ranks."""
    n_blocks, n_trials = values.shape
    perf = values if direction == "maximize" else -values
    logits = []
    for in_sample in itertools.combinations(range(n_blocks), n_blocks // 2):
        out_sample = [b for b in range(n_blocks) if b not in in_sample]
        chosen = int(np.argmax(perf[list(in_sample)].mean(axis=0)))
        rank = stats.rankdata(perf[out_sample].mean(axis=0))[chosen]
        w = rank / (n_trials + 1)
        logits.append(math.log(w / (1 - w)))
    array = np.array(logits)
    return float(np.mean(array <= 0)), array


@pytest.mark.parametrize(
    ("seed", "shape", "direction"), [(0, (12, 7), "maximize"), (1, (10, 25), "minimize")]
)
def test_cscv_matches_a_plain_loop(seed: int, shape: tuple[int, int], direction: str) -> None:
    values = np.random.default_rng(seed).normal(size=shape)
    result = cscv(values, direction)  # type: ignore[arg-type]
    pbo, logits = _pbo_loop(values, direction)
    assert result.pbo == pytest.approx(pbo, abs=1e-12)
    np.testing.assert_allclose(result.logits, logits, rtol=1e-12)
    assert result.logits.shape == (math.comb(shape[0], shape[0] // 2),)


def test_cscv_in_chunks_equals_cscv_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    values = np.random.default_rng(4).normal(size=(16, 30))
    at_once = cscv(values, "maximize")
    monkeypatch.setattr(overfitting, "_CHUNK_BYTES", 8 * 8 * 30 * 7)  # 7 splits a chunk: 1839 chunks
    chunked = cscv(values, "maximize")
    assert chunked.pbo == at_once.pbo
    np.testing.assert_array_equal(chunked.logits, at_once.logits)
    np.testing.assert_array_equal(chunked.chosen, at_once.chosen)
    np.testing.assert_array_equal(chunked.oos_performance, at_once.oos_performance)


def test_cscv_ties_average_the_rank_and_pick_the_first_in_sample() -> None:
    values = np.random.default_rng(2).integers(0, 3, size=(8, 6)).astype(np.float64)  # many ties
    result = cscv(values, "maximize")
    pbo, logits = _pbo_loop(values, "maximize")
    assert result.pbo == pytest.approx(pbo, abs=1e-12)
    np.testing.assert_allclose(result.logits, logits, rtol=1e-12)
    # all trials equal: the first is always chosen and sits at the median: logit 0, pbo 1 ('luck')
    equal = cscv(np.tile(np.linspace(0.1, 0.8, 8)[:, None], (1, 5)), "minimize")
    assert equal.pbo == 1.0 and np.all(equal.logits == 0.0) and np.all(equal.chosen == 0)


def test_cscv_of_a_trial_best_on_every_block_is_zero() -> None:
    values = np.random.default_rng(3).normal(size=(12, 9))
    values[:, 4] = values.min(axis=1) - 1.0  # trial 4 has the lowest loss everywhere
    result = cscv(values, "minimize")
    assert result.pbo == 0.0 and np.all(result.chosen == 4)
    np.testing.assert_allclose(result.logits, math.log(9.0))  # rank N: w = N / (N + 1)
    # performance pairs in the metric's units: trial 4's mean block loss in and out of sample
    in_idx, out_idx = cscv_splits(12)
    np.testing.assert_allclose(result.is_performance, values[in_idx, 4].mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(result.oos_performance, values[out_idx, 4].mean(axis=1), rtol=1e-12)


@pytest.mark.parametrize(("seed", "n_blocks", "direction"), [(0, 8, "maximize"), (1, 10, "minimize")])
def test_cscv_matches_ffn_prob_backtest_overfitting(seed: int, n_blocks: int, direction: str) -> None:
    """ffn ranks a metric of each half's rows; with equal blocks the mean of the rows is the mean
    of the block means, so ffn with metric=mean (or -mean) is CSCV on the block-mean matrix."""
    rng = np.random.default_rng(seed)
    rows, n_trials = 12 * n_blocks, 6
    returns = pd.DataFrame(rng.normal(0.0, 1.0, (rows, n_trials)) + rng.normal(0.0, 0.05, n_trials))
    sign = 1.0 if direction == "maximize" else -1.0
    reference = ffn.core.calc_prob_backtest_overfitting(
        returns, n_blocks=n_blocks, metric=lambda s: sign * s.mean(), full_output=True
    )
    block_means = returns.to_numpy().reshape(n_blocks, 12, n_trials).mean(axis=1)
    ours = cscv(block_means, direction)  # type: ignore[arg-type]
    assert ours.pbo == pytest.approx(reference["pbo"], abs=1e-12)
    np.testing.assert_allclose(ours.logits, reference["logits"].to_numpy(), rtol=1e-12)


def test_cscv_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="even and >= 2, got n_blocks=5"):
        cscv(np.zeros((5, 3)), "minimize")
    with pytest.raises(ValueError, match="at least 2 trials, got 1"):
        cscv(np.zeros((4, 1)), "minimize")
    with pytest.raises(ValueError, match="finite"):
        cscv(np.array([[0.0, np.nan], [1.0, 2.0]]), "minimize")
    with pytest.raises(ValueError, match="direction must be"):
        cscv(np.zeros((4, 3)), "lower")  # type: ignore[arg-type]


def test_dsr_reproduces_the_papers_worked_example() -> None:
    """Bailey & Lopez de Prado 2014, numerical example: N = 100 trials, annualised SR variance 1/2,
    best annualised SR 2.5 over 5 years of daily data (T = 1250, 250 a year), skew -3,
    kurtosis 10: SR0 = 0.1132 (daily) and DSR = 0.9004."""
    sr0, dsr = deflated_sharpe(2.5 / math.sqrt(250), 1250, -3.0, 10.0, 100, 0.5 / 250)
    assert sr0 is not None and dsr is not None
    assert round(sr0, 4) == 0.1132
    assert round(dsr, 4) == 0.9004


@pytest.mark.parametrize(("seed", "n_trials"), [(0, 40), (1, 7), (2, 1)])
def test_dsr_matches_ffn_given_ffns_moment_conventions(seed: int, n_trials: int) -> None:
    """ffn takes pandas' bias-corrected skew and kurtosis; the issue takes scipy's population
    moments. Given the same moments the two DSR formulas agree; ours then differs from ffn's
    by the bias correction only, which is small for a long series."""
    rng = np.random.default_rng(seed)
    returns = pd.Series(0.0004 + 0.01 * rng.standard_t(5, 1000))
    trial_srs = rng.normal(0.0, 0.03, n_trials)
    reference = ffn.core.calc_deflated_sharpe_ratio(returns, trial_srs, nperiods=252, annualized_trials=False)
    variance = float(np.var(trial_srs, ddof=1)) if n_trials > 1 else None
    sr = float(returns.mean() / returns.std(ddof=1))
    _, with_pandas_moments = deflated_sharpe(
        sr, 1000, float(returns.skew()), float(returns.kurt()) + 3.0, n_trials, variance
    )
    assert with_pandas_moments == pytest.approx(float(reference), abs=1e-12)
    ours = sharpe_stats(returns.to_numpy())
    _, dsr = deflated_sharpe(ours.sr, ours.t, ours.skew, ours.kurtosis, n_trials, variance)
    assert dsr is not None and abs(dsr - float(reference)) < 1e-3
    sr_std = math.sqrt(variance) if variance is not None else 0.0
    assert expected_max_sharpe(n_trials, variance) == pytest.approx(
        ffn.core.calc_expected_max_sharpe(n_trials, sr_std), abs=1e-15
    )


def test_sharpe_stats_are_scipys_population_moments() -> None:
    r = sign_strategy(
        np.array([0.7, 0.2, 0.5, 0.9, 0.1, 0.6]), np.array([0.01, -0.02, 0.03, 0.0, -0.01, 0.02])
    )
    np.testing.assert_array_equal(r, [0.01, 0.02, 0.0, 0.0, 0.01, 0.02])  # flat at exactly 0.5
    out = sharpe_stats(r)
    assert out.sr == pytest.approx(float(np.mean(r) / np.std(r, ddof=1)), rel=1e-12)
    assert out.skew == pytest.approx(float(stats.skew(r)), rel=1e-12)
    assert out.kurtosis == pytest.approx(float(stats.kurtosis(r, fisher=False)), rel=1e-12)
    assert out.t == 6
    assert sharpe_stats(np.full(10, 0.002)).sr is None  # a constant series has no Sharpe ratio
    assert deflated_sharpe(None, 10, None, None, 5, 0.1) == (expected_max_sharpe(5, 0.1), None)


def test_expected_max_sharpe_special_cases() -> None:
    assert expected_max_sharpe(1, None) == 0.0  # nothing was selected
    assert expected_max_sharpe(2, None) is None
    assert expected_max_sharpe(50, 0.0) == 0.0
    with pytest.raises(ValueError, match="n_trials must be >= 1, got n_trials=0"):
        expected_max_sharpe(0, 0.1)
