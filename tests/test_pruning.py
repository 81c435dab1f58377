"""Pruning on epoch events: intermediate values, the pruner, the cancel of a pruned trial's run."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from pydantic import BaseModel

from orchestrator.events.record import EventRecord
from orchestrator.hpo.pruning import EpochTracker, TrialPruning, make_pruner
from orchestrator.hpo.spec import HpoSpec
from orchestrator.messages import parse_message
from tests import made_events
from tests.made_events import record

_SEQ = iter(range(1, 10**6))


def _epoch(fold: int, epoch: int, value: float | None) -> BaseModel:
    return parse_message(made_events.epoch(fold, epoch, val_nll=value))


def _start(folds: int) -> BaseModel:
    return parse_message(made_events.start(folds, 10))


def _released(message: dict[str, Any] | BaseModel) -> EventRecord:
    """A trial's run's event as the study's subscriber gets it."""
    body = message if isinstance(message, dict) else message.model_dump(exclude={"run_id", "seq", "ts"})
    return record(next(_SEQ), "trial-run", body)


def test_epoch_tracker_settles_each_epoch_once_all_folds_reported_it() -> None:
    tracker = EpochTracker("val_nll")
    assert tracker.observe(_start(2)) == []
    assert tracker.observe(_epoch(0, 0, 1.0)) == []
    assert tracker.observe(_epoch(0, 1, 0.5)) == []
    assert tracker.observe(_epoch(1, 0, 3.0)) == [(0, 2.0)]
    assert tracker.observe(_epoch(1, 1, None)) == [(1, 0.5)]  # undefined values are left out
    # fold 0 stopped early: its last value carries forward once it completed
    assert tracker.observe(_epoch(1, 2, 1.5)) == []
    assert tracker.observe(parse_message(made_events.fold_done(0))) == [(2, 1.0)]
    assert tracker.observe(parse_message(made_events.complete())) == []


def test_epoch_tracker_flushes_what_it_has_when_the_run_ends() -> None:
    tracker = EpochTracker("val_nll")
    tracker.observe(_start(3))
    tracker.observe(_epoch(0, 0, 2.0))
    tracker.observe(_epoch(0, 1, 1.0))
    assert tracker.observe(parse_message(made_events.error("x"))) == [(0, 2.0), (1, 1.0)]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("median", optuna.pruners.MedianPruner),
        ("hyperband", optuna.pruners.HyperbandPruner),
        ("successive_halving", optuna.pruners.SuccessiveHalvingPruner),
        ("none", optuna.pruners.NopPruner),
    ],
)
def test_make_pruner_follows_the_spec(name: str, kind: type) -> None:
    assert isinstance(make_pruner(HpoSpec.model_validate({"pruner": name})), kind)


class FakeRun:
    def __init__(self) -> None:
        self.cancels = 0

    def request_cancel(self) -> bool:
        self.cancels += 1
        return True


def _trial_events(pruning: TrialPruning, values: list[float]) -> None:
    pruning.observe(_released(made_events.start(1, 10)))
    for epoch, value in enumerate(values):
        pruning.observe(_released(_epoch(0, epoch, value)))


def test_a_worse_trial_is_pruned_and_its_run_cancelled() -> None:
    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    good = study.ask()
    first = TrialPruning(good, "val_nll")
    _trial_events(first, [1.0, 0.5, 0.4])
    first.observe(_released(made_events.complete()))
    assert first.wait_ended(0) and not first.close()
    assert study.trials[0].intermediate_values == {0: 1.0, 1: 0.5, 2: 0.4}
    study.tell(good, 0.4)

    bad = study.ask()
    pruning = TrialPruning(bad, "val_nll")
    run = FakeRun()
    pruning.run = run
    assert not pruning.wait_ended(0)
    _trial_events(pruning, [5.0])
    assert pruning.pruned and run.cancels == 1
    assert study.trials[1].user_attrs["pruned_at_epoch"] == 0
    _trial_events(pruning, [5.0, 6.0])  # later epochs are no longer reported
    assert run.cancels == 1 and study.trials[1].intermediate_values == {0: 5.0}
    assert pruning.close()
    pruning.observe(_released(made_events.error("cancelled")))  # after close: ignored
    assert not pruning.wait_ended(0)


def test_without_a_pruner_the_values_are_reported_and_the_pruner_never_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())  # make_pruner's for ``none``
    trial = study.ask()

    def asked() -> bool:  # each question is a storage read per epoch step
        raise AssertionError("the pruner was asked")

    monkeypatch.setattr(trial, "should_prune", asked)
    pruning = TrialPruning(trial, "val_nll")
    run = FakeRun()
    pruning.run = run
    _trial_events(pruning, [5.0, 6.0])
    assert not pruning.pruned and run.cancels == 0
    assert study.trials[0].intermediate_values == {0: 5.0, 1: 6.0}
    assert not pruning.close()
