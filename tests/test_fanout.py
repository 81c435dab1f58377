"""The API's stream: each event encoded once and offered to every WebSocket client, its types declared."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from api.ws.fanout import EventPump, Outgoing, encode_control
from orchestrator.events.hub import EventHub
from orchestrator.events.stream import LocalHubClient
from orchestrator.messages import HistoryGap
from tests.made_events import note


class _Client:
    def __init__(self, types: frozenset[str]) -> None:
        self.types = types
        self.items: list[Outgoing] = []

    def offer(self, item: Outgoing) -> None:
        self.items.append(item)


def test_pump_declares_its_clients_types_at_once_and_while_polling() -> None:
    hub = EventHub()

    async def scenario() -> frozenset[str]:
        pump = EventPump(LocalHubClient(hub), poll_timeout_s=5)
        await pump.start()
        await asyncio.sleep(0.05)
        assert hub.wanted() == frozenset()  # no client: nothing optional is wanted
        pump.add(_Client(frozenset({"epoch_metrics"})))
        pump.add(_Client(frozenset({"prediction_delta", "notification"})))
        await asyncio.sleep(0.05)  # no event came, so no new poll: add() told the hub itself
        assert pump.interest == {"epoch_metrics", "prediction_delta", "notification"}
        wanted = hub.wanted()
        await pump.stop()
        return wanted

    assert {"prediction_delta", "notification"} <= asyncio.run(scenario())


def test_each_event_is_observed_then_offered_as_its_record_to_every_client() -> None:
    hub = EventHub()
    observed: list[int] = []

    async def scenario() -> tuple[_Client, _Client, frozenset[str]]:
        pump = EventPump(LocalHubClient(hub), observe=lambda e: observed.append(e.seq), poll_timeout_s=5)
        first, second = _Client(frozenset({"notification"})), _Client(frozenset({"epoch_metrics"}))
        pump.add(first)
        pump.add(second)
        await pump.start()
        for i in range(3):
            hub.publish("r", "driver", i, note(i))
        assert await pump.drain(5)
        pump.remove(second)
        interest = pump.interest
        hub.publish("r", "driver", 3, note(3))
        assert await pump.drain(5)
        await pump.stop()
        return first, second, interest

    first, second, interest = asyncio.run(scenario())
    assert observed == [1, 2, 3, 4]
    assert [item.seq for item in first.items] == [1, 2, 3, 4]
    assert [item.seq for item in second.items] == [1, 2, 3]  # offered all; the client filters
    assert first.items[0] is second.items[0] is hub.run_events("r")[0]  # the record itself: one text
    assert interest == {"notification"}


def test_a_pump_that_fell_behind_tells_its_clients() -> None:
    hub = EventHub(max_events=2)
    for i in range(5):
        hub.publish("r", "driver", i, note(i))

    class Behind(LocalHubClient):
        async def last_seq(self) -> int:
            return 0  # as if the pump had followed from the start

    async def scenario() -> _Client:
        pump = EventPump(Behind(hub), poll_timeout_s=5)
        client = _Client(frozenset({"notification"}))
        pump.add(client)
        await pump.start()
        await asyncio.wait_for(_until(lambda: len(client.items) == 3), 5)
        await pump.stop()
        return client

    gap, *events = asyncio.run(scenario()).items
    assert gap.seq is None and gap.type == "history_gap"
    message = json.loads(gap.text)
    assert message["requested_since"] == 0 and message["oldest_available"] == 4
    assert "seq" not in message and "run_id" not in message  # unset envelope fields left out
    assert [item.seq for item in events] == [4, 5]


async def _until(check: Any) -> None:
    while not check():
        await asyncio.sleep(0.01)


def test_control_frames_leave_unset_envelope_fields_out() -> None:
    control = encode_control(
        HistoryGap(seq=None, requested_since=1, oldest_available=5, message="m", run_id="r", ts=1.0)
    )
    assert control.seq is None and control.run_id == "r"
    assert json.loads(control.text)["ts"] == 1.0
