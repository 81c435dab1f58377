"""Calibration of p_up on the calibration segment (DESIGN section 6).

Methods, simplest first (ties in the selection go to the simpler one):

- ``raw``: the model's p_up as is.
- ``temperature``: one temperature T > 0 on the logits, p = sigmoid(logit(p) / T), T fit by
  minimizing mean BCE. T > 1 softens an overconfident model.
- ``isotonic``: monotone non-parametric map, clipped to [0, 1]: sklearn's ``IsotonicRegression``
  (``out_of_bounds="clip"``) computed directly (``IsotonicMap``; tests hold it equal to sklearn's
  within 1e-12), because sklearn's input checks were most of the cost of the ~20 fits that a
  cross-fitted selection makes.
- ``temp_isotonic``: temperature, then isotonic on the tempered p.

``select_calibration`` picks the method by cross-fitting over contiguous blocks of the
time-ordered calibration segment, so a method is never scored on the samples it was fit on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy.optimize import isotonic_regression
from scipy.special import expit, logit

from workers.metrics import binary_cross_entropy

__all__ = [
    "METHODS",
    "CalibrationSelection",
    "Calibrator",
    "IsotonicMap",
    "calibration_warning",
    "fit_calibrator",
    "fit_temperature",
    "select_calibration",
]

FloatArray = npt.NDArray[np.float64]

METHODS: tuple[str, ...] = ("raw", "temperature", "isotonic", "temp_isotonic")

# p is clipped to [eps, 1-eps] before taking logits, the same eps as binary_cross_entropy,
# so p of exactly 0 or 1 has a finite logit that a temperature can soften.
_P_EPS = 1e-12
# T in [e^-5, e^5] ~ [0.0067, 148]: wide enough for any sane model, and keeps the fit finite
# when the labels are separable.
_LOG_T_BOUNDS = (-5.0, 5.0)
# cross-fitted BCE closer than this to the best counts as a tie, won by the simpler method
_TIE_TOL = 1e-12


def _checked(p: npt.ArrayLike, y_up: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    p_ = np.asarray(p, dtype=np.float64)
    y_ = np.asarray(y_up, dtype=np.float64)
    if p_.ndim != 1 or p_.shape != y_.shape:
        raise ValueError(f"p and y_up must be 1-D of the same length, got {p_.shape} and {y_.shape}")
    if p_.shape[0] == 0:
        raise ValueError("calibration needs at least one sample, got empty arrays")
    if not np.all((p_ >= 0.0) & (p_ <= 1.0)):
        raise ValueError("p must lie in [0, 1]")
    if not np.all((y_ == 0.0) | (y_ == 1.0)):
        raise ValueError("y_up must be 0 or 1")
    return p_, y_


def _logits(p: FloatArray) -> FloatArray:
    z: FloatArray = logit(np.clip(p, _P_EPS, 1.0 - _P_EPS))
    return z


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {METHODS}, got method={method!r}")


@dataclass(frozen=True)
class IsotonicMap:
    """A fitted increasing isotonic map: linear between the fitted points, constant beyond.

    The same map as ``sklearn.isotonic.IsotonicRegression(out_of_bounds="clip", y_min=0,
    y_max=1)``: samples with equal x are averaged (weighted by their count), the pool-adjacent-
    violators solution (``scipy.optimize.isotonic_regression``) is clipped to [0, 1], and inputs
    outside the fitted range take the value at its end.
    """

    x: FloatArray  # increasing, unique
    y: FloatArray  # non-decreasing, in [0, 1]

    @classmethod
    def fit(cls, p: FloatArray, y_up: FloatArray) -> IsotonicMap:
        x, inverse, counts = np.unique(p, return_inverse=True, return_counts=True)
        means = np.bincount(inverse, weights=y_up, minlength=x.size) / counts
        fitted = np.clip(isotonic_regression(means, weights=counts.astype(np.float64)).x, 0.0, 1.0)
        return cls(x=x, y=np.asarray(fitted, dtype=np.float64))

    def predict(self, p: FloatArray) -> FloatArray:
        if self.x.size == 1:
            return np.full(np.shape(p), self.y[0])
        out: FloatArray = np.interp(np.clip(p, self.x[0], self.x[-1]), self.x, self.y)
        return out


@dataclass(frozen=True)
class Calibrator:
    """A fitted calibration map; plain data (picklable), so it can travel across Ray."""

    method: str
    temperature: float | None = None
    isotonic: IsotonicMap | None = field(default=None, repr=False, compare=False)

    @classmethod
    def fit(cls, method: str, p: npt.ArrayLike, y_up: npt.ArrayLike) -> Calibrator:
        """Same as ``fit_calibrator``."""
        return fit_calibrator(method, p, y_up)

    def predict(self, p: npt.ArrayLike) -> FloatArray:
        """Calibrated probabilities in [0, 1]."""
        q = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
        if self.temperature is not None:
            q = expit(_logits(q) / self.temperature)
        if self.isotonic is not None:
            q = self.isotonic.predict(q)
        out: FloatArray = np.clip(q, 0.0, 1.0)
        return out


def fit_temperature(p: npt.ArrayLike, y_up: npt.ArrayLike) -> float:
    """Temperature T minimizing mean BCE of sigmoid(logit(p) / T), T in [e^-5, e^5].

    With s = 1/T the loss mean(softplus(s*z) - y*s*z) over the logits z is convex in s, so its
    minimum is where the derivative mean((sigmoid(s*z) - y) * z) crosses zero: Newton steps on
    that derivative, kept inside a bracket that shrinks with every step (bisection when a step
    would leave it), until a step moves s by less than 1e-13 of itself (a handful of steps). At a bound when the
    derivative does not change sign inside (separable labels); T = 1 when every p is 0.5.
    """
    p_, y_ = _checked(p, y_up)
    z = _logits(p_)
    if not np.any(z):
        return 1.0  # every logit 0: T changes nothing

    def slope(scale: float) -> tuple[float, float]:
        q = expit(scale * z)
        return float(np.mean((q - y_) * z)), float(np.mean(q * (1.0 - q) * z * z))

    lo, hi = math.exp(-_LOG_T_BOUNDS[1]), math.exp(-_LOG_T_BOUNDS[0])
    if slope(lo)[0] >= 0.0:
        return 1.0 / lo
    if slope(hi)[0] <= 0.0:
        return 1.0 / hi
    scale = 1.0 if lo < 1.0 < hi else (lo + hi) / 2
    for _ in range(100):
        gradient, curvature = slope(scale)
        if gradient == 0.0:  # the minimum itself (Newton lands on it exactly now and then)
            break
        if gradient > 0.0:
            hi = scale
        else:
            lo = scale
        step = scale - gradient / curvature if curvature > 0.0 else math.nan
        previous, scale = scale, step if lo < step < hi else (lo + hi) / 2
        if abs(scale - previous) <= 1e-13 * scale:
            break
    return 1.0 / scale


def _fit_isotonic(p: FloatArray, y_up: FloatArray) -> IsotonicMap:
    return IsotonicMap.fit(p, y_up)


def fit_calibrator(method: str, p: npt.ArrayLike, y_up: npt.ArrayLike) -> Calibrator:
    """Fit ``method`` (one of ``METHODS``) on uncalibrated ``p`` and labels ``y_up``."""
    _check_method(method)
    p_, y_ = _checked(p, y_up)
    if method == "raw":
        return Calibrator("raw")
    if method == "isotonic":
        return Calibrator("isotonic", isotonic=_fit_isotonic(p_, y_))
    temperature = fit_temperature(p_, y_)
    if method == "temperature":
        return Calibrator("temperature", temperature=temperature)
    tempered = expit(_logits(p_) / temperature)
    return Calibrator("temp_isotonic", temperature=temperature, isotonic=_fit_isotonic(tempered, y_))


@dataclass(frozen=True)
class CalibrationSelection:
    """The chosen method, its calibrator fit on all calibration samples, and the evidence.

    ``cv_scores`` maps each method to its cross-fitted BCE over the whole calibration segment
    (only ``raw`` when cross-fitting was impossible: raw is never fit, so its score is honest).
    ``note`` says why the selection fell back, or None.
    """

    method: str
    calibrator: Calibrator
    cv_scores: dict[str, float]
    note: str | None = None


def select_calibration(p: npt.ArrayLike, y_up: npt.ArrayLike, n_splits: int = 5) -> CalibrationSelection:
    """Choose the method with the lowest cross-fitted BCE on the calibration segment.

    The segment (time order kept) is cut into ``n_splits`` contiguous blocks; each block's
    predictions come from calibrators fit on the other blocks, and each method's score is the
    BCE of those out-of-block predictions. Ties within 1e-12 go to the earlier method in
    ``METHODS``. The winner is then refit on all samples.

    Fallbacks: fewer than 2*n_splits samples, or one class in the whole segment, keeps ``raw``
    (nothing can be fit or scored honestly). A fold whose fit blocks hold one class predicts
    raw for every method (a fit on one class would be degenerate); ``note`` counts such folds.
    """
    if n_splits < 2:
        raise ValueError(f"n_splits must be >= 2, got n_splits={n_splits}")
    p_, y_ = _checked(p, y_up)
    n = p_.shape[0]
    raw_only = {"raw": binary_cross_entropy(y_, p_)}
    if n < 2 * n_splits:
        too_few = f"only {n} calibration samples, fewer than 2*n_splits={2 * n_splits}; kept raw"
        return CalibrationSelection("raw", Calibrator("raw"), raw_only, too_few)
    if y_.min() == y_.max():
        single = f"calibration labels hold one class only (y_up={int(y_[0])}); kept raw"
        return CalibrationSelection("raw", Calibrator("raw"), raw_only, single)

    out_of_block = {method: np.empty(n) for method in METHODS}
    degenerate_folds = 0
    for held_out in np.array_split(np.arange(n), n_splits):
        fit_mask = np.ones(n, dtype=bool)
        fit_mask[held_out] = False
        p_fit, y_fit = p_[fit_mask], y_[fit_mask]
        one_class = bool(y_fit.min() == y_fit.max())
        degenerate_folds += one_class
        for method in METHODS:
            calibrator = fit_calibrator("raw" if one_class else method, p_fit, y_fit)
            out_of_block[method][held_out] = calibrator.predict(p_[held_out])

    cv_scores = {method: binary_cross_entropy(y_, out_of_block[method]) for method in METHODS}
    best = min(cv_scores.values())
    chosen = next(m for m in METHODS if cv_scores[m] <= best + _TIE_TOL)
    note: str | None = (
        f"{degenerate_folds} of {n_splits} cross-fitting folds had one class in their fit "
        "blocks and were scored as raw"
        if degenerate_folds
        else None
    )
    return CalibrationSelection(chosen, fit_calibrator(chosen, p_, y_), cv_scores, note)


def calibration_warning(
    n_cal: int,
    min_calibration_samples: int,
    val_ece: float | None,
    ece_threshold: float,
) -> str | None:
    """Why the calibrated p_up is doubtful, or None: too few calibration samples and/or a
    validation ECE (after calibration) above the threshold; reasons joined with '; '."""
    reasons = []
    if n_cal < min_calibration_samples:
        reasons.append(
            f"only {n_cal} calibration samples, fewer than min_calibration_samples={min_calibration_samples}"
        )
    if val_ece is not None and val_ece > ece_threshold:
        reasons.append(
            f"validation ECE after calibration is {val_ece:.4f}, above ece_warning_threshold={ece_threshold}"
        )
    return "; ".join(reasons) if reasons else None
