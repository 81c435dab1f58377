"""A run's data and features, built once per process for the same file and settings (HPO trials, server runs).

Every trial of a study, and every run a server starts on the same data, used to load the bars,
validate them, fingerprint them and build the features again: serial work in front of every
run. ``run_data`` keeps the few most recent results, keyed by what determines them: the data
source (for a file, its resolved path, size and modification time, so an edited or appended
file is read again), the timestamp format and the feature lookback. The arrays handed out are
read-only, so no run can change what the next one gets; Ray's executor puts one ``FeatureSet``
into the object store once for as long as it is cached (``WorkerPool.put_features``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from workers.data import data_fingerprint, load_ohlcv
from workers.features import FeatureSet, build_features

__all__ = ["RunData", "run_data", "clear"]

_CAPACITY = 4


@dataclass(frozen=True)
class RunData:
    """The bars of a run's data source, their fingerprint and the model inputs built from them."""

    frame: pd.DataFrame
    fingerprint: str
    features: FeatureSet


_cache: OrderedDict[tuple[object, ...], RunData] = OrderedDict()
_lock = threading.Lock()


def _source_key(source: str) -> tuple[object, ...]:
    path = Path(source)
    if path.is_file():
        stat = path.stat()
        return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    return (source,)  # a bundled data set ('sp500'), or a missing file (load_ohlcv says so)


def _read_only(features: FeatureSet) -> FeatureSet:
    for array in (features.timestamps, features.X, features.y, features.bar_index):
        array.flags.writeable = False
    return features


def run_data(source: str, date_format: str | None, lookback: int) -> RunData:
    """The bars of ``source`` and their features for ``lookback``: built, or the cached ones.

    Raises what ``load_ohlcv`` and ``build_features`` raise (DataValidationError, naming the
    column or row). Thread-safe; two callers that miss at once both build, and one result is kept.
    """
    key = (*_source_key(source), date_format, lookback)
    with _lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    frame = load_ohlcv(source, date_format)
    built = RunData(frame, data_fingerprint(frame), _read_only(build_features(frame, lookback)))
    with _lock:
        _cache[key] = built
        while len(_cache) > _CAPACITY:
            _cache.popitem(last=False)
    return built


def clear() -> None:
    """Forget every cached result (tests; a long-lived process that wants the memory back)."""
    with _lock:
        _cache.clear()
