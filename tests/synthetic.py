"""Synthetic OHLCV bars with known properties, for tests (deterministic for a given seed).

* ``random_walk_ohlcv``: i.i.d. Gaussian close-to-close log returns, nothing to learn.
* ``ar1_ohlcv``: log returns follow an AR(1) with coefficient ``phi``, so the sign of the next
  return is partly predictable from the last one (a planted signal a model should find).

Both return the canonical frame of ``workers.data``: ``timestamp, open, high, low, close,
volume`` with valid bars (positive prices, ``high >= max(open, close)``, ``low <= min(open,
close)``, positive volume).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.signal import lfilter

__all__ = ["random_walk_ohlcv", "ar1_ohlcv", "ohlcv_from_log_returns"]


def random_walk_ohlcv(
    n: int,
    seed: int,
    start: str = "2000-01-03",
    freq: str = "B",
    vol: float = 0.01,
) -> pd.DataFrame:
    """``n`` bars whose close-to-close log returns are i.i.d. N(0, vol^2)."""
    rng = np.random.default_rng(seed)
    log_returns = rng.normal(0.0, vol, size=n)
    return ohlcv_from_log_returns(log_returns, rng, start=start, freq=freq, vol=vol)


def ar1_ohlcv(
    n: int,
    seed: int,
    phi: float = 0.3,
    start: str = "2000-01-03",
    freq: str = "B",
    vol: float = 0.01,
) -> pd.DataFrame:
    """``n`` bars with AR(1) log returns ``r_t = phi * r_{t-1} + e_t``, stationary std ``vol``."""
    if not -1.0 < phi < 1.0:
        raise ValueError(f"phi must be in (-1, 1) for a stationary AR(1), got phi={phi}")
    rng = np.random.default_rng(seed)
    innovations = rng.normal(0.0, vol * np.sqrt(1.0 - phi**2), size=n)
    log_returns = lfilter([1.0], [1.0, -phi], innovations)
    return ohlcv_from_log_returns(log_returns, rng, start=start, freq=freq, vol=vol)


def ohlcv_from_log_returns(
    log_returns: np.ndarray,
    rng: np.random.Generator,
    *,
    start: str = "2000-01-03",
    freq: str = "B",
    vol: float = 0.01,
    first_close: float = 100.0,
) -> pd.DataFrame:
    """Valid bars whose closes have exactly the given close-to-close log returns.

    ``log_returns[0]`` is the return into bar 0 from a virtual previous close ``first_close``.
    The open is the previous close times a small gap; high and low extend past the body.
    """
    n = len(log_returns)
    close = first_close * np.exp(np.cumsum(log_returns))
    prev_close = np.concatenate(([first_close], close[:-1]))
    open_ = prev_close * np.exp(rng.normal(0.0, 0.2 * vol, size=n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.5 * vol, size=n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.5 * vol, size=n)))
    volume = np.round(rng.lognormal(mean=13.0, sigma=0.3, size=n))
    return pd.DataFrame(
        {
            "timestamp": pd.date_range(start, periods=n, freq=freq).astype("datetime64[ns]"),
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": volume.astype(np.float64),
        }
    )
