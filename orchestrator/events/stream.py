"""The one follower of the EventHub: long-polls it and hands each batch of released events to its subscribers.

Nothing else in the package polls the hub. ``HubClient`` reads the hub as awaitables, over the
Ray actor (``RayHubClient``: ``ObjectRef``s are awaitable, no thread is blocked) or an
in-process ``EventHub`` (``LocalHubClient``). ``EventStream`` follows it with one poll loop and
calls every subscriber with each ``Batch`` (never awaited: a subscriber that must do slow work
queues it). Each subscription names the types its subscriber passes on; the stream tells the
hub (at once for new ones, and with every poll), so producers skip optional live detail that
nobody receives. ``StreamThread`` runs a stream on its own thread and loop for synchronous
callers (the ``train`` runner, HPO); the API's stream is ``api.ws.fanout.EventPump`` (DESIGN 3).

Every answer names the hub that gave it. When that changes, the hub restarted (Ray brought it
back, rebuilt from its job store up to its ``restored_at`` seq): events the stream passed on
after that seq may have been released again under other seqs, so subscribers get a ``Batch``
with ``restart`` set and the stream goes on from ``restored_at``. Each answer also carries the
job store's health (``store_health``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, cast

from orchestrator.events.demand import INTEREST_GRACE_S
from orchestrator.events.hub import EventHub, HubIdentity, PollReply
from orchestrator.events.record import EventRecord
from orchestrator.store.health import HealthSnapshot

__all__ = [
    "HubClient",
    "RayHubClient",
    "LocalHubClient",
    "Batch",
    "BatchCallback",
    "Subscription",
    "EventStream",
    "StreamThread",
]

log = logging.getLogger(__name__)


class HubClient:
    """The hub's read side as awaitables; subclasses say how a method of the hub is called."""

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def ray_connected(self) -> bool:
        return False

    async def poll(
        self,
        since: int,
        timeout: float,
        run_id: str | None = None,
        *,
        types: frozenset[str] | None = None,
        limit: int | None = None,
        interest: frozenset[str] = frozenset(),
    ) -> PollReply:
        """Events after ``since``, waiting up to ``timeout`` for some (``EventHub.poll``)."""
        reply = await self._call("poll", since, timeout, run_id, types=types, limit=limit, interest=interest)
        return cast(PollReply, reply)

    async def note_interest(self, types: frozenset[str], hold_s: float) -> None:
        """Tell producers these types have a consumer for ``hold_s`` seconds."""
        await self._call("note_interest", types, hold_s)

    async def events_since(
        self,
        since: int,
        run_id: str | None = None,
        types: frozenset[str] | None = None,
        limit: int | None = None,
    ) -> tuple[list[EventRecord], int | None]:
        """Held events after ``since`` (at once) and the gap (oldest held seq) or None."""
        events, gap = await self._call("events_since", since, run_id, types, limit)
        return list(events), gap

    async def last_seq(self) -> int:
        return int(await self._call("last_seq"))

    async def whoami(self) -> HubIdentity:
        """Which hub answers (``EventHub.identity``)."""
        identity: HubIdentity = await self._call("whoami")
        return identity

    async def store_health(self) -> HealthSnapshot | None:
        """The hub's job store as its writer sees it (None without a store)."""
        health: HealthSnapshot | None = await self._call("store_health")
        return health

    async def running_runs(self, at: int | None = None) -> list[str]:
        """Ids of the runs running at seq ``at`` (default: now), oldest first (``EventHub.running_runs``)."""
        return list(await self._call("running_runs", at))


class RayHubClient(HubClient):
    """``HubClient`` over the EventHub actor (``orchestrator.events.actor.get_or_create_hub``)."""

    def __init__(self, handle: Any) -> None:
        self._hub = handle

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return await getattr(self._hub, method).remote(*args, **kwargs)

    def ray_connected(self) -> bool:
        import ray

        return bool(ray.is_initialized())


class LocalHubClient(HubClient):
    """``HubClient`` over an ``EventHub`` in this process (publishes may come from any thread)."""

    def __init__(self, hub: EventHub) -> None:
        self._hub = hub

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self._hub, method)(*args, **kwargs)
        return await result if inspect.isawaitable(result) else result


