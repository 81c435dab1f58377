"""Packed training through the in-process executor: the folds of a run, and of runs that share an
architecture, trained as one stacked model give what training them one by one gives (``pack: 1``);
a model that diverges fails its own run, a cancelled run leaves the stack, the others go on."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel

from orchestrator.config import TrainConfig, config_from_mapping
from orchestrator.errors import FoldFailedError, RunCancelledError
from orchestrator.execution.base import FoldJob
from orchestrator.execution.local import LocalExecutor
from orchestrator.messages import EpochMetrics
from orchestrator.run.cv import plan_folds_for
from tests.synthetic import ar1_ohlcv
from workers.features import FeatureSet, build_features
from workers.fold import FoldResult

TOLERANCE = 1e-4


class Recorder:
    """A sink and its publishers: every event by run, and an optional hook per event."""

    def __init__(self, on_event: Callable[[str, BaseModel], None] | None = None) -> None:
        self.events: dict[str, list[BaseModel]] = {}
        self.on_event = on_event
        self.lock = threading.Lock()

    def publisher(self, run_id: str, producer: str, batched: bool = False) -> Any:
        recorder = self

        class _Publisher:
            def publish(self, event: BaseModel) -> None:
                with recorder.lock:
                    recorder.events.setdefault(run_id, []).append(event)
                if recorder.on_event is not None:
                    recorder.on_event(run_id, event)

            def flush(self, timeout: float | None = None) -> None:
                pass

            def wants(self, kind: str) -> bool:
                return False

        return _Publisher()

    def register_run(self, run_id: str, run_dir: str | None) -> None:
        pass

    def epochs(self, run_id: str) -> list[EpochMetrics]:
        return [e for e in self.events.get(run_id, []) if isinstance(e, EpochMetrics)]


@pytest.fixture(scope="module")
def features() -> FeatureSet:
    return build_features(ar1_ohlcv(1600, seed=5, phi=0.3), 10)


def config(**overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "executor": "local",
        "folds": 4,  # expanding windows: four train sizes, so ragged batch counts
        "epochs": 12,
        "lr": 1e-2,
        "patience": 2,  # early stopping at different epochs (10, 7, 7, 6 of 12)
        "lookback": 10,
        "hidden": 16,
        "batch_size": 100,  # partial last batches
        "dropout": 0.2,
        "min_samples": 500,
        "prediction_deltas": False,
        "batch_progress_interval_s": 0.0,
        **overrides,
    }
    return config_from_mapping(values)


def job(run_id: str, cfg: TrainConfig, features: FeatureSet, sink: Recorder) -> FoldJob:
    return FoldJob(
        run_id=run_id,
        features=features,
        specs=plan_folds_for(cfg, len(features)),
        config=cfg,
        training_started_at=time.time(),
        sink=sink,  # type: ignore[arg-type]
        cancel_event=threading.Event(),
    )


def train(jobs: list[FoldJob]) -> tuple[dict[str, list[FoldResult]], dict[str, Exception]]:
    results: dict[str, list[FoldResult]] = {}
    errors = LocalExecutor().run_jobs(jobs, lambda r: results.setdefault(r.run_id, []).append(r))
    return results, errors


def assert_same_folds(packed: list[FoldResult], alone: list[FoldResult]) -> None:
    assert len(packed) == len(alone) > 0
    for a, b in zip(
        sorted(packed, key=lambda r: r.fold_id), sorted(alone, key=lambda r: r.fold_id), strict=True
    ):
        assert (a.fold_id, a.best_epoch, a.epochs_run, a.stopped_early) == (
            b.fold_id,
            b.best_epoch,
            b.epochs_run,
            b.stopped_early,
        )
        assert a.calibration_method == b.calibration_method
        keys = [k for k, v in b.metrics.items() if v is not None]
        assert len(keys) > 20
        for key in keys:
            assert a.metrics[key] == pytest.approx(b.metrics[key], rel=TOLERANCE, abs=TOLERANCE), key
        np.testing.assert_allclose(a.predictions["mu"], b.predictions["mu"], rtol=TOLERANCE, atol=1e-7)


def assert_same_epochs(packed: list[EpochMetrics], alone: list[EpochMetrics]) -> None:
    key = lambda e: (e.fold_id, e.epoch)  # noqa: E731
    assert sorted(map(key, packed)) == sorted(map(key, alone)) and len(alone) > 4
    alone_by = {key(e): e for e in alone}
    for event in packed:
        other = alone_by[key(event)]
        assert event.val_nll == pytest.approx(other.val_nll, rel=TOLERANCE, abs=TOLERANCE)
        assert event.train_loss == pytest.approx(other.train_loss, rel=TOLERANCE, abs=TOLERANCE)


def test_a_packed_run_equals_the_same_run_one_fold_at_a_time(features: FeatureSet) -> None:
    sink_packed, sink_alone = Recorder(), Recorder()
    packed, errors = train([job("r", config(pack="auto"), features, sink_packed)])
    alone, errors_alone = train([job("r", config(pack=1), features, sink_alone)])
    assert errors == errors_alone == {}
    assert_same_folds(packed["r"], alone["r"])
    assert {r.pack_size for r in packed["r"]} == {4} and {r.pack_size for r in alone["r"]} == {1}
    assert len({r.epochs_run for r in alone["r"]}) > 1, "the folds should stop early at different epochs"
    assert_same_epochs(sink_packed.epochs("r"), sink_alone.epochs("r"))
    # each fold's own epochs in order, even though the folds train in lockstep
    for fold in range(4):
        assert [e.epoch for e in sink_packed.epochs("r") if e.fold_id == fold] == list(
            range(next(r.epochs_run for r in packed["r"] if r.fold_id == fold))
        )


def test_a_cap_gives_smaller_packs_and_the_same_results(features: FeatureSet) -> None:
    capped, errors = train([job("r", config(pack=3), features, Recorder())])
    alone, _ = train([job("r", config(pack=1), features, Recorder())])
    assert errors == {}
    assert sorted(r.pack_size for r in capped["r"]) == [1, 3, 3, 3]
    assert_same_folds(capped["r"], alone["r"])


def test_runs_of_one_architecture_share_a_stack_with_their_own_hyperparameters(features: FeatureSet) -> None:
    first = config(lr=3e-3, weight_decay=1e-3, dropout=0.05, seed=1)
    second = config(lr=5e-3, weight_decay=0.0, dropout=0.3, w_bce=0.5, patience=3, epochs=9, seed=2)
    sink = Recorder()
    packed, errors = train([job("a", first, features, sink), job("b", second, features, sink)])
    assert errors == {}
    assert {r.pack_size for r in packed["a"] + packed["b"]} == {8}
    for run_id, cfg in (("a", first), ("b", second)):
        alone_sink = Recorder()
        alone, _ = train([job(run_id, cfg.model_copy(update={"pack": 1}), features, alone_sink)])
        assert_same_folds(packed[run_id], alone[run_id])
        assert_same_epochs(sink.epochs(run_id), alone_sink.epochs(run_id))


def test_another_architecture_trains_in_a_stack_of_its_own(features: FeatureSet) -> None:
    packed, errors = train(
        [job("a", config(), features, Recorder()), job("b", config(hidden=8), features, Recorder())]
    )
    assert errors == {}
    assert {r.pack_size for r in packed["a"]} == {r.pack_size for r in packed["b"]} == {4}


def test_a_diverging_model_fails_its_run_and_the_other_run_goes_on(features: FeatureSet) -> None:
    sink = Recorder()
    diverging = config(lr=10.0, w_bce=3e38, w_brier=3e38, dropout=0.0)  # the loss overflows to nan
    packed, errors = train([job("bad", diverging, features, sink), job("good", config(), features, sink)])
    assert set(errors) == {"bad"}
    assert isinstance(errors["bad"], FoldFailedError)
    assert "NonFiniteLossError" in str(errors["bad"]) and "not finite" in str(errors["bad"])
    alone, _ = train([job("good", config(pack=1), features, Recorder())])
    assert_same_folds(packed["good"], alone["good"])


def test_a_cancelled_run_leaves_the_stack_and_the_other_run_completes(features: FeatureSet) -> None:
    cancels: dict[str, threading.Event] = {}

    def cancel_after_first_epoch(run_id: str, event: BaseModel) -> None:
        if run_id == "stop" and isinstance(event, EpochMetrics):
            cancels["stop"].set()

    sink = Recorder(cancel_after_first_epoch)
    stopping, going = job("stop", config(), features, sink), job("go", config(), features, sink)
    cancels["stop"] = stopping.cancel_event
    packed, errors = train([stopping, going])
    assert set(errors) == {"stop"} and isinstance(errors["stop"], RunCancelledError)
    assert "stop" not in packed
    # at most the epoch in flight when the cancel came: every fold of the stopped run left at once
    assert {e.epoch for e in sink.epochs("stop")} == {0}
    alone, _ = train([job("go", config(pack=1), features, Recorder())])
    assert_same_folds(packed["go"], alone["go"])


def test_a_run_ends_as_soon_as_its_folds_are_done(features: FeatureSet) -> None:
    ended: list[tuple[str, Exception | None]] = []
    results: list[FoldResult] = []
    short = config(epochs=2, patience=10)
    jobs = [job("short", short, features, Recorder()), job("long", config(hidden=8), features, Recorder())]
    LocalExecutor().run_jobs(jobs, results.append, lambda run_id, error: ended.append((run_id, error)))
    assert ended == [("short", None), ("long", None)]
    assert len(results) == 8
