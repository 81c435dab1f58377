"""Causal features: no look-ahead, the right shapes and values, a train-only standardizer."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import StandardScaler

from tests.synthetic import ar1_ohlcv, ohlcv_from_log_returns, random_walk_ohlcv
from workers.features import (
    CLIP_Z,
    FEATURE_NAMES,
    FeatureSet,
    Standardizer,
    build_features,
    near_constant,
    scaling_warnings,
)

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
    # Samples run from bar LOOKBACK to bar 398 (bar 399 is only the last label): the cuts below
    # fall at the first sample, inside, and one before the last.
    assert (full.bar_index[0], full.bar_index[-1]) == (LOOKBACK, 398)
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
    col = dict(zip(FEATURE_NAMES, fs.X.T, strict=True))
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


def test_standardizer_gives_constant_columns_scale_one_and_pickles() -> None:
    X = np.column_stack([np.ones(10), np.arange(10.0)]).astype(np.float32)
    scaler = Standardizer.fit(X)
    assert scaler.scale[0] == 1.0 and scaler.constant.tolist() == [True, False]
    out = scaler.transform(X)
    assert np.isfinite(out).all() and (out[:, 0] == 0).all()
    clone = pickle.loads(pickle.dumps(scaler))
    np.testing.assert_array_equal(clone.transform(X), out)
    with pytest.raises(ValueError, match="fitted on 2 features"):
        scaler.transform(np.zeros((3, 5)))


# --- scaling a feature the train segment cannot describe (issue 15, case 1) ---------------------

VOLUME_Z = FEATURE_NAMES.index("volume_z")


def _volume_starts_late(n: int, zero_until: int, seed: int) -> pd.DataFrame:
    """Random-walk bars whose volume is 0 for bars ``0 .. zero_until - 1`` (the case's file)."""
    bars = random_walk_ohlcv(n, seed=seed)
    bars.loc[: zero_until - 1, "volume"] = 0.0
    return bars


def _opens_from_previous_close_until(n: int, until: int, seed: int) -> pd.DataFrame:
    """Random-walk bars whose open is the previous close before bar ``until`` (gap exactly 0)."""
    bars = random_walk_ohlcv(n, seed=seed)
    rows = np.arange(1, until)
    bars.loc[rows, "open"] = bars["close"].to_numpy()[rows - 1]
    bars["high"] = np.maximum(bars["high"], bars["open"])
    bars["low"] = np.minimum(bars["low"], bars["open"])
    return bars


def test_standardizer_statistics_equal_sklearn_standard_scaler() -> None:
    rng = np.random.default_rng(12)
    X_feat = build_features(ar1_ohlcv(700, seed=12), LOOKBACK).X
    n = len(X_feat)
    X = np.column_stack(
        [
            X_feat,
            np.full(n, 0.25),  # constant
            1e3 + rng.normal(0.0, 1e-13, n),  # constant up to rounding: sklearn's rule says constant
            rng.normal(0.0, 1e-4, n),  # small but real spread: kept
        ]
    )
    train, later = X[:400], X[400:]
    ours = Standardizer.fit(train)
    ref = StandardScaler().fit(train)

    np.testing.assert_allclose(ours.mean, ref.mean_, rtol=1e-12, atol=0)
    np.testing.assert_allclose(ours.scale, ref.scale_, rtol=1e-12, atol=0)
    assert ours.constant.tolist() == [False] * len(FEATURE_NAMES) + [True, True, False]
    assert ours.constant.tolist() == (ref.scale_ == 1.0).tolist()
    np.testing.assert_allclose(ours.transform(train), ref.transform(train), rtol=1e-5, atol=1e-5)
    varying = ~ours.constant
    np.testing.assert_allclose(
        ours.transform(later)[:, varying], ref.transform(later)[:, varying], rtol=1e-5, atol=1e-5
    )


def test_near_constant_is_sklearns_rule() -> None:
    mean = np.array([0.0, 1e3, 1e3, 0.0])
    var = np.array([0.0, 1e-26, 1e-12, 1e-30])
    assert near_constant(var, mean, 300).tolist() == [True, True, False, False]


def test_constant_in_training_is_held_at_zero_and_never_divides_by_a_tiny_spread() -> None:
    fs = build_features(_volume_starts_late(700, zero_until=450, seed=13), LOOKBACK)
    train, later = fs.X[:400], fs.X[450:]
    assert np.all(train[:, VOLUME_Z] == 0) and np.abs(later[:, VOLUME_Z]).max() > 1
    scaler = Standardizer.fit(train)
    assert scaler.constant[VOLUME_Z] and scaler.scale[VOLUME_Z] == 1.0
    # Scale 1, not 1e-8: the raw z-scores stay the size of the feature (|volume_z| <= sqrt(L-1)).
    assert np.abs(scaler.z_scores(later)[:, VOLUME_Z]).max() <= np.sqrt(LOOKBACK - 1)
    assert np.all(scaler.transform(later)[:, VOLUME_Z] == 0)


def test_standardized_inputs_are_clipped_to_the_bound() -> None:
    rng = np.random.default_rng(14)
    train = rng.normal(0.0, 1.0, size=(500, 2))
    scaler = Standardizer.fit(train)
    out = scaler.transform(np.array([[1e6, -1e6], [0.5, -0.5]]))
    assert out[0].tolist() == [CLIP_Z, -CLIP_Z]
    np.testing.assert_allclose(out[1], scaler.z_scores(np.array([[0.5, -0.5]]))[0], rtol=1e-6)


def test_warning_names_a_feature_constant_in_training_volume_case() -> None:
    fs = build_features(_volume_starts_late(700, zero_until=450, seed=13), LOOKBACK)
    later = {"calibration": fs.X[400:425], "validation": fs.X[450:]}  # sample i is bar i+20
    (warning,) = scaling_warnings(fs.X[:400], later, fs.feature_names)
    moved = int(np.count_nonzero(fs.X[450:, VOLUME_Z]))
    assert warning.feature == "volume_z" and warning.reason == "constant_in_train"
    assert warning.rows == {"validation": moved} and warning.totals == {"validation": len(fs) - 450}
    assert warning.train_value == 0.0 and "'volume_z' is constant" in warning.message
    assert warning.to_dict()["rows"] == {"validation": moved}


def test_warning_names_another_feature_constant_in_training_gap() -> None:
    # Another member of the kind: a vendor that fills opens from the previous close, then stops.
    fs = build_features(_opens_from_previous_close_until(700, until=450, seed=15), LOOKBACK)
    scaler = Standardizer.fit(fs.X[:400])
    gap = FEATURE_NAMES.index("gap")
    assert scaler.constant[gap] and np.all(scaler.transform(fs.X[450:])[:, gap] == 0)
    (warning,) = scaling_warnings(fs.X[:400], {"validation": fs.X[450:]}, fs.feature_names)
    assert (warning.feature, warning.reason) == ("gap", "constant_in_train")
    assert warning.rows == {"validation": len(fs) - 450}


def test_warning_names_features_far_outside_the_training_range() -> None:
    # Another member: a quiet (pegged) series that starts to move 40x more.
    rng = np.random.default_rng(16)
    returns = np.r_[rng.normal(0.0, 0.0005, 450), rng.normal(0.0, 0.02, 250)]
    fs = build_features(ohlcv_from_log_returns(returns, rng, vol=0.0005), LOOKBACK)
    found = scaling_warnings(fs.X[:400], {"validation": fs.X[450:]}, fs.feature_names)
    by_name = {w.feature: w for w in found}
    assert {"vol_short", "vol_long", "range_1"} <= set(by_name)
    vol_long = by_name["vol_long"]
    assert vol_long.reason == "beyond_clip" and vol_long.max_abs_z is not None
    assert vol_long.max_abs_z > CLIP_Z and vol_long.rows["validation"] > 100
    assert np.abs(Standardizer.fit(fs.X[:400]).transform(fs.X[450:])).max() == CLIP_Z


def test_no_warning_on_ordinary_bars() -> None:
    fs = build_features(ar1_ohlcv(900, seed=17), LOOKBACK)
    later = {"calibration": fs.X[500:600], "validation": fs.X[620:]}
    assert scaling_warnings(fs.X[:480], later, fs.feature_names) == []
