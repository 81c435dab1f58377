"""What the API knows of the EventHub: a small read-only subscribe interface.

``HubClient`` is the protocol the app is built against. ``RayHubClient`` implements it over the
hub's Ray actor handle (Ray ``ObjectRef``s are awaitable, so no thread is blocked on a call);
``LocalHubClient`` over an in-process ``EventHub`` (tests, embedding).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from orchestrator.hub import EventHub

__all__ = ["HubClient", "RayHubClient", "LocalHubClient", "Event"]

Event = dict[str, Any]


class HubClient(Protocol):
    async def poll(
        self,
        since: int,
        timeout: float,
        run_id: str | None = None,
        *,
        types: frozenset[str] | None = None,
        limit: int | None = None,
        interest: frozenset[str] = frozenset(),
    ) -> dict[str, Any]:
        """``{"events", "last_seq", "gap"}``: events after ``since``, waiting up to ``timeout``;
        ``interest``: the types this caller delivers (``EventHub.poll``)."""
        ...

    async def note_interest(self, types: frozenset[str], hold_s: float) -> None:
        """Tell producers these types have a consumer for ``hold_s`` seconds."""
        ...

    async def events_since(
        self,
        since: int,
        run_id: str | None = None,
        types: frozenset[str] | None = None,
        limit: int | None = None,
    ) -> tuple[list[Event], int | None]:
        """Held events after ``since`` (at once) and the gap (oldest held seq) or None."""
        ...

    async def last_seq(self) -> int: ...

    async def active_run(self) -> str | None: ...

    def ray_connected(self) -> bool: ...


class RayHubClient:
    """``HubClient`` over the EventHub actor (``orchestrator.hub.get_or_create_hub``)."""

    def __init__(self, handle: Any) -> None:
        self._hub = handle

    async def poll(
        self,
        since: int,
        timeout: float,
        run_id: str | None = None,
        *,
        types: frozenset[str] | None = None,
        limit: int | None = None,
        interest: frozenset[str] = frozenset(),
    ) -> dict[str, Any]:
        reply: dict[str, Any] = await self._hub.poll.remote(
            since, timeout, run_id, types=types, limit=limit, interest=interest
        )
        return reply

    async def note_interest(self, types: frozenset[str], hold_s: float) -> None:
        await self._hub.note_interest.remote(types, hold_s)

    async def events_since(
        self,
        since: int,
        run_id: str | None = None,
        types: frozenset[str] | None = None,
        limit: int | None = None,
    ) -> tuple[list[Event], int | None]:
        events, gap = await self._hub.events_since.remote(since, run_id, types, limit)
        return list(events), gap

    async def last_seq(self) -> int:
        return int(await self._hub.last_seq.remote())

    async def active_run(self) -> str | None:
        run_id: str | None = await self._hub.active_run.remote()
        return run_id

    def ray_connected(self) -> bool:
        import ray

        return bool(ray.is_initialized())


class LocalHubClient:
    """``HubClient`` over an ``EventHub`` in this process (publishes may come from any thread)."""

    def __init__(self, hub: EventHub) -> None:
        self._hub = hub

    async def poll(
        self,
        since: int,
        timeout: float,
        run_id: str | None = None,
        *,
        types: frozenset[str] | None = None,
        limit: int | None = None,
        interest: frozenset[str] = frozenset(),
    ) -> dict[str, Any]:
        return await self._hub.poll(
            since, timeout, run_id, types=types, limit=limit, interest=interest
        )

    async def note_interest(self, types: frozenset[str], hold_s: float) -> None:
        self._hub.note_interest(types, hold_s)

    async def events_since(
        self,
        since: int,
        run_id: str | None = None,
        types: frozenset[str] | None = None,
        limit: int | None = None,
    ) -> tuple[list[Event], int | None]:
        return self._hub.events_since(since, run_id, types, limit)

    async def last_seq(self) -> int:
        return self._hub.last_seq()

    async def active_run(self) -> str | None:
        return self._hub.active_run()

    def ray_connected(self) -> bool:
        return False
