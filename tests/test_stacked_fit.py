"""fit_pack against workers.train.fit run once per member: the same records, best epochs, forecasts.

The main comparison trains 4 real S&P 500 folds of the default job's architecture (dropout 0.1,
partial last batches, train sizes 2520..3797 rows, so 10..15 batches an epoch) with their own
lr and weight decay, which makes early stopping end them at different epochs. The failure cases
run on a small synthetic series.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch

from orchestrator.config import TrainConfig, config_from_mapping
from orchestrator.data.cache import run_data
from orchestrator.run.cv import plan_folds_for
from tests.synthetic import ar1_ohlcv
from workers.features import FeatureSet, Standardizer, build_features
from workers.fold import train_settings
from workers.packed import PackMember, check_packable, fit_pack
from workers.train import (
    BatchReporter,
    EpochRecord,
    NonFiniteLossError,
    Segments,
    TrainOutcome,
    TrainSettings,
    fit,
)

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread, as a fold's worker runs (two threads of tiny ops on a busy machine crawl)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


Fold = tuple[Segments, TrainSettings]


def _folds(features: FeatureSet, config: TrainConfig) -> list[Fold]:
    folds = []
    for spec in plan_folds_for(config, len(features)):
        train, cal, val = spec.train.as_slice(), spec.calibration.as_slice(), spec.validation.as_slice()
        scaler = Standardizer.fit(features.X[train])
        segments = Segments(
            X_train=scaler.transform(features.X[train]),
            y_train=features.y[train],
            X_cal=scaler.transform(features.X[cal]),
            y_cal=features.y[cal],
            X_val=scaler.transform(features.X[val]),
            y_val=features.y[val],
        )
        folds.append((segments, train_settings(config, spec.fold_id)))
    return folds


@dataclasses.dataclass
class Calls:
    """What one member's callbacks received, in order."""

    epochs: list[EpochRecord] = dataclasses.field(default_factory=list)
    batches: list[tuple[int, int, int, float]] = dataclasses.field(default_factory=list)
    forecasts: list[int] = dataclasses.field(default_factory=list)

    def kwargs(self, should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
        def on_batch(epoch: int, batch: int, total: int, loss: float, rate: float) -> None:
            self.batches.append((epoch, batch, total, loss))

        return {
            "on_epoch": self.epochs.append,
            "elapsed": lambda: 1.5,
            "on_batch": BatchReporter(0.0, on_batch),
            "on_forecasts": lambda epoch, cal, val: self.forecasts.append(epoch),
            "should_stop": should_stop,
        }


def _fit_each(folds: list[Fold]) -> list[tuple[TrainOutcome | Exception, Calls]]:
    out: list[tuple[TrainOutcome | Exception, Calls]] = []
    for segments, settings in folds:
        calls = Calls()
        try:
            out.append((fit(segments, settings, device=CPU, **calls.kwargs()), calls))
        except NonFiniteLossError as error:
            out.append((error, calls))
    return out


def _pack(folds: list[Fold], restack: bool | None = None) -> list[tuple[TrainOutcome | Exception, Calls]]:
    calls = [Calls() for _ in folds]
    members = [PackMember(s, t, **c.kwargs()) for (s, t), c in zip(folds, calls, strict=True)]
    return list(zip(fit_pack(members, device=CPU, restack=restack), calls, strict=True))


def _assert_same(
    fitted: tuple[TrainOutcome | Exception, Calls], packed: tuple[TrainOutcome | Exception, Calls]
) -> None:
    (want, want_calls), (got, got_calls) = fitted, packed
    assert isinstance(want, TrainOutcome) and isinstance(got, TrainOutcome)
    assert (got.best_epoch, got.epochs_run, got.stopped_early) == (
        want.best_epoch,
        want.epochs_run,
        want.stopped_early,
    )
    assert got.history == got_calls.epochs and want.history == want_calls.epochs
    assert len(got.history) == len(want.history)
    for got_record, want_record in zip(got.history, want.history, strict=True):
        assert list(got_record) == list(want_record)
        for key, value in want_record.items():
            if value is None:
                assert got_record[key] is None, key
            else:
                assert got_record[key] == pytest.approx(value, rel=1e-4, abs=1e-4), (key, got_record["epoch"])
    for got_forecast, want_forecast in ((got.cal, want.cal), (got.val, want.val)):
        for field in ("mu", "sigma", "p_up"):
            np.testing.assert_allclose(
                getattr(got_forecast, field), getattr(want_forecast, field), rtol=1e-4, atol=1e-7
            )
    assert got_calls.forecasts == want_calls.forecasts
    assert [b[:3] for b in got_calls.batches] == [b[:3] for b in want_calls.batches]
    np.testing.assert_allclose(
        [b[3] for b in got_calls.batches], [b[3] for b in want_calls.batches], rtol=1e-4
    )


@pytest.fixture(scope="module")
def sp500_folds() -> list[Fold]:
    config = TrainConfig(epochs=6, patience=2, folds=4)
    features = run_data(config.data, config.date_format, config.lookback).features
    folds = _folds(features, config)
    tuned = [(3e-3, 1e-4), (1e-3, 1e-2), (1e-2, 0.0), (2e-3, 1e-3)]
    return [
        (segments, dataclasses.replace(settings, lr=lr, weight_decay=wd))
        for (segments, settings), (lr, wd) in zip(folds, tuned, strict=True)
    ]


@pytest.fixture(scope="module")
def sp500_fitted(sp500_folds: list[Fold]) -> list[tuple[TrainOutcome | Exception, Calls]]:
    return _fit_each(sp500_folds)


def test_fit_pack_equals_fit_per_member_on_real_folds(
    sp500_folds: list[Fold], sp500_fitted: list[tuple[TrainOutcome | Exception, Calls]]
) -> None:
    # the case is the hard one: ragged batch counts, partial batches, stops at different epochs
    sizes = [len(segments.y_train) for segments, _ in sp500_folds]
    assert len({math.ceil(n / 256) for n in sizes}) == len(sizes) and all(n % 256 for n in sizes)
    runs = [outcome.epochs_run for outcome, _ in sp500_fitted if isinstance(outcome, TrainOutcome)]
    assert len(runs) == 4 and len(set(runs)) >= 3 and min(runs) < 6
    packed = _pack(sp500_folds)
    assert len(packed) == len(sp500_fitted)
    for fitted, got in zip(sp500_fitted, packed, strict=True):
        _assert_same(fitted, got)


def test_retired_slots_train_like_restacked_ones(
    sp500_folds: list[Fold], sp500_fitted: list[tuple[TrainOutcome | Exception, Calls]]
) -> None:
    packed = _pack(sp500_folds, restack=False)
    for fitted, got in zip(sp500_fitted, packed, strict=True):
        _assert_same(fitted, got)


@pytest.fixture(scope="module")
def small_folds() -> list[Fold]:
    config = config_from_mapping(
        {
            "folds": 3,
            "epochs": 4,
            "lookback": 10,
            "hidden": 16,
            "batch_size": 64,
            "patience": 2,
            "dropout": 0.1,
        }
    )
    return _folds(build_features(ar1_ohlcv(1500, seed=3, phi=0.3), config.lookback), config)


@pytest.fixture(scope="module")
def small_fitted(small_folds: list[Fold]) -> list[tuple[TrainOutcome | Exception, Calls]]:
    return _fit_each(small_folds)


def test_a_diverging_member_fails_alone(
    small_folds: list[Fold], small_fitted: list[tuple[TrainOutcome | Exception, Calls]]
) -> None:
    folds = list(small_folds)
    folds[1] = (folds[1][0], dataclasses.replace(folds[1][1], lr=1e6))
    fitted, packed = [small_fitted[0], *_fit_each(folds[1:2]), small_fitted[2]], _pack(folds)
    assert isinstance(fitted[1][0], NonFiniteLossError)
    assert isinstance(packed[1][0], NonFiniteLossError)
    assert str(packed[1][0]) == str(fitted[1][0])
    assert packed[1][1].epochs == fitted[1][1].epochs == []
    _assert_same(fitted[0], packed[0])
    _assert_same(fitted[2], packed[2])


def test_a_member_stopped_by_should_stop_leaves_with_fits_outcome(
    small_folds: list[Fold], small_fitted: list[tuple[TrainOutcome | Exception, Calls]]
) -> None:
    def stop_after(epochs: int, calls: Calls) -> Callable[[], bool]:
        return lambda: len(calls.epochs) >= epochs

    fitted = list(small_fitted)
    calls = Calls()
    fitted[0] = (fit(*small_folds[0], device=CPU, **calls.kwargs(stop_after(2, calls))), calls)
    packed_calls = [Calls() for _ in small_folds]
    members = [
        PackMember(s, t, **c.kwargs(stop_after(2, c) if i == 0 else None))
        for i, ((s, t), c) in enumerate(zip(small_folds, packed_calls, strict=True))
    ]
    packed = list(zip(fit_pack(members, device=CPU), packed_calls, strict=True))
    assert isinstance(packed[0][0], TrainOutcome) and packed[0][0].epochs_run == 2
    assert isinstance(packed[1][0], TrainOutcome) and packed[1][0].epochs_run == 4
    for want, got in zip(fitted, packed, strict=True):
        _assert_same(want, got)


def test_a_members_raising_callback_is_its_outcome_and_the_others_go_on(
    small_folds: list[Fold], small_fitted: list[tuple[TrainOutcome | Exception, Calls]]
) -> None:
    fitted = small_fitted
    calls = [Calls() for _ in small_folds]

    def broken(record: EpochRecord) -> None:
        calls[2].epochs.append(record)
        if record["epoch"] == 1:
            raise RuntimeError("publisher is gone")

    members = [PackMember(s, t, **c.kwargs()) for (s, t), c in zip(small_folds, calls, strict=True)]
    members[2] = dataclasses.replace(members[2], on_epoch=broken)
    outcomes = fit_pack(members, device=CPU)
    assert isinstance(outcomes[2], RuntimeError) and str(outcomes[2]) == "publisher is gone"
    assert [r["epoch"] for r in calls[2].epochs] == [0, 1] and calls[2].forecasts == [0]
    for i in (0, 1):
        _assert_same(fitted[i], (outcomes[i], calls[i]))


def test_each_member_keeps_its_own_dropout_loss_weights_epochs_and_patience(small_folds: list[Fold]) -> None:
    folds = [
        (small_folds[0][0], dataclasses.replace(small_folds[0][1], dropout=0.3, lr=3e-3)),
        (
            small_folds[1][0],
            dataclasses.replace(small_folds[1][1], loss_weights=(1.0, 0.5, 2.0), dropout=0.0),
        ),
        (small_folds[2][0], dataclasses.replace(small_folds[2][1], epochs=2, patience=1, alpha=0.2)),
    ]
    fitted, packed = _fit_each(folds), _pack(folds)
    assert [o.epochs_run for o, _ in packed if isinstance(o, TrainOutcome)] == [4, 4, 2]
    for want, got in zip(fitted, packed, strict=True):
        _assert_same(want, got)


def test_a_pack_of_one_is_fit(
    small_folds: list[Fold], small_fitted: list[tuple[TrainOutcome | Exception, Calls]]
) -> None:
    _assert_same(small_fitted[1], _pack(small_folds[1:2])[0])


def test_members_of_other_shapes_are_refused(small_folds: list[Fold]) -> None:
    (segments, settings), other = small_folds[0], small_folds[1]
    members = [
        PackMember(segments, settings, on_epoch=lambda r: None, elapsed=lambda: 0.0),
        PackMember(
            other[0], dataclasses.replace(other[1], hidden=8), on_epoch=lambda r: None, elapsed=lambda: 0.0
        ),
    ]
    with pytest.raises(ValueError, match=r"member 1 has \(11, 8, 2, 64"):
        check_packable(members)
