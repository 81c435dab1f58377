"""The EventHub as a named Ray actor: one per orchestrator namespace, pinned to the driver's node.

The actor is the plain ``EventHub`` class with a few remote-only methods; ``ray.remote`` is
applied in ``get_or_create_hub``, so the same class runs in-process in a unit test. A hub with a
job store survives its process (``kill -9``, a crash): Ray restarts it (``max_restarts``), it
rebuilds its runs from the store (``durable.restore_runs``), and every call that was in flight
is retried by Ray on the new process (``max_task_retries``). A publish is acknowledged only once
its events are past the producer's order and written to the store, so a call the dead hub had
taken but not stored is retried, and the rebuilt hub recognises by its pseq what it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import warnings
from typing import TYPE_CHECKING, Any, cast

from orchestrator.events.hub import EventHub
from orchestrator.events.record import Payload

if TYPE_CHECKING:
    from ray.actor import ActorHandle

__all__ = ["HUB_NAME", "NAMESPACE", "get_or_create_hub", "get_hub", "hub_for_store"]

log = logging.getLogger(__name__)

HUB_NAME = "event_hub"
NAMESPACE = "forecast-orchestrator"

# get_or_create_hub: tries when the hub found is being destroyed, and how long to wait for one.
_HUB_GET_ATTEMPTS = 5
# The handles of the hubs this process created, by namespace: a hub that is not detached dies
# with its creator's last handle, so the creator keeps one for its lifetime.
_CREATED: dict[str, Any] = {}
_HUB_READY_TIMEOUT_S = 120.0
# A publish is acknowledged at the latest after this long, even when its events wait for earlier
# ones that never come or the store does not answer (then they are only in the hub's memory).
_ACK_TIMEOUT_S = 30.0
_SETTLE_POLL_S = 0.01


class _HubActor(EventHub):
    """The EventHub as a Ray actor. ``poll`` is async, so Ray makes it an async actor: every
    method runs on the actor's one event loop (sync methods included), so pollers await while
    publishes proceed, and ``max_concurrency`` bounds how many calls are in flight.

    With a ``store_url`` the hub takes the job store's lease, writes its journal there and
    continues its ``seq``; runs the store still had unfinished are marked interrupted, unless Ray
    restarted this hub: then they are its own, rebuilt from the store, and go on."""

    def __init__(self, store_url: str | None = None, **hub_kwargs: Any) -> None:
        import ray

        from orchestrator.events.durable import mark_interrupted, restore_runs
        from orchestrator.events.recorder import open_recorder

        self._store = None if store_url is None else open_recorder(store_url)
        super().__init__(recorder=self._store, **hub_kwargs)
        if self._store is None:
            return
        with warnings.catch_warnings():  # Ray 2.60 warns from inside its own property
            warnings.simplefilter("ignore")
            restarted = ray.get_runtime_context().was_current_actor_reconstructed
        if restarted:
            restore_runs(self, self._store.store, recent=hub_kwargs.get("max_runs", 20))
        else:
            mark_interrupted(self, self._store.store)

    def flush_store(self, timeout: float = 10.0) -> bool:
        """Wait until every released event is in the job store (True at once without one)."""
        return self._store is None or self._store.flush(timeout)

    def store_info(self) -> dict[str, str] | None:
        """The job store this hub writes (``url``) and its lease ``owner``, or None."""
        if self._store is None:
            return None
        return {"url": self._store.store.url, "owner": self._store.owner}

    def close_store(self) -> None:
        """Write what is queued and give the store's lease up (the hub then records nothing more)."""
        if self._store is not None:
            self._store.close()

    async def publish_remote(self, run_id: str, producer: str, pseq: int, event: Payload) -> int:
        """``publish`` for a remote producer (``HubPublisher``): returns, once the event is safe
        (``_acknowledge``), how many events it released, not the events, which the producer never
        reads; sending a 100 KB ``prediction_delta`` back to the fold that sent it would double
        its cost."""
        released = len(self.publish(run_id, producer, pseq, event))
        await self._acknowledge(run_id, producer, pseq)
        return released

    async def publish_batch_remote(self, run_id: str, producer: str, items: list[tuple[int, Payload]]) -> int:
        """``publish_remote`` for several (pseq, event) of one producer in one call (a
        ``HubPublisher``'s batch): one actor call instead of one per event."""
        self.note_batch()
        released = sum(len(self.publish(run_id, producer, pseq, event)) for pseq, event in items)
        if items:
            await self._acknowledge(run_id, producer, max(pseq for pseq, _ in items))
        return released

    async def _acknowledge(self, run_id: str, producer: str, pseq: int) -> None:
        """Return once the producer's events up to ``pseq`` are past its order (released or
        dropped, none waiting for an earlier one) and, with a store, written there: until then a
        hub killed mid-way has the call retried by Ray, so nothing it took is lost. A store that
        fails does not hold producers up (``StoreRecorder.durable``)."""
        deadline = time.monotonic() + _ACK_TIMEOUT_S
        while not self.settled(run_id, producer, pseq) and time.monotonic() < deadline:
            await asyncio.sleep(_SETTLE_POLL_S)  # rare: Ray delivered a later call first
        if self._store is not None:
            await self._store.durable(self._store.queued, max(deadline - time.monotonic(), 0.1))

    def runtime_info(self) -> dict[str, Any]:
        """Where the hub runs: node id, actor id, assigned resources, pid."""
        import ray

        context = ray.get_runtime_context()
        return {
            "node_id": context.get_node_id(),
            "actor_id": context.get_actor_id(),
            "assigned_resources": context.get_assigned_resources(),  # type: ignore[no-untyped-call]
            "pid": os.getpid(),
        }


