"""``api.ws.connection``: one client's states, bounded queue, replay and sender, driven by plain
coroutines (no server)."""

from __future__ import annotations

import asyncio
import json

import pytest

from orchestrator.events.stream import LocalHubClient
from orchestrator.events.fanout import Outgoing, encode_event
from api.ws.connection import (
    ClientConnection,
    ClientState,
    CloseCode,
    IllegalClientTransition,
    close_reason,
)
from api.ws.subscription import Subscription
from orchestrator.errors import IllegalTransitionError
from orchestrator.events.hub import EventHub


def test_close_reason_fits_a_close_frame() -> None:
    assert close_reason("short") == "short"
    assert len(close_reason("x" * 500).encode()) <= 123
    assert close_reason("x" * 500).endswith("...")
    assert len(close_reason("é" * 100).encode()) <= 123


def _connection(max_queue: int = 1000, max_queue_bytes: int = 2**20) -> ClientConnection:
    async def send_text(text: str) -> None:
        raise AssertionError("nothing is sent in this test")

    hub = LocalHubClient(EventHub())
    return ClientConnection(
        Subscription(), hub, send_text, max_queue=max_queue, max_queue_bytes=max_queue_bytes, name="c"
    )


def test_transitions_follow_the_table_and_a_wrong_one_names_what_was_expected() -> None:
    conn = _connection()
    assert conn.state.value == "connecting"
    with pytest.raises(IllegalClientTransition, match="c: cannot go to live from connecting: "
                       "expected replaying"):
        conn.transition(ClientState.LIVE)
    conn.transition(ClientState.REPLAYING)
    conn.transition(ClientState.LIVE)
    conn.transition(ClientState.CLOSED)
    with pytest.raises(IllegalTransitionError, match="cannot go to closing from closed: expected connecting or live or replaying"):
        conn.transition(ClientState.CLOSING)
    conn.request_close(CloseCode.SERVER_SHUTDOWN, "late")  # a closed client takes no decision
    assert conn.close_request is None and conn.state is ClientState.CLOSED


def test_first_close_decision_wins_and_offers_stop_once_closing() -> None:
    conn = _connection()
    conn.transition(ClientState.REPLAYING)
    conn.request_close(CloseCode.SERVER_SHUTDOWN, f"stopping; {conn.resume_hint()}")
    conn.request_close(CloseCode.SLOW_CONSUMER, "second")
    assert conn.close_request is not None
    assert (conn.close_request.code, conn.close_request.reason) == (4001, "stopping; reconnect")
    assert conn.state is ClientState.CLOSING and conn.closing.is_set()
    conn.offer(Outgoing(1, "notification", "r", "{}"))  # not queued: nothing overflows, no error


def test_the_queue_is_bounded_by_bytes_too() -> None:
    conn = _connection(max_queue_bytes=10)
    conn.transition(ClientState.REPLAYING)
    conn.offer(Outgoing(1, "notification", "r", "x" * 8))
    assert conn.close_request is None
    conn.offer(Outgoing(2, "notification", "r", "x" * 8))
    assert conn.close_request is not None and conn.close_request.code == CloseCode.SLOW_CONSUMER
    assert "1 messages queued" in conn.close_request.reason


def test_connection_replays_then_goes_live_without_duplicates_and_closes_4008_on_overflow() -> None:
    hub = EventHub()
    hub.register_run("r", None)
    released = [hub.publish("r", "p", i, {"type": "notification", "level": "info", "kind": "k",
                                            "message": str(i)})[0] for i in range(5)]

    async def main() -> tuple[list[int], ClientConnection]:
        sent: list[int] = []

        async def send_text(text: str) -> None:
            sent.append(json.loads(text)["seq"])

        conn = ClientConnection(Subscription(run_id="r"), LocalHubClient(hub), send_text, max_queue=4)
        conn.transition(ClientState.REPLAYING)
        for event in released[3:]:  # live copies of events the replay also has
            conn.offer(encode_event(event))
        task = asyncio.create_task(conn.stream())
        await asyncio.sleep(0.05)
        assert conn.state is ClientState.LIVE
        more = [hub.publish("r", "p", i, {"type": "notification", "level": "info", "kind": "k",
                                          "message": str(i)})[0] for i in range(5, 7)]
        for event in more:
            conn.offer(encode_event(event))
        await asyncio.sleep(0.05)
        for i in range(7, 13):  # more than the queue holds, with no chance to send
            conn.offer(encode_event(hub.publish("r", "p", i, {"type": "notification", "level": "info",
                                                              "kind": "k", "message": str(i)})[0]))
        task.cancel()
        return sent, conn

    sent, conn = asyncio.run(main())
    assert sent == list(range(1, 8))  # 5 replayed + 2 live, each once
    assert conn.close_request is not None and conn.close_request.code == CloseCode.SLOW_CONSUMER
    assert conn.close_request.reason.endswith("reconnect with ?since=7")
    assert conn.state is ClientState.CLOSING
    expected = "cannot go to live from closing: expected replaying"
    with pytest.raises(IllegalClientTransition, match=expected):
        conn.transition(ClientState.LIVE)


def test_since_past_the_hubs_head_sends_a_history_gap_then_waits_for_live_events() -> None:
    hub = EventHub()
    hub.register_run("r", None)
    for i in range(3):
        hub.publish("r", "p", i, {"type": "notification", "level": "info", "kind": "k", "message": str(i)})

    async def main() -> tuple[list[dict[str, object]], ClientConnection]:
        sent: list[dict[str, object]] = []

        async def send_text(text: str) -> None:
            sent.append(json.loads(text))

        conn = ClientConnection(Subscription(since=99, run_id="none"), LocalHubClient(hub), send_text)
        conn.transition(ClientState.REPLAYING)
        task = asyncio.create_task(conn.stream())
        await asyncio.sleep(0.05)
        task.cancel()
        return sent, conn

    sent, conn = asyncio.run(main())
    assert sent[0]["type"] == "history_gap" and sent[0]["requested_since"] == 99
    assert sent[0]["oldest_available"] == 1 and "seq" not in sent[0]
    assert len(sent) == 1  # run "none" has no events
    assert conn.state is ClientState.LIVE and conn.resume_from == 3
