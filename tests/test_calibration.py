"""workers.calibration: each method fixes a known miscalibration; selection is cross-fitted."""

from __future__ import annotations

import pickle

import numpy as np
import numpy.typing as npt
import pytest
from scipy.special import expit, logit

from workers.calibration import (
    METHODS,
    Calibrator,
    calibration_warning,
    fit_calibrator,
    fit_temperature,
    select_calibration,
)
from workers.metrics import binary_cross_entropy, expected_calibration_error

FloatArray = npt.NDArray[np.float64]


def _overconfident(seed: int, n: int, power: float = 3.0) -> tuple[FloatArray, FloatArray, FloatArray]:
    """True probability q; the model reports sigmoid(power * logit(q)); labels ~ Bernoulli(q)."""
    rng = np.random.default_rng(seed)
    q = expit(rng.normal(0.0, 1.0, n))
    p = expit(power * logit(q))
    y_up = (rng.uniform(size=n) < q).astype(np.float64)
    return q, p, y_up


def test_methods_order_is_simplest_first() -> None:
    assert METHODS == ("raw", "temperature", "isotonic", "temp_isotonic")


def test_temperature_recovers_the_distortion() -> None:
    _, p, y_up = _overconfident(0, 20_000, power=3.0)
    assert fit_temperature(p, y_up) == pytest.approx(3.0, rel=0.08)
    _, p_under, y_under = _overconfident(1, 20_000, power=0.5)
    assert fit_temperature(p_under, y_under) == pytest.approx(0.5, rel=0.08)


def test_temperature_calibrator_applies_sigmoid_of_scaled_logit() -> None:
    calibrator = Calibrator("temperature", temperature=2.0)
    p = np.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(calibrator.predict(p), expit(logit(p) / 2.0), rtol=1e-12)


@pytest.mark.parametrize("method", ["temperature", "isotonic", "temp_isotonic"])
def test_each_method_reduces_held_out_ece_and_bce(method: str) -> None:
    _, p_fit, y_fit = _overconfident(2, 5000)
    _, p_new, y_new = _overconfident(3, 5000)
    calibrator = fit_calibrator(method, p_fit, y_fit)
    assert calibrator.method == method
    calibrated = calibrator.predict(p_new)
    assert calibrated.min() >= 0.0 and calibrated.max() <= 1.0
    ece_raw = expected_calibration_error(y_new, p_new)
    ece_cal = expected_calibration_error(y_new, calibrated)
    assert ece_raw > 0.05
    assert ece_cal < 0.5 * ece_raw
    assert binary_cross_entropy(y_new, calibrated) < binary_cross_entropy(y_new, p_new)


def test_raw_is_identity_and_fields_follow_method() -> None:
    p = np.array([0.0, 0.2, 1.0])
    y = np.array([0.0, 1.0, 1.0])
    raw = fit_calibrator("raw", p, y)
    np.testing.assert_array_equal(raw.predict(p), p)
    assert raw.temperature is None and raw.isotonic is None
    assert fit_calibrator("isotonic", p, y).temperature is None
    both = Calibrator.fit("temp_isotonic", p, y)
    assert both.temperature is not None and both.isotonic is not None


def test_isotonic_clips_out_of_range_inputs() -> None:
    p = np.array([0.2, 0.4, 0.6, 0.8])
    calibrator = fit_calibrator("isotonic", p, np.array([0.0, 0.0, 1.0, 1.0]))
    out = calibrator.predict(np.array([0.0, 1.0, 0.5]))
    np.testing.assert_allclose(out, [0.0, 1.0, 0.5])


def test_unknown_method_names_the_value() -> None:
    with pytest.raises(ValueError, match="'platt'"):
        fit_calibrator("platt", np.array([0.5]), np.array([1.0]))


def test_calibrator_pickles() -> None:
    _, p, y_up = _overconfident(4, 1000)
    assert set(METHODS) == {"raw", "temperature", "isotonic", "temp_isotonic"}
    for method in METHODS:
        calibrator = fit_calibrator(method, p, y_up)
        restored = pickle.loads(pickle.dumps(calibrator))
        assert restored.method == method
        np.testing.assert_array_equal(restored.predict(p), calibrator.predict(p))