def get_or_create_hub(
    namespace: str = NAMESPACE, *, detached: bool = False, **hub_kwargs: Any
) -> ActorHandle[Any]:
    """The namespace's hub actor, created on first call (``hub_kwargs`` go to ``_HubActor``).

    Needs ``ray.init`` done. The hub is pinned (hard node affinity) to the node of the calling
    driver, which is the head node in our deployments (the API / CLI process runs there). It
    takes no CPU (``num_cpus=0``) so it never holds back a fold. Not ``detached``, it belongs
    to the driver that created it and dies with it; ``detached`` (``serve --address``), it lives
    as long as the Ray cluster, and a later driver reattaches to it. When the hub exists
    already, ``hub_kwargs`` are ignored, and an existing hub is found by name (milliseconds;
    creating takes 0.2-0.5 s); the process that created a hub keeps a handle to it.

    Returns once the hub answers. A hub whose last handle has just been dropped is being
    destroyed, yet ``get_if_exists`` may still hand it out: then a fresh one is created.
    """
    import ray
    from ray.exceptions import RayActorError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    try:  # the common case, an existing hub: a name lookup, where creating asks the GCS more
        existing: Any = ray.get_actor(HUB_NAME, namespace=namespace)
        ray.get(existing.last_seq.remote(), timeout=_HUB_READY_TIMEOUT_S)
        return cast("ActorHandle[Any]", existing)
    except (ValueError, RayActorError):  # none yet, or one being destroyed
        pass
    driver_node = ray.get_runtime_context().get_node_id()
    # with a store, a dead hub comes back rebuilt and the calls in flight are retried; without
    # one it could not rebuild anything, so it stays dead
    restarts = -1 if hub_kwargs.get("store_url") else 0
    hub_class = ray.remote(_HubActor).options(
        name=HUB_NAME,
        namespace=namespace,
        get_if_exists=True,
        lifetime="detached" if detached else None,
        num_cpus=0,
        max_concurrency=1000,
        max_restarts=restarts,
        max_task_retries=restarts,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=driver_node, soft=False),
    )
    for attempt in range(_HUB_GET_ATTEMPTS):
        handle: Any = hub_class.remote(**hub_kwargs)
        try:
            ray.get(handle.last_seq.remote(), timeout=_HUB_READY_TIMEOUT_S)
        except RayActorError:
            if attempt + 1 == _HUB_GET_ATTEMPTS:
                raise
            time.sleep(0.1 * (attempt + 1))  # until the GCS has freed the dead hub's name
            continue
        _CREATED[namespace] = handle  # the hub lives as long as this process, not this call
        return cast("ActorHandle[Any]", handle)
    raise AssertionError("unreachable")


def get_hub(namespace: str = NAMESPACE) -> ActorHandle[Any]:
    """The existing hub of a namespace (raises ValueError from Ray when there is none)."""
    import ray

    return ray.get_actor(HUB_NAME, namespace=namespace)


def hub_for_store(
    store_url: str, *, detached: bool, reattach: bool = True, namespace: str = NAMESPACE
) -> ActorHandle[Any]:
    """The namespace's hub writing the job store at ``store_url``: the running one (a detached hub
    that outlived its server) if ``reattach``, else a new one that takes the store's lease.

    Raises ``StoreError`` when the running hub writes another store (or none), and
    ``LeaseHeldError`` naming the holder when another live writer holds the store (the running
    hub itself when not ``reattach``: a ``train`` command beside a server).
    """
    import ray
    from ray.exceptions import RayActorError

    from orchestrator.errors import StoreError
    from orchestrator.store import JobStore
    from orchestrator.store.engine import describe
    from orchestrator.store.lease import LeaseHeldError, refuse_if_held

    running: Any = None
    try:
        running = get_hub(namespace)
    except ValueError:
        pass
    if running is not None:
        info = cast("dict[str, str] | None", ray.get(running.store_info.remote()))
        if info is None and not reattach:  # this driver's own hub, made without a store: use it
            with contextlib.closing(JobStore.open(store_url)) as store:
                refuse_if_held(store.lease_holder())
            log.warning(
                "the event hub of namespace %r writes no job store: this command's events "
                "are not recorded in %s",
                namespace,
                describe(store_url),
            )
            return cast("ActorHandle[Any]", running)
        if info is None or info["url"] != store_url:
            where = "no job store" if info is None else f"the job store {describe(info['url'])}"
            raise StoreError(
                f"the event hub running in Ray namespace {namespace!r} writes {where}, "
                f"not {describe(store_url)}; pass its --db or stop it"
            )
        if not reattach:
            raise LeaseHeldError(
                f"the job store {describe(store_url)} is in use by the event hub of a server "
                f"({info['owner']}); send this work to it (POST /train, POST /hpo) or use another --db"
            )
        return cast("ActorHandle[Any]", running)
    with contextlib.closing(JobStore.open(store_url)) as store:
        refuse_if_held(store.lease_holder())
    try:
        return get_or_create_hub(namespace, detached=detached, store_url=store_url)
    except RayActorError as err:
        reason = [line for line in str(err).splitlines() if "Error:" in line][-1:] or [str(err)]
        raise StoreError(
            f"the event hub could not open the job store {describe(store_url)}: {reason[0].strip()}"
        ) from None
