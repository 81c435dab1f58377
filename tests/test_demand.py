"""Demand: which optional message types some consumer delivers now, on a fake clock and through the hub."""

from __future__ import annotations

import asyncio
import time

import pytest

from orchestrator.events import demand as demand_module
from orchestrator.events.demand import INTEREST_GRACE_S, Demand
from orchestrator.events.hub import EventHub


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_declarations_expire_and_the_longest_hold_wins() -> None:
    clock = Clock()
    demand = Demand(clock)
    assert demand.wanted() == frozenset()
    demand.note({"prediction_delta"}, 1.0)
    demand.note({"prediction_delta", "batch_progress"}, 10.0)
    demand.note({"prediction_delta"}, 2.0)  # a shorter hold never shortens a longer one
    clock.now += 5.0
    assert demand.wanted() == {"prediction_delta", "batch_progress"}
    clock.now += 5.1
    assert demand.wanted() == frozenset()
    demand.note({"chart_update"}, -3.0)  # a negative hold counts as none
    assert demand.wanted() == {"chart_update"}  # wanted at this instant only
    clock.now += 0.001
    assert demand.wanted() == frozenset()


def test_a_poll_holds_its_interest_for_its_timeout_plus_the_grace() -> None:
    clock = Clock()
    demand = Demand(clock)
    demand.note_poll({"batch_progress"}, 10.0)
    clock.now += 10.0 + INTEREST_GRACE_S - 0.01
    assert demand.wanted() == {"batch_progress"}
    clock.now += 0.02
    assert demand.wanted() == frozenset()


def test_interest_is_the_union_of_unexpired_declarations() -> None:
    hub = EventHub()
    assert hub.wanted() == frozenset()
    hub.note_interest({"prediction_delta"}, 0.3)
    hub.note_interest({"batch_progress", "prediction_delta"}, 30)
    assert hub.wanted() == {"prediction_delta", "batch_progress"}
    hub.note_interest({"chart_update"}, 0.2)
    time.sleep(0.35)
    assert hub.wanted() == {"prediction_delta", "batch_progress"}  # the longer hold wins


def test_a_poll_declares_interest_for_its_timeout_plus_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demand_module, "INTEREST_GRACE_S", 0.2)
    hub = EventHub()
    asyncio.run(hub.poll(0, 0.1, interest=frozenset({"batch_progress"})))
    assert hub.wanted() == {"batch_progress"}
    time.sleep(0.35)
    assert hub.wanted() == frozenset()
    asyncio.run(hub.poll(0, 0))  # a poll without interest (a replay page) declares nothing
    assert hub.wanted() == frozenset()
