"""Causal features: no look-ahead, the right shapes and values, a train-only standardizer."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from tests.synthetic import ar1_ohlcv, random_walk_ohlcv
from workers.features import FEATURE_NAMES, FeatureSet, Standardizer, build_features

LOOKBACK = 20


def _perturb_after(bars: pd.DataFrame, t: int, seed: int) -> pd.DataFrame:
    """Change every bar after ``t`` (prices scaled per bar, so bars stay valid; volume too)."""
    rng = np.random.default_rng(seed)
    out = bars.copy()
    later = out.index > t
    factor = np.exp(rng.normal(0.0, 0.05, size=int(later.sum())))
    for name in ("open", "high", "low", "close"):
        out.loc[later, name] = out.loc[later, name].to_numpy() * factor
    volume_factor = rng.uniform(0.1, 10.0, size=int(later.sum()))
    out.loc[later, "volume"] = out.loc[later, "volume"].to_numpy() * volume_factor
    return out


@pytest.mark.parametrize("t", [LOOKBACK, LOOKBACK + 1, 137, 250, 298])
def test_changing_later_bars_leaves_earlier_features_bit_identical(t: int) -> None:
    bars = random_walk_ohlcv(300, seed=1)
    before = build_features(bars, LOOKBACK)
    after = build_features(_perturb_after(bars, t, seed=t), LOOKBACK)

    upto = before.bar_index <= t
    assert upto.sum() == t - LOOKBACK + 1
    assert before.X[upto].tobytes() == after.X[upto].tobytes()
    known = before.bar_index < t
    assert before.y[known].tobytes() == after.y[known].tobytes()
    # The test can fail: the target at t and the features after t do see the change.
    at_t = before.bar_index == t
    assert not np.array_equal(before.y[at_t], after.y[at_t])
    if t + 1 <= before.bar_index[-1]:
        next_bar = before.bar_index == t + 1
        assert not np.array_equal(before.X[next_bar], after.X[next_bar])


def test_features_of_a_truncated_history_equal_the_full_ones() -> None:
    bars = ar1_ohlcv(400, seed=3)
    full = build_features(bars, LOOKBACK)
    for t in (LOOKBACK, 100, 397):
        prefix = build_features(bars.iloc[: t + 2], LOOKBACK)  # bars 0..t+1: t is the last sample
        assert prefix.bar_index[-1] == t
        np.testing.assert_array_equal(prefix.X, full.X[: len(prefix)])
        np.testing.assert_array_equal(prefix.y, full.y[: len(prefix)])


@pytest.mark.parametrize("lookback", [2, 5, 20, 64])
def test_shapes_types_and_first_sample(lookback: int) -> None:
    bars = random_walk_ohlcv(500, seed=2)
    fs = build_features(bars, lookback)
    n = 500 - 1 - lookback
    assert len(fs) == n
    assert fs.X.shape == (n, len(FEATURE_NAMES)) and fs.X.dtype == np.float32
    assert fs.y.shape == (n,) and fs.y.dtype == np.float64
    assert fs.bar_index.dtype == np.int64 and fs.timestamps.dtype == np.dtype("datetime64[ns]")
    assert fs.feature_names == FEATURE_NAMES
    assert fs.bar_index[0] == lookback and fs.bar_index[-1] == 500 - 2
    np.testing.assert_array_equal(np.diff(fs.bar_index), 1)
    np.testing.assert_array_equal(fs.timestamps, bars["timestamp"].to_numpy()[fs.bar_index])
    assert np.isfinite(fs.X).all() and np.isfinite(fs.y).all()


def test_target_and_simple_features_match_their_definitions() -> None:
    bars = random_walk_ohlcv(200, seed=4)
    fs = build_features(bars, LOOKBACK)
    c, o, h, lo = (bars[k].to_numpy() for k in ("close", "open", "high", "low"))
    t = fs.bar_index
    col = {name: fs.X[:, i].astype(np.float64) for i, name in enumerate(FEATURE_NAMES)}
    np.testing.assert_allclose(fs.y, np.log(c[t + 1] / c[t]), rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(col["ret_1"], np.log(c[t] / c[t - 1]), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(col["ret_lag1"], np.log(c[t - 1] / c[t - 2]), rtol=1e-5, atol=1e-9)
    ret_long = np.log(c[t] / c[t - LOOKBACK])
    np.testing.assert_allclose(col["ret_long"], ret_long, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(col["gap"], np.log(o[t] / c[t - 1]), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(col["range_1"], np.log(h[t] / lo[t]), rtol=1e-5, atol=1e-9)
    r = np.diff(np.log(c), prepend=np.nan)
    i = 50
    window = r[t[i] - LOOKBACK + 1 : t[i] + 1]
    assert col["vol_long"][i] == pytest.approx(window.std(), rel=1e-5)
    assert col["vol_short"][i] == pytest.approx(window[-5:].std(), rel=1e-5)
    assert ((col["close_pos"] >= 0) & (col["close_pos"] <= 1)).all()


def test_flat_bars_and_zero_volume_stay_finite() -> None:
    bars = random_walk_ohlcv(120, seed=5)
    bars.loc[40:70, ["open", "high", "low", "close"]] = 100.0  # h == l and zero returns
    bars["volume"] = 0.0  # index data often has no volume
    fs = build_features(bars, LOOKBACK)
    assert np.isfinite(fs.X).all()
    col = dict(zip(FEATURE_NAMES, fs.X.T))
    flat = (fs.bar_index >= 41) & (fs.bar_index <= 70)
    np.testing.assert_array_equal(col["close_pos"][flat], 0.5)
    np.testing.assert_array_equal(col["volume_z"], 0.0)
    assert (col["vol_short"][(fs.bar_index >= 46) & (fs.bar_index <= 70)] == 0.0).all()


def test_volume_z_is_bounded_by_its_window() -> None:
    bars = random_walk_ohlcv(200, seed=6)
    bars.loc[:100, "volume"] = 1000.0
    bars.loc[101, "volume"] = 1e12  # a jump after a constant window
    fs = build_features(bars, LOOKBACK)
    z = fs.X[:, FEATURE_NAMES.index("volume_z")]
    assert np.abs(z).max() <= np.sqrt(LOOKBACK - 1) + 1e-4
    assert z[fs.bar_index == 101][0] == pytest.approx(np.sqrt(LOOKBACK - 1), rel=1e-4)


def test_too_few_bars_gives_an_empty_set() -> None:
    bars = random_walk_ohlcv(LOOKBACK + 1, seed=8)
    fs = build_features(bars, LOOKBACK)
    assert len(fs) == 0 and fs.X.shape == (0, len(FEATURE_NAMES))
    assert len(build_features(random_walk_ohlcv(LOOKBACK + 2, seed=8), LOOKBACK)) == 1


def test_segment_slices_every_array() -> None:
    fs = build_features(random_walk_ohlcv(100, seed=9), LOOKBACK)
    part = fs.segment(10, 30)
    assert isinstance(part, FeatureSet) and len(part) == 20
    assert part.bar_index[0] == fs.bar_index[10]
    np.testing.assert_array_equal(part.X, fs.X[10:30])


def test_standardizer_uses_train_statistics_only() -> None:
    fs = build_features(ar1_ohlcv(600, seed=10), LOOKBACK)
    train, other = fs.X[:300], fs.X[300:]
    scaler = Standardizer.fit(train)

    z_train = scaler.transform(train)
    assert z_train.dtype == np.float32
    np.testing.assert_allclose(z_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z_train.std(axis=0), 1.0, rtol=1e-4)

    expected = (other.astype(np.float64) - train.astype(np.float64).mean(axis=0)) / train.astype(
        np.float64
    ).std(axis=0)
    np.testing.assert_allclose(scaler.transform(other), expected, rtol=1e-5, atol=1e-5)
    # Fitting on everything would give other statistics: the caller must fit on train only.
    assert not np.allclose(Standardizer.fit(fs.X).mean, scaler.mean)


def test_standardizer_floors_constant_columns_and_pickles() -> None:
    X = np.column_stack([np.ones(10), np.arange(10.0)]).astype(np.float32)
    scaler = Standardizer.fit(X)
    assert scaler.scale[0] == 1e-8
    out = scaler.transform(X)
    assert np.isfinite(out).all() and (out[:, 0] == 0).all()
    clone = pickle.loads(pickle.dumps(scaler))
    np.testing.assert_array_equal(clone.transform(X), out)
    with pytest.raises(ValueError, match="fitted on 2 features"):
        scaler.transform(np.zeros((3, 5)))