@dataclass(frozen=True, slots=True)
class Batch:
    """One answer of the hub: ``events`` after ``since`` in seq order (immutable records);
    ``gap`` is the oldest held seq when events right after ``since`` were lost, else None;
    ``restart`` is the seq a restarted hub continued from when events after it that were passed
    on may have changed (then ``events`` is empty and the stream goes on from there)."""

    since: int
    events: list[EventRecord]
    gap: int | None = None
    restart: int | None = None


BatchCallback = Callable[[Batch], None]


@dataclass(eq=False)
class Subscription:
    """A subscriber of the stream and the message types it passes on (``EventStream.retype``)."""

    on_batch: BatchCallback
    types: frozenset[str]


class EventStream:
    """Long-polls the hub (optionally one run's events only) and calls every subscriber with each
    non-empty batch, in seq order, on the stream's event loop. A failing poll is retried every
    ``retry_delay_s`` (``healthy``/``last_error`` say so); a failing subscriber is logged."""

    def __init__(
        self,
        hub: HubClient,
        *,
        run_id: str | None = None,
        poll_timeout_s: float = 10.0,
        batch_limit: int = 1000,
        retry_delay_s: float = 1.0,
    ) -> None:
        if poll_timeout_s <= 0:
            raise ValueError(f"poll_timeout_s must be > 0, got poll_timeout_s={poll_timeout_s}")
        if batch_limit < 1:
            raise ValueError(f"batch_limit must be >= 1, got batch_limit={batch_limit}")
        self.hub = hub
        self.run_id = run_id
        self.poll_timeout_s = poll_timeout_s
        self.batch_limit = batch_limit
        self.retry_delay_s = retry_delay_s
        self.cursor = 0
        self.healthy = False
        self.last_error: str | None = None
        self.hub_identity: HubIdentity | None = None  # of the hub that answered last
        self.restarts = 0  # hub restarts seen
        self.store_health: HealthSnapshot | None = None
        self._subscriptions: tuple[Subscription, ...] = ()
        self._lock = threading.Lock()  # subscribers may come and go from other threads
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._advanced: asyncio.Event | None = None
        self._notes: set[asyncio.Task[None]] = set()

    # ---- subscriptions (any thread) -------------------------------------------------------

    def subscribe(self, on_batch: BatchCallback, types: Iterable[str] = ()) -> Subscription:
        """Call ``on_batch`` with every batch from now on; ``types``: what it passes on."""
        subscription = Subscription(on_batch, frozenset())
        with self._lock:
            self._subscriptions += (subscription,)
        self.retype(subscription, types)
        return subscription

    def retype(self, subscription: Subscription, types: Iterable[str]) -> None:
        """Change the types a subscriber passes on; new ones are told to the hub at once (a run in
        progress starts producing them now, not at the next poll)."""
        with self._lock:
            new = frozenset(types) - self.interest
            subscription.types = frozenset(types)
        if new:
            self._note_soon(new)

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions = tuple(s for s in self._subscriptions if s is not subscription)

    @property
    def interest(self) -> frozenset[str]:
        """Every type some subscriber passes on: producers skip optional work for the others."""
        return frozenset().union(*(s.types for s in self._subscriptions))

    # ---- running (on the stream's loop) ---------------------------------------------------

    async def start(self) -> None:
        """Follow the hub from its current last event on (subscribers see what comes next)."""
        if self._task is not None:
            raise RuntimeError("the stream is already running")
        self._loop = asyncio.get_running_loop()
        self._advanced = asyncio.Event()
        try:
            self.cursor = await self.hub.last_seq()
            self.hub_identity = await self.hub.whoami()
            if self.interest:
                await self.hub.note_interest(self.interest, self.poll_timeout_s + INTEREST_GRACE_S)
            self.healthy = True
        except Exception as err:  # the hub may come up later: the loop keeps trying
            self._unhealthy(err)
        self._task = asyncio.create_task(self._run(), name="event-stream")

    async def stop(self) -> None:
        task, self._task, self._loop = self._task, None, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def drain(self, timeout: float) -> bool:
        """Wait until everything the hub released before this call was delivered (or
        ``timeout`` passed); True if it was. Call it once the producers have flushed."""
        assert self._advanced is not None, "start the stream first"
        deadline = time.monotonic() + timeout
        try:
            target = await asyncio.wait_for(self.hub.last_seq(), timeout)
        except Exception:
            return False
        while self.cursor < target:
            self._advanced.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._advanced.wait(), remaining)
        return True

    async def _run(self) -> None:
        while True:
            try:
                reply = await self.hub.poll(
                    self.cursor,
                    self.poll_timeout_s,
                    self.run_id,
                    limit=self.batch_limit,
                    interest=self.interest,
                )
            except asyncio.CancelledError:
                raise
            except Exception as err:
                self._unhealthy(err)
                await asyncio.sleep(self.retry_delay_s)
                continue
            if not self.healthy:
                log.info("event hub reachable again; resuming after seq %d", self.cursor)
            self.healthy = True
            self.last_error = None
            was, self.store_health = self.store_health, reply.get("store")
            self.store_reported(was)
            if self._restarted(reply["hub"]):
                continue
            if reply["events"] or reply["gap"] is not None:
                self._deliver(Batch(self.cursor, reply["events"], reply["gap"]))
            self.cursor = max(self.cursor, int(reply["last_seq"]))
            assert self._advanced is not None
            self._advanced.set()

    def _restarted(self, hub: HubIdentity) -> bool:
        """Whether the answer came from a hub that restarted since the last one, and the stream
        goes back to where it continued from (its reply is then not used)."""
        known, self.hub_identity = self.hub_identity, hub
        if known is None or known["id"] == hub["id"]:
            return False
        self.restarts += 1
        restored = int(hub["restored_at"])
        log.warning(
            "the event hub restarted (pid %s, then %s), rebuilt from its store up to seq %d; at seq %d here",
            *(known["pid"], hub["pid"], restored, self.cursor),
        )
        if self.cursor <= restored:
            return False  # nothing passed on was lost or can have changed
        self._deliver(Batch(self.cursor, [], None, restart=restored))
        self.cursor = restored
        return True

    def store_reported(self, was: HealthSnapshot | None) -> None:
        """The hub's answer said how its job store is (``store_health``; ``was``: the last
        answer's). Nothing here; the API's pump logs the changes (``api.ws.fanout``)."""

    def _deliver(self, batch: Batch) -> None:
        for subscription in self._subscriptions:
            try:
                subscription.on_batch(batch)
            except Exception:  # one subscriber's bug must not stop the stream for the others
                log.exception("a subscriber of the event stream failed on seq %d..", batch.since + 1)

    def _note_soon(self, types: frozenset[str]) -> None:
        loop = self._loop
        if loop is None:
            return  # not running: start() and every poll declare the interest
        with contextlib.suppress(RuntimeError):  # the loop just closed
            loop.call_soon_threadsafe(self._note_now, types)

    def _note_now(self, types: frozenset[str]) -> None:
        task = asyncio.create_task(self.hub.note_interest(types, self.poll_timeout_s + INTEREST_GRACE_S))
        self._notes.add(task)
        task.add_done_callback(self._noted)

    def _noted(self, task: asyncio.Task[None]) -> None:
        self._notes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("telling the hub about a subscriber's types failed: %s", task.exception())

    def _unhealthy(self, err: BaseException) -> None:
        text = f"{type(err).__name__}: {err}"
        if self.healthy or self.last_error is None:
            log.error("cannot poll the event hub (%s); retrying every %.1f s", text, self.retry_delay_s)
        self.healthy = False
        self.last_error = text


class StreamThread:
    """An ``EventStream`` on its own thread and event loop, for callers without a loop: ``start``
    returns once it follows the hub; subscribers are called on that thread."""

    def __init__(self, stream: EventStream, name: str = "event-stream") -> None:
        self.stream = stream
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 60.0) -> None:
        started: Future[None] = Future()
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._main(started),), name=self._name, daemon=True
        )
        self._thread.start()
        started.result(timeout)

    def drain(self, timeout: float) -> bool:
        """``EventStream.drain`` from this (another) thread."""
        assert self._loop is not None, "start the stream first"
        return asyncio.run_coroutine_threadsafe(self.stream.drain(timeout), self._loop).result()

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    async def _main(self, started: Future[None]) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            await self.stream.start()
        except BaseException as err:
            started.set_exception(err)
            raise
        started.set_result(None)
        try:
            await self._stop.wait()
        finally:
            await self.stream.stop()
