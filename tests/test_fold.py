"""One fold in-process: ``run_fold`` and its thin actor class ``FoldTrainer``, without Ray."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import BaseModel

from orchestrator.config import FoldSpec, TrainConfig, config_from_mapping
from orchestrator.errors import RunCancelledError
from orchestrator.messages import EpochMetrics, PredictionDelta
from orchestrator.run.cv import plan_folds_for
from tests.synthetic import ar1_ohlcv
from workers.features import FeatureSet, build_features
from workers.fold import FoldContext, FoldResult, FoldTrainer, PackMember, run_fold, run_pack
from workers.member import FoldMember


class RecordingPublisher:
    def __init__(self, wanted: frozenset[str] = frozenset()) -> None:
        self.events: list[BaseModel] = []
        self.flushes = 0
        self.wanted = wanted

    def publish(self, event: BaseModel) -> None:
        self.events.append(event)

    def flush(self, timeout: float | None = None) -> None:
        self.flushes += 1

    def wants(self, kind: str) -> bool:
        return kind in self.wanted

    def of_type(self, kind: type[BaseModel]) -> list[BaseModel]:
        return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture(scope="module")
def fold_input() -> tuple[FeatureSet, FoldSpec, TrainConfig]:
    config = config_from_mapping(
        {
            "folds": 2,
            "epochs": 3,
            "lookback": 10,
            "hidden": 16,
            "batch_size": 128,
            "batch_progress_interval_s": 0.0,
            "executor": "local",
        }
    )
    features = build_features(ar1_ohlcv(1200, seed=7, phi=0.3), config.lookback)
    return features, plan_folds_for(config, len(features))[1], config


def test_run_fold_publishes_each_epoch_and_returns_the_best_epochs_result(
    fold_input: tuple[FeatureSet, FoldSpec, TrainConfig],
) -> None:
    features, spec, config = fold_input
    publisher = RecordingPublisher()
    result = run_fold(features, spec, config, FoldContext("r1", 0.0, attempt=2), publisher)

    epochs = [e for e in publisher.of_type(EpochMetrics) if isinstance(e, EpochMetrics)]
    assert [(e.fold_id, e.epoch) for e in epochs] == [(1, 0), (1, 1), (1, 2)]
    assert not publisher.of_type(PredictionDelta)  # nobody wants the live detail
    assert publisher.flushes == 1 and isinstance(publisher.events[-1], EpochMetrics)

    assert (result.fold_id, result.attempt, result.device, result.epochs_run) == (1, 2, "cpu", 3)
    best = epochs[result.best_epoch]
    assert result.metrics["epoch"] == result.best_epoch
    assert result.metrics["cal_loss"] == best.cal_loss == min(e.cal_loss or math.inf for e in epochs)
    assert result.metrics["train_loss"] == best.train_loss
    # validation metrics are those of the selected (best) model, as in the epoch it was scored
    assert result.metrics["val_nll"] == pytest.approx(best.val_nll, rel=1e-12)
    n_cal, n_val = len(spec.calibration), len(spec.validation)
    assert list(result.predictions["segment"]) == ["calibration"] * n_cal + ["validation"] * n_val
    np.testing.assert_array_equal(
        result.predictions["y"], features.y[np.r_[spec.calibration.as_slice(), spec.validation.as_slice()]]
    )


def test_the_actor_class_runs_the_same_fold_in_process(
    fold_input: tuple[FeatureSet, FoldSpec, TrainConfig],
) -> None:
    features, spec, config = fold_input
    wanted = frozenset({"prediction_delta", "batch_progress"})
    direct = run_fold(features, spec, config, FoldContext("r1", 0.0), RecordingPublisher(wanted))
    publisher = RecordingPublisher(wanted)
    trainer = FoldTrainer()
    assert trainer.ping() == trainer.pid
    via_actor: FoldResult = trainer.run(features, spec, config, FoldContext("r1", 0.0), publisher)
    for name in direct.predictions:
        np.testing.assert_array_equal(direct.predictions[name], via_actor.predictions[name])
    assert direct.metrics == via_actor.metrics
    final = [e for e in publisher.of_type(PredictionDelta) if isinstance(e, PredictionDelta) and e.final]
    assert final and final[0].epoch == via_actor.best_epoch


def test_cancel_stops_after_the_running_epoch(
    fold_input: tuple[FeatureSet, FoldSpec, TrainConfig],
) -> None:
    features, spec, config = fold_input
    trainer = FoldTrainer()

    class CancelOnFirstEpoch(RecordingPublisher):
        def publish(self, event: BaseModel) -> None:
            super().publish(event)
            trainer.cancel()  # as the executor's cancel.remote() would, mid-run

    publisher = CancelOnFirstEpoch()
    with pytest.raises(RunCancelledError, match="run r9 was cancelled \\(fold 1\\)"):
        trainer.run(features, spec, config, FoldContext("r9", 0.0), publisher)
    assert [type(e) for e in publisher.events] == [EpochMetrics]
    assert publisher.flushes == 1  # what was published reaches the hub before the error

    with pytest.raises(RunCancelledError):  # in-process: the executor's should_stop
        trainer.run(features, spec, config, FoldContext("r9", 0.0), RecordingPublisher(), lambda: True)


def test_a_streamed_pack_yields_each_fold_as_soon_as_it_is_scored(
    fold_input: tuple[FeatureSet, FoldSpec, TrainConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Ray executor's call: fold 0's outcome reaches the caller before fold 1 is scored (the
    driver writes one fold's files while the worker scores the next), and the folds equal
    ``run_pack``'s."""
    features, _, config = fold_input
    specs = plan_folds_for(config, len(features))
    scored: list[int] = []
    score = FoldMember.result

    def recorded(self: FoldMember, *args: object, **kwargs: object) -> FoldResult:
        scored.append(self.member.spec.fold_id)
        return score(self, *args, **kwargs)  # type: ignore[arg-type]

    def members() -> list[PackMember]:
        return [PackMember(spec, config, FoldContext("r1", 0.0), RecordingPublisher()) for spec in specs]

    listed = run_pack(features, members())
    monkeypatch.setattr(FoldMember, "result", recorded)
    stream = FoldTrainer().stream_pack(features, members())
    first = next(stream)
    assert (first.fold_id, scored) == (0, [0])
    rest = list(stream)
    assert ([o.fold_id for o in rest], scored) == ([1], [0, 1])
    for outcome, expected in zip([first, *rest], listed, strict=True):
        assert isinstance(outcome, FoldResult) and isinstance(expected, FoldResult)
        assert outcome.metrics == expected.metrics


