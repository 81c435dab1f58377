"""``api.ws.connection``: one client's states, bounded queue, replay and sender, driven by plain
coroutines (no server)."""

from __future__ import annotations

import asyncio
import json

import pytest

from api.ws.connection import (
    ClientConnection,
    ClientState,
    CloseCode,
    IllegalClientTransition,
    close_reason,
)
from api.ws.fanout import ControlFrame
from api.ws.subscription import Subscription
from orchestrator.errors import IllegalTransitionError
from orchestrator.events.hub import EventHub
from orchestrator.events.stream import LocalHubClient
from orchestrator.messages import MESSAGE_TYPES
from tests.made_events import complete, epoch, error, note, record, start


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
    with pytest.raises(
        IllegalClientTransition, match="c: cannot go to live from connecting: expected replaying"
    ):
        conn.transition(ClientState.LIVE)
    conn.transition(ClientState.REPLAYING)
    conn.transition(ClientState.LIVE)
    conn.transition(ClientState.CLOSED)
    with pytest.raises(
        IllegalTransitionError,
        match="cannot go to closing from closed: expected connecting or live or replaying",
    ):
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
    conn.offer(record(1, "r"))  # not queued: nothing overflows, no error


def test_the_queue_is_bounded_by_bytes_too() -> None:
    conn = _connection(max_queue_bytes=10)
    conn.transition(ClientState.REPLAYING)
    conn.offer(ControlFrame("notification", "r", "x" * 8))
    assert conn.close_request is None
    conn.offer(ControlFrame("notification", "r", "x" * 8))
    assert conn.close_request is not None and conn.close_request.code == CloseCode.SLOW_CONSUMER
    assert "1 messages queued" in conn.close_request.reason


def test_connection_replays_then_goes_live_without_duplicates_and_closes_4008_on_overflow() -> None:
    hub = EventHub()
    hub.register_run("r", None)
    released = [hub.publish("r", "p", i, note(i))[0] for i in range(5)]

    async def main() -> tuple[list[int], ClientConnection]:
        sent: list[int] = []

        async def send_text(text: str) -> None:
            sent.append(json.loads(text)["seq"])

        conn = ClientConnection(Subscription(run_id="r"), LocalHubClient(hub), send_text, max_queue=4)
        conn.transition(ClientState.REPLAYING)
        for event in released[3:]:  # live copies of events the replay also has
            conn.offer(event)
        task = asyncio.create_task(conn.stream())
        await asyncio.sleep(0.05)
        assert conn.state is ClientState.LIVE
        more = [hub.publish("r", "p", i, note(i))[0] for i in range(5, 7)]
        for event in more:
            conn.offer(event)
        await asyncio.sleep(0.05)
        for i in range(7, 13):  # more than the queue holds, with no chance to send
            conn.offer(hub.publish("r", "p", i, note(i))[0])
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
        hub.publish("r", "p", i, note(i))

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


# ---- a client that names no run: one run at a time (api.ws.follow) --------------------------

Label = str
START = start(1, 100)
READY = {"type": "dataset_ready", "size": 9, "min_samples": 1}
CANDLES = {"type": "chart_update", "candles": []}
TRIAL = {
    "type": "hpo_trial",
    "study": "s",
    "trial": 0,
    "state": "running",
    "params": {},
    "trials_done": 0,
    "trials_total": 1,
}
FEED_NOTE = {"type": "notification", "level": "warning", "kind": "data_row_skipped", "message": ""}
# (run, event, label): A and B train at once, with the data feed and a study beside them
SCENARIO: list[tuple[str, dict[str, object], Label]] = [
    ("A", READY, "A-ready"),
    ("A", START, "A-start"),
    ("data_feed", CANDLES, "candles-1"),
    ("B", READY, "B-ready"),
    ("A", epoch(0, 0), "A-e0"),
    ("B", START, "B-start"),
    ("B", epoch(0, 0), "B-e0"),
    ("A", note(""), "A-note"),
    ("B", note(""), "B-note"),
    ("hpo_s", TRIAL, "trial-0"),
    ("data_feed", FEED_NOTE, "feed-note"),
    ("A", epoch(0, 1), "A-e1"),
    ("B", epoch(0, 1), "B-e1"),
    ("A", complete(), "A-done"),
    ("B", epoch(0, 2), "B-e2"),
    ("C", error("cancelled while queued"), "C-error"),
    ("B", complete(), "B-done"),
    ("D", error("refused at data load"), "D-error"),
    ("data_feed", CANDLES, "candles-2"),
    ("E", READY, "E-ready"),
    ("E", error("boom"), "E-error"),
]
# What a client connected from the start gets: A (others' events left out), A's end, B's history
# up to there, B live, the lone end of D while nothing runs, then E; the shared streams as they come.
FOLLOWED = [
    "A-ready",
    "A-start",
    "candles-1",
    "A-e0",
    "A-note",
    "trial-0",
    "feed-note",
    "A-e1",
    "A-done",
    "B-ready",
    "B-start",
    "B-e0",
    "B-note",
    "B-e1",
    "B-e2",
    "B-done",
    "D-error",
    "candles-2",
    "E-ready",
    "E-error",
]


