"""The EventHub as a named Ray actor: one per orchestrator namespace, pinned to the driver's node.

The actor is the plain ``EventHub`` class with two remote-only methods; ``ray.remote`` is applied
in ``get_or_create_hub``, so the same class runs in-process in a unit test.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, cast

from orchestrator.events.hub import Event, EventHub

if TYPE_CHECKING:
    from ray.actor import ActorHandle

__all__ = ["HUB_NAME", "NAMESPACE", "get_or_create_hub", "get_hub"]

HUB_NAME = "event_hub"
NAMESPACE = "forecast-orchestrator"

# get_or_create_hub: tries when the hub found is being destroyed, and how long to wait for one.
_HUB_GET_ATTEMPTS = 5
# The handles of the hubs this process created, by namespace: a hub that is not detached dies
# with its creator's last handle, so the creator keeps one for its lifetime.
_CREATED: dict[str, Any] = {}
_HUB_READY_TIMEOUT_S = 120.0


class _HubActor(EventHub):
    """The EventHub as a Ray actor. ``poll`` is async, so Ray makes it an async actor: every
    method runs on the actor's one event loop (sync methods included), so pollers await while
    publishes proceed, and ``max_concurrency`` bounds how many calls are in flight."""

    def publish_remote(self, run_id: str, producer: str, pseq: int, event: Event) -> int:
        """``publish`` for a remote producer (``HubPublisher``): returns how many events it
        released, not the events, which the producer never reads; sending a 100 KB
        ``prediction_delta`` back to the fold that sent it would double its cost."""
        return len(self.publish(run_id, producer, pseq, event))

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


def get_or_create_hub(namespace: str = NAMESPACE, **hub_kwargs: Any) -> ActorHandle[Any]:
    """The namespace's hub actor, created on first call (``hub_kwargs`` go to ``EventHub``).

    Needs ``ray.init`` done. The hub is pinned (hard node affinity) to the node of the calling
    driver, which is the head node in our deployments (the API / CLI process runs there). It
    takes no CPU (``num_cpus=0``) so it never holds back a fold. It is not detached: it belongs
    to the driver process that created it (which keeps its handle) and dies with it; a later
    driver creates a fresh hub (seq restarts at 1). When the hub exists already, ``hub_kwargs``
    are ignored, and an existing hub is found by name (milliseconds; creating takes 0.2-0.5 s).

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
    hub_class = ray.remote(_HubActor).options(
        name=HUB_NAME,
        namespace=namespace,
        get_if_exists=True,
        num_cpus=0,
        max_concurrency=1000,
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