def test_selection_picks_non_raw_for_miscalibrated_input() -> None:
    _, p, y_up = _overconfident(5, 3000)
    selection = select_calibration(p, y_up, n_splits=5)
    assert selection.method != "raw"
    assert set(selection.cv_scores) == set(METHODS)
    assert selection.cv_scores[selection.method] == min(selection.cv_scores.values())
    assert selection.cv_scores["raw"] > selection.cv_scores[selection.method] + 0.01
    assert selection.calibrator.method == selection.method
    assert selection.note is None


def test_selection_keeps_raw_or_an_equal_score_for_calibrated_input() -> None:
    rng = np.random.default_rng(6)
    n = 3000
    p = expit(rng.normal(0.0, 1.0, n))
    y_up = (rng.uniform(size=n) < p).astype(np.float64)
    selection = select_calibration(p, y_up)
    scores = selection.cv_scores
    # a calibrated model gains nothing real from calibration: raw is the best or within noise
    assert scores["raw"] <= min(scores.values()) + 2e-3
    if selection.method != "raw":
        assert scores[selection.method] < scores["raw"]


def test_selection_scores_are_out_of_block() -> None:
    # labels independent of p: anything fit in-sample looks better than it is
    rng = np.random.default_rng(1)
    n, n_splits = 100, 5
    p = rng.uniform(0.05, 0.95, n)
    y_up = (rng.uniform(size=n) < 0.5).astype(np.float64)
    selection = select_calibration(p, y_up, n_splits=n_splits)

    in_sample_iso = binary_cross_entropy(y_up, fit_calibrator("isotonic", p, y_up).predict(p))
    assert selection.cv_scores["isotonic"] > in_sample_iso + 0.1

    # the score is exactly the BCE of predictions from fits on the other blocks
    out_of_block = np.empty(n)
    for block in np.array_split(np.arange(n), n_splits):
        rest = np.setdiff1d(np.arange(n), block)
        out_of_block[block] = fit_calibrator("isotonic", p[rest], y_up[rest]).predict(p[block])
    assert selection.cv_scores["isotonic"] == pytest.approx(
        binary_cross_entropy(y_up, out_of_block), rel=1e-12
    )
    assert selection.cv_scores["raw"] == pytest.approx(binary_cross_entropy(y_up, p), rel=1e-12)


def test_selection_ties_go_to_the_simpler_method() -> None:
    # p identical everywhere and labels balanced per block: every method predicts ~0.5
    p = np.full(40, 0.5)
    y_up = np.tile([0.0, 1.0], 20)
    selection = select_calibration(p, y_up, n_splits=4)
    assert selection.method == "raw"
    scores = selection.cv_scores
    assert scores["temperature"] == pytest.approx(scores["raw"], abs=1e-12)


def test_selection_falls_back_to_raw_when_too_few_samples_or_one_class() -> None:
    nine_labels = np.tile([0.0, 1.0], 5)[:9]
    too_few = select_calibration(np.linspace(0.1, 0.9, 9), nine_labels, n_splits=5)
    assert too_few.method == "raw"
    assert too_few.note is not None and "9" in too_few.note and "10" in too_few.note
    assert set(too_few.cv_scores) == {"raw"}

    one_class = select_calibration(np.linspace(0.1, 0.9, 50), np.ones(50))
    assert one_class.method == "raw"
    assert one_class.note is not None and "one class" in one_class.note


def test_selection_scores_one_class_fit_folds_as_raw() -> None:
    # positives only in the first block: the fold holding them out fits on negatives only
    n = 50
    p = np.linspace(0.1, 0.9, n)
    y_up = np.zeros(n)
    y_up[:3] = 1.0
    selection = select_calibration(p, y_up, n_splits=5)
    assert selection.note is not None and "1 of 5" in selection.note
    assert all(np.isfinite(v) for v in selection.cv_scores.values())