class Feed:
    """A hub and the pump's part: each released event offered to the live connections; ``label``
    names the scenario's event by the seq it was released with."""

    def __init__(self) -> None:
        self.hub = EventHub()
        self.live: list[ClientConnection] = []
        self._pseq: dict[str, int] = {}
        self._labels: dict[int, Label] = {}

    def emit(self, run_id: str, event: dict[str, object], label: Label) -> None:
        pseq = self._pseq.get(run_id, 0)
        self._pseq[run_id] = pseq + 1
        (released,) = self.hub.publish(run_id, "p", pseq, event)
        self._labels[released.seq] = label
        for conn in self.live:
            conn.offer(released)

    def labels(self, sent: list[dict[str, object]]) -> list[Label | None]:
        return [self._labels.get(m["seq"]) if isinstance(m.get("seq"), int) else None for m in sent]  # type: ignore[arg-type]

    async def connect(self, subscription: Subscription, sent: list[dict[str, object]]) -> asyncio.Task[None]:
        async def send_text(text: str) -> None:
            sent.append(json.loads(text))

        conn = ClientConnection(subscription, LocalHubClient(self.hub), send_text, name="c")
        conn.transition(ClientState.REPLAYING)
        self.live.append(conn)
        task = asyncio.create_task(conn.stream())
        await _settle()
        return task


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def _play(subscriptions: dict[int, Subscription]) -> tuple[Feed, dict[int, list[dict[str, object]]]]:
    """Play the scenario; the client ``subscriptions[i]`` connects before its event ``i``."""

    async def main() -> tuple[Feed, dict[int, list[dict[str, object]]]]:
        feed = Feed()
        sent: dict[int, list[dict[str, object]]] = {i: [] for i in subscriptions}
        tasks = []
        for i, (run_id, event, label) in enumerate(SCENARIO):
            if i in subscriptions:
                tasks.append(await feed.connect(subscriptions[i], sent[i]))
            feed.emit(run_id, event, label)
            await _settle()
        for task in tasks:
            task.cancel()
        return feed, sent

    return asyncio.run(main())


def test_a_client_naming_no_run_follows_the_oldest_running_run_then_the_next() -> None:
    everything = Subscription(types=frozenset(MESSAGE_TYPES))
    epochs_only = Subscription(types=frozenset({"epoch_metrics"}))
    feed, sent = _play({0: everything, 7: everything, 0 + 1: epochs_only, 14: everything})
    assert feed.labels(sent[0]) == FOLLOWED
    # joining while A and B train: A's history, then on as the first client
    assert feed.labels(sent[7]) == ["A-ready", "A-start", "A-e0"] + FOLLOWED[FOLLOWED.index("A-note") :]
    # the switch happens on A's end even when the client does not take that type
    assert feed.labels(sent[1]) == ["A-e0", "A-e1", "B-e0", "B-e1", "B-e2"]
    # joining after A ended: B (the oldest running now) from its start
    assert (
        feed.labels(sent[14])
        == ["B-ready", "B-start", "B-e0", "B-note", "B-e1"] + FOLLOWED[FOLLOWED.index("B-e2") :]
    )


def test_resuming_after_any_message_gives_exactly_the_rest() -> None:
    everything = Subscription(types=frozenset(MESSAGE_TYPES))
    feed, sent = _play({0: everything})
    full = sent[0]
    assert feed.labels(full) == FOLLOWED

    async def resume(since: int) -> list[dict[str, object]]:
        rest: list[dict[str, object]] = []
        task = await feed.connect(Subscription(since=since, types=everything.types), rest)
        task.cancel()
        return rest

    for k, message in enumerate(full):
        seq = message["seq"]
        assert isinstance(seq, int)
        rest = asyncio.run(resume(seq))
        assert feed.labels(rest) == feed.labels(full[k + 1 :]), f"since={seq} ({feed.labels([message])})"


def test_run_id_star_streams_every_run_from_the_oldest_running_runs_start() -> None:
    star = Subscription(run_id="*", types=frozenset(MESSAGE_TYPES))
    feed, sent = _play({0: star, 7: star})
    assert feed.labels(sent[0]) == [label for _, _, label in SCENARIO]
    assert feed.labels(sent[7]) == [label for _, _, label in SCENARIO]  # A started at the first event


# ---- the event hub restarted (issue 20) ------------------------------------------------------


def test_a_hub_restart_keeps_a_client_that_got_nothing_after_it_and_closes_one_that_did() -> None:
    hub = EventHub()
    hub.register_run("r", None)
    for i in range(6):
        hub.publish("r", "p", i, note(i))

    async def main() -> tuple[ClientConnection, ClientConnection, list[int]]:
        sent: list[int] = []

        async def send_text(text: str) -> None:
            sent.append(json.loads(text)["seq"])

        clients = [
            ClientConnection(Subscription(since=6, run_id="r"), LocalHubClient(hub), send_text)
            for _ in range(2)
        ]
        for conn in clients:
            conn.transition(ClientState.REPLAYING)
        tasks = [asyncio.create_task(c.stream()) for c in clients]
        await asyncio.sleep(0.05)  # both replayed up to seq 6 (nothing to send) and are live
        kept, closed = clients
        kept.offer(record(7, "r"))  # the dead hub's seq 7, queued, not sent yet
        kept.hub_restarted(restored_at=6)  # the store had up to 6: 7 may come again as another
        closed.hub_restarted(restored_at=4)  # this one was at 6: 5 and 6 may come again as others
        await asyncio.sleep(0.05)
        for task in tasks:
            task.cancel()
        return kept, closed, sent

    kept, closed, sent = asyncio.run(main())
    assert closed.close_request is not None and closed.close_request.code == CloseCode.HUB_RESTARTED
    assert closed.close_request.reason == "the event hub restarted; reconnect with ?since=4"
    assert kept.close_request is None and kept.state is ClientState.LIVE
    assert sent == []  # the stale seq 7 was dropped from the queue, never sent
