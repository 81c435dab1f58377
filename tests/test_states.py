"""The one transition helper: legal moves pass, an illegal one names the state it expected."""

from __future__ import annotations

import enum

import pytest

from orchestrator.config import TrainConfig
from orchestrator.errors import IllegalTransitionError
from orchestrator.lifecycle import Run, RunState
from orchestrator.messages import parse_message
from orchestrator.states import StateTable
from tests.made_events import error, fold_done, start


class Door(str, enum.Enum):
    OPEN = "open"
    CLOSED = "closed"
    LOCKED = "locked"
    GONE = "gone"


DOOR = StateTable(
    "door",
    {
        Door.OPEN: {Door.CLOSED},
        Door.CLOSED: {Door.OPEN, Door.LOCKED},
        Door.LOCKED: {Door.CLOSED},
        Door.GONE: (),
    },
)


def test_legal_moves_return_the_new_state() -> None:
    assert DOOR.check(Door.OPEN, Door.CLOSED) is Door.CLOSED
    assert DOOR.allows(Door.CLOSED, Door.LOCKED) and not DOOR.allows(Door.OPEN, Door.LOCKED)
    assert DOOR.terminal == frozenset({Door.GONE})


def test_illegal_move_names_the_expected_state() -> None:
    with pytest.raises(IllegalTransitionError, match="door: cannot go to locked from open: expected closed"):
        DOOR.check(Door.OPEN, Door.LOCKED)
    with pytest.raises(IllegalTransitionError, match="front: cannot go to gone .*no state leads there"):
        DOOR.check(Door.OPEN, Door.GONE, "front")


def test_run_transitions_go_through_the_table() -> None:
    run = Run("r1", TrainConfig(), "/tmp/r1")
    run.transition(RunState.RUNNING)
    run.transition(RunState.COMPLETED)
    assert run.done and run.ended_at is not None
    with pytest.raises(
        IllegalTransitionError, match="run r1: cannot go to running from completed: expected pending"
    ):
        run.transition(RunState.RUNNING)


def test_interrupted_is_a_terminal_run_state_reached_from_pending_or_running() -> None:
    from orchestrator.lifecycle import TERMINAL_STATES

    assert RunState.INTERRUPTED in TERMINAL_STATES
    run = Run("r2", TrainConfig(), "/tmp/r2")
    run.transition(RunState.RUNNING)
    run.transition(RunState.INTERRUPTED, error="interrupted: gone")
    assert run.done and run.error == "interrupted: gone"
    with pytest.raises(IllegalTransitionError, match="expected pending or queued or running"):
        run.transition(RunState.INTERRUPTED)


def test_a_run_executed_elsewhere_follows_its_lifecycle_from_its_events() -> None:
    run = Run("r3", TrainConfig(), "/tmp/r3")
    run.follow(parse_message(start(2, 3)))
    assert run.state is RunState.RUNNING
    run.follow(parse_message(fold_done(0)))
    run.follow(parse_message({"type": "training_complete", "folds_completed": 2, "summary_path": "s.json"}))
    assert run.snapshot()["state"] == "completed" and run.summary_path == "s.json" and run.folds_done == 1
    cancelled = Run("r4", TrainConfig(), "/tmp/r4")
    cancelled.follow(parse_message(error("run r4 was cancelled")))
    assert cancelled.state is RunState.CANCELLED and cancelled.error == "run r4 was cancelled"


def test_a_queued_run_starts_through_pending_or_ends_without_starting() -> None:
    run = Run("q", TrainConfig(), "/tmp/q", state=RunState.QUEUED)
    with pytest.raises(IllegalTransitionError, match="cannot go to running from queued"):
        run.transition(RunState.RUNNING)
    run.transition(RunState.PENDING)
    run.transition(RunState.RUNNING)
    assert run.started_at is not None and run.snapshot()["started_at"] == run.started_at
    cancelled = Run("c", TrainConfig(), "/tmp/c", state=RunState.QUEUED)
    assert cancelled.request_cancel() is True
    cancelled.transition(RunState.CANCELLED, error="run c was cancelled while queued (it never started)")
    assert cancelled.done and cancelled.started_at is None
