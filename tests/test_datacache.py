"""Run data built once per process: the same file and settings give the same read-only features."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from orchestrator.data import cache as datacache
from tests.synthetic import random_walk_ohlcv


@pytest.fixture(autouse=True)
def empty_cache() -> None:
    datacache.clear()


def test_the_same_file_and_settings_are_built_once(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    random_walk_ohlcv(400, seed=1).to_csv(path, index=False)
    first = datacache.run_data(str(path), None, 10)
    assert datacache.run_data(str(path), None, 10) is first
    assert datacache.run_data(str(path), None, 12) is not first  # another lookback
    assert len(first.frame) == 400 and len(first.fingerprint) == 64


def test_the_features_are_read_only(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    random_walk_ohlcv(300, seed=2).to_csv(path, index=False)
    features = datacache.run_data(str(path), None, 10).features
    with pytest.raises(ValueError, match="read-only"):
        features.X[0, 0] = np.nan


def test_an_appended_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    bars = random_walk_ohlcv(300, seed=3)
    bars.iloc[:250].to_csv(path, index=False)
    first = datacache.run_data(str(path), None, 10)
    bars.iloc[250:].to_csv(path, mode="a", header=False, index=False)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    second = datacache.run_data(str(path), None, 10)
    assert second is not first and len(second.frame) == 300
    assert second.fingerprint != first.fingerprint
