"""Milestone notifications: derived by the pure tracker, released by the hub right after their cause."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from orchestrator.events.hub import EventHub
from orchestrator.events.milestones import MILESTONES, RunMilestones
from orchestrator.messages import ENVELOPE_FIELDS, Notification, parse_message
from tests import made_events
from tests.made_events import body


def start(folds: int, epochs: int) -> BaseModel:
    return parse_message(made_events.start(folds, epochs))


def epoch(fold: int, n: int, auc: float | None = None) -> BaseModel:
    return parse_message(made_events.epoch(fold, n, val_auc=auc))


def done(fold: int, auc: float | None) -> BaseModel:
    return parse_message(made_events.fold_done(fold, auc))


def test_progress_milestones_each_once_in_order() -> None:
    tracker = RunMilestones()
    assert tracker.observe(epoch(0, 0)) == []  # before training_start nothing is planned
    tracker = RunMilestones()
    assert tracker.observe(start(2, 4)) == []
    messages = [n.message for i in range(4) for n in tracker.observe(epoch(0, i))]
    messages += [n.message for i in range(4) for n in tracker.observe(epoch(1, i))]
    assert messages == [
        "run 25% complete (2/8 epochs)",
        "run 50% complete (4/8 epochs)",
        "run 75% complete (6/8 epochs)",
    ]
    assert len(messages) == len(MILESTONES)  # no 100% notification: training_complete says it
    assert tracker.observe(epoch(1, 3)) == []  # a repeated epoch sends nothing again


def test_an_early_stopped_fold_counts_all_its_epochs() -> None:
    tracker = RunMilestones()
    tracker.observe(start(2, 10))
    tracker.observe(epoch(0, 0))
    notes = tracker.observe(done(0, None))
    assert [n.message for n in notes] == [
        "run 25% complete (10/20 epochs)",
        "run 50% complete (10/20 epochs)",
    ]


def test_no_best_auc_notification_during_a_folds_epochs() -> None:
    """The case of the user report: rising per-epoch AUCs of the first folds (below 0.5 too)."""
    tracker = RunMilestones()
    tracker.observe(start(5, 100))
    notes = [
        n
        for f in (0, 1)
        for i, auc in enumerate((0.43, 0.4374, 0.4394, 0.52, 0.55, 0.58))
        for n in tracker.observe(epoch(f, i, auc))
    ]
    assert [n for n in notes if n.kind == "best_val_auc"] == []


def test_best_auc_rule_a_finished_fold_beats_chance_and_every_fold_before() -> None:
    tracker = RunMilestones()
    tracker.observe(start(6, 100))  # no progress milestone within these folds' epochs

    def best(message: BaseModel) -> list[Notification]:
        return [n for n in tracker.observe(message) if n.kind == "best_val_auc"]

    assert best(done(0, 0.48)) == []  # below chance: no news, though the first
    (note,) = best(done(1, 0.515))  # the first above 0.5 and above fold 0
    assert note.fold_id == 1 and note.level == "info"
    assert note.message == (
        "fold 1 finished with val_auc 0.5150, the best of 2 folds finished "
        "(best before 0.4800; chance is 0.5)"
    )
    assert best(done(2, None)) == []  # undefined (one class): nothing
    assert best(done(3, 0.515)) == []  # equal is not better
    assert best(done(4, 0.51)) == []  # worse than fold 1
    (note,) = best(done(5, 0.53))
    assert note.message == (
        "fold 5 finished with val_auc 0.5300, the best of 6 folds finished "
        "(best before 0.5150; chance is 0.5)"
    )


def test_a_fold_below_chance_still_raises_the_bar() -> None:
    """Another member: the best finished AUC counts folds below 0.5, so a later 0.49 is no news."""
    tracker = RunMilestones()
    tracker.observe(start(3, 100))

    def best(message: BaseModel) -> list[int | None]:
        return [n.fold_id for n in tracker.observe(message) if n.kind == "best_val_auc"]

    assert best(done(0, 0.495)) == []
    assert best(done(1, 0.49)) == []
    assert best(done(2, 0.50001)) == [2]


def test_notifications_are_unstamped_wire_messages() -> None:
    tracker = RunMilestones()
    tracker.observe(start(1, 1))
    notes = tracker.observe(epoch(0, 0))  # 1 of 1 epochs: every milestone at once
    assert len(notes) == len(MILESTONES)
    for note in notes:
        assert all(getattr(note, name) is None for name in ENVELOPE_FIELDS)  # the hub stamps them
        assert note.kind == "progress"


def test_hub_derives_progress_and_best_auc_notifications() -> None:
    hub = EventHub()
    hub.register_run("r", None)
    events: list[dict[str, Any]] = [made_events.start(2, 2)]
    aucs = {(0, 0): 0.51, (1, 0): 0.50, (0, 1): 0.53, (1, 1): 0.52}
    for (fold, n), auc in aucs.items():
        events.append(made_events.epoch(fold, n, val_auc=auc))
    events += [made_events.fold_done(0, 0.53), made_events.fold_done(1, 0.52)]
    for pseq, event in enumerate(events):
        hub.publish("r", "p", pseq, event)
    notes = [body(e) for e in hub.run_events("r") if e.type == "notification"]
    progress = [n["message"] for n in notes if n["kind"] == "progress"]
    assert progress == [
        "run 25% complete (1/4 epochs)",
        "run 50% complete (2/4 epochs)",
        "run 75% complete (3/4 epochs)",
    ]
    best = [n for n in notes if n["kind"] == "best_val_auc"]
    assert len(best) == 1 and best[0]["fold_id"] == 0 and "0.5300" in best[0]["message"]
    # each notification comes right after the event that caused it
    kinds = [e.type for e in hub.run_events("r")]
    assert kinds[:3] == ["training_start", "epoch_metrics", "notification"]