def test_a_pack_sends_every_fold_s_events_before_it_scores_the_first(
    fold_input: tuple[FeatureSet, FoldSpec, TrainConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub takes the folds' last events while the first folds are scored: each fold's own
    flush before its outcome then finds them taken (one hub round trip per pack, not per fold)."""
    features, _, config = fold_input
    specs = plan_folds_for(config, len(features))
    log: list[tuple[str, int, float | None]] = []

    class Logged(RecordingPublisher):
        def __init__(self, fold_id: int) -> None:
            super().__init__()
            self.fold_id = fold_id

        def flush(self, timeout: float | None = None) -> None:
            super().flush(timeout)
            log.append(("flush", self.fold_id, timeout))

    score = FoldMember.result

    def recorded(self: FoldMember, *args: object, **kwargs: object) -> FoldResult:
        log.append(("score", self.member.spec.fold_id, None))
        return score(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(FoldMember, "result", recorded)
    members = [PackMember(spec, config, FoldContext("r1", 0.0), Logged(spec.fold_id)) for spec in specs]
    run_pack(features, members)
    assert log[:3] == [("flush", 0, 0), ("flush", 1, 0), ("score", 0, None)]
    assert ("flush", 1, None) in log[3:]  # and each fold still waits for its own before its outcome
