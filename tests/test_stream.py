"""The one follower of the hub: batches in seq order to every subscriber, interest, health, drain.

Driven over an in-process EventHub (``LocalHubClient``); the Ray client is the same code path
with ``.remote`` calls (tests/test_ws.py and tests/test_runner.py run it against the actor).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from orchestrator.events.hub import EventHub
from orchestrator.events.stream import Batch, EventStream, LocalHubClient, StreamThread

T = TypeVar("T")


def note(i: int) -> dict[str, Any]:
    return {"type": "notification", "level": "info", "kind": "test", "message": str(i)}


def publish(hub: EventHub, run_id: str, first: int, count: int) -> None:
    for i in range(first, first + count):
        hub.publish(run_id, "driver", i, note(i))


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    async def wait() -> None:
        while not check():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait(), timeout)


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(scenario(), 30))


class FlakyClient(LocalHubClient):
    """Fails the first ``failures[method]`` calls of each named hub method."""

    def __init__(self, hub: EventHub, **failures: int) -> None:
        super().__init__(hub)
        self.failures = failures

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.failures.get(method, 0) > 0:
            self.failures[method] -= 1
            raise ConnectionError(f"{method} unreachable")
        return await super()._call(method, *args, **kwargs)


def test_every_subscriber_gets_the_events_released_after_start_in_seq_order() -> None:
    hub = EventHub()
    publish(hub, "r", 0, 3)  # before the stream started: not delivered

    async def scenario() -> tuple[list[Batch], list[Batch], int]:
        stream = EventStream(LocalHubClient(hub), poll_timeout_s=5)
        first: list[Batch] = []
        second: list[Batch] = []
        stream.subscribe(first.append)
        stream.subscribe(second.append)
        await stream.start()
        publish(hub, "r", 3, 5)
        await until(lambda: sum(len(b.events) for b in first) == 5)
        await stream.stop()
        return first, second, stream.cursor

    first, second, cursor = run(scenario)
    assert [e.seq for b in first for e in b.events] == [4, 5, 6, 7, 8]
    assert first == second
    assert first[0].since == 3 and all(b.gap is None for b in first)
    assert cursor == 8


def test_a_stream_of_one_run_skips_the_others_and_still_advances() -> None:
    hub = EventHub()

    async def scenario() -> tuple[list[dict[str, Any]], int]:
        stream = EventStream(LocalHubClient(hub), run_id="b", poll_timeout_s=5)
        seen: list[dict[str, Any]] = []
        stream.subscribe(lambda batch: seen.extend(batch.events))
        await stream.start()
        publish(hub, "a", 0, 3)
        publish(hub, "b", 0, 1)
        await until(lambda: len(seen) == 1)
        assert await stream.drain(5)
        await stream.stop()
        return seen, stream.cursor

    seen, cursor = run(scenario)
    assert [(e.run_id, e.seq) for e in seen] == [("b", 4)]
    assert cursor == 4


def test_subscriptions_declare_their_types_at_once_and_while_polling() -> None:
    hub = EventHub()

    async def scenario() -> None:
        stream = EventStream(LocalHubClient(hub), poll_timeout_s=5)
        early = stream.subscribe(lambda batch: None, {"batch_progress"})
        await stream.start()  # declares what its subscribers take before the first poll
        assert hub.wanted() == {"batch_progress"}
        stream.subscribe(lambda batch: None, {"prediction_delta"})
        await until(lambda: "prediction_delta" in hub.wanted())  # no poll answered meanwhile
        assert stream.interest == {"batch_progress", "prediction_delta"}
        stream.retype(early, frozenset())
        assert stream.interest == {"prediction_delta"}
        stream.unsubscribe(early)
        await stream.stop()

    run(scenario)


def test_a_failing_subscriber_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    hub = EventHub()

    def broken(batch: Batch) -> None:
        raise RuntimeError("subscriber bug")

    async def scenario() -> list[int]:
        stream = EventStream(LocalHubClient(hub), poll_timeout_s=5)
        seen: list[int] = []
        stream.subscribe(broken)
        stream.subscribe(lambda batch: seen.extend(e.seq for e in batch.events))
        await stream.start()
        for i in range(3):
            publish(hub, "r", i, 1)
            await until(lambda: len(seen) == i + 1)  # noqa: B023 (called at once, inside the iteration)
        await stream.stop()
        return seen

    assert run(scenario) == [1, 2, 3]
    assert "a subscriber of the event stream failed" in caplog.text


def test_an_unreachable_hub_is_retried_and_a_lost_stretch_arrives_as_a_gap() -> None:
    hub = EventHub(max_events=3)
    publish(hub, "r", 0, 10)
    client = FlakyClient(hub, last_seq=1, poll=2)

    async def scenario() -> tuple[list[Batch], EventStream, list[tuple[bool, str | None]]]:
        stream = EventStream(client, poll_timeout_s=5, retry_delay_s=0.01)
        batches: list[Batch] = []
        stream.subscribe(batches.append)
        await stream.start()  # the hub does not answer: the stream starts from 0 and keeps trying
        health = [(stream.healthy, stream.last_error)]
        await until(lambda: bool(batches))
        health.append((stream.healthy, stream.last_error))
        await stream.stop()
        return batches, stream, health

    batches, stream, health = run(scenario)
    assert health == [(False, "ConnectionError: last_seq unreachable"), (True, None)]
    (batch,) = batches
    assert batch.since == 0 and batch.gap == 8  # the hub holds 8..10 only
    assert [e.seq for e in batch.events] == [8, 9, 10] and stream.cursor == 10


def test_drain_waits_for_what_the_hub_had_released_and_can_time_out() -> None:
    hub = EventHub()

    async def scenario() -> tuple[bool, bool, int]:
        stream = EventStream(LocalHubClient(hub), poll_timeout_s=5, batch_limit=2)
        seen: list[int] = []
        stream.subscribe(lambda batch: seen.extend(e.seq for e in batch.events))
        await stream.start()
        publish(hub, "r", 0, 7)  # more than one batch
        drained = await stream.drain(5)
        delivered = len(seen)
        await stream.stop()
        # starts behind the hub (its first question went unanswered) and can never poll
        stuck = EventStream(FlakyClient(hub, last_seq=1, poll=10**6), retry_delay_s=0.01)
        await stuck.start()
        late = await stuck.drain(0.2)
        await stuck.stop()
        return drained, late, delivered

    drained, late, delivered = run(scenario)
    assert drained is True and delivered == 7
    assert late is False


def test_a_stream_thread_follows_for_callers_without_a_loop() -> None:
    hub = EventHub()
    stream = EventStream(LocalHubClient(hub), poll_timeout_s=5)
    seen: list[tuple[int, str]] = []
    stream.subscribe(lambda b: seen.extend((e.seq, threading.current_thread().name) for e in b.events))
    follower = StreamThread(stream, name="test-follower")
    follower.start()
    try:
        publish(hub, "r", 0, 4)  # from this thread: the hub wakes the stream's loop
        assert follower.drain(5) is True
        assert seen == [(seq, "test-follower") for seq in range(1, 5)]
    finally:
        follower.stop()
    assert stream.cursor == 4


def test_the_local_client_reads_the_hub() -> None:
    hub = EventHub()
    hub.register_run("r", None)
    publish(hub, "r", 0, 2)
    client = LocalHubClient(hub)

    async def scenario() -> tuple[Any, ...]:
        return (
            await client.last_seq(),
            await client.running_runs(),
            await client.events_since(1),
            (await client.poll(0, 0, limit=1))["last_seq"],
        )

    last, active, (events, gap), cursor = run(scenario)
    assert last == 2 and active == [] and gap is None and cursor == 1
    assert [e.seq for e in events] == [2]
    assert client.ray_connected() is False


def test_arguments_are_checked() -> None:
    client = LocalHubClient(EventHub())
    with pytest.raises(ValueError, match="poll_timeout_s=0"):
        EventStream(client, poll_timeout_s=0)
    with pytest.raises(ValueError, match="batch_limit=0"):
        EventStream(client, batch_limit=0)

    async def twice() -> None:
        stream = EventStream(client)
        await stream.start()
        try:
            with pytest.raises(RuntimeError, match="already running"):
                await stream.start()
        finally:
            await stream.stop()

    run(twice)