def test_calibration_warning_texts() -> None:
    assert calibration_warning(500, 200, 0.02, 0.05) is None
    assert calibration_warning(500, 200, None, 0.05) is None
    few = calibration_warning(120, 200, 0.02, 0.05)
    assert few is not None and "120" in few and "200" in few
    bad_ece = calibration_warning(500, 200, 0.0812, 0.05)
    assert bad_ece is not None and "0.0812" in bad_ece and "0.05" in bad_ece
    both = calibration_warning(120, 200, 0.0812, 0.05)
    assert both == f"{few}; {bad_ece}"


@pytest.mark.parametrize("seed", range(6))
def test_isotonic_map_equals_sklearn_isotonic_regression(seed: int) -> None:
    from sklearn.isotonic import IsotonicRegression

    from workers.calibration import IsotonicMap

    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 900))
    p = rng.uniform(size=n)
    if seed % 2:  # ties, as a calibrated p or a tempered one often has
        p = np.round(p, 2)
    if seed == 4:  # extremes and a constant run
        p[: n // 4] = 0.0
        p[-3:] = 1.0
    y_up = (rng.uniform(size=n) < p).astype(np.float64)
    reference = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0, increasing=True)
    reference.fit(p, y_up)
    ours = IsotonicMap.fit(p, y_up)
    grid = np.concatenate([np.linspace(-0.5, 1.5, 4001), p, rng.uniform(size=500)])
    np.testing.assert_allclose(ours.predict(grid), reference.predict(grid), rtol=0, atol=1e-12)


def test_isotonic_map_of_one_distinct_input_is_constant() -> None:
    from workers.calibration import IsotonicMap

    iso = IsotonicMap.fit(np.full(6, 0.3), np.array([1.0, 0, 0, 1, 1, 1]))
    np.testing.assert_allclose(iso.predict(np.array([0.0, 0.3, 0.9])), 4 / 6)


@pytest.mark.parametrize("seed", range(5))
def test_temperature_is_the_minimum_a_generic_optimizer_finds(seed: int) -> None:
    from scipy.optimize import minimize_scalar

    rng = np.random.default_rng(seed)
    power = [0.3, 0.8, 1.0, 2.5, 6.0][seed]
    _, p, y_up = _overconfident(seed + 10, int(rng.integers(50, 3000)), power=power)
    z = logit(np.clip(p, 1e-12, 1 - 1e-12))

    def loss(log_t: float) -> float:
        zt = z * np.exp(-log_t)
        return float(np.mean(np.logaddexp(0.0, zt) - y_up * zt))

    reference = minimize_scalar(loss, bounds=(-5.0, 5.0), method="bounded", options={"xatol": 1e-10})
    ours = fit_temperature(p, y_up)
    assert ours == pytest.approx(np.exp(reference.x), rel=1e-6)
    assert loss(np.log(ours)) <= reference.fun + 1e-12


def test_newton_landing_on_an_exactly_zero_slope_keeps_that_temperature() -> None:
    # These inputs make Newton's fifth step land where the slope is exactly 0.0; the fit used
    # to move to the middle of its bracket then (T = 0.0133 where the minimum is T = 0.674).
    from scipy.optimize import minimize_scalar

    rng = np.random.default_rng(41)
    n = int(rng.integers(50, 1500))
    q = expit(rng.normal(0.0, 1.0, n))
    p = expit(0.8 * logit(q))
    y_up = (rng.uniform(size=n) < q).astype(np.float64)
    z = logit(np.clip(p, 1e-12, 1 - 1e-12))

    def loss(log_t: float) -> float:
        zt = z * np.exp(-log_t)
        return float(np.mean(np.logaddexp(0.0, zt) - y_up * zt))

    reference = minimize_scalar(loss, bounds=(-5.0, 5.0), method="bounded", options={"xatol": 1e-10})
    assert fit_temperature(p, y_up) == pytest.approx(np.exp(reference.x), rel=1e-6)


def test_temperature_at_the_bounds_and_for_uninformative_p() -> None:
    p = np.array([0.2, 0.3, 0.7, 0.8])
    assert fit_temperature(p, np.array([0.0, 0.0, 1.0, 1.0])) == pytest.approx(np.exp(-5.0))  # separable
    assert fit_temperature(np.full(4, 0.5), np.array([0.0, 1.0, 1.0, 0.0])) == 1.0
