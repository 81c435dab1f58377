"""What the Ray cluster has, read from Ray: the one module that touches Ray's internals.

``ensure_ray`` connects; ``cluster_view`` reads the live nodes and the node types an autoscaler
may add (the ``ClusterConfig`` it reports to the GCS, else ``ray up``'s launcher config on the
head); ``is_placed`` asks the GCS actor table whether an actor got a worker process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import ray
import yaml

from orchestrator.execution.placement import (
    LAUNCHER_CONFIG_PATH,
    ClusterView,
    NodeGroup,
    node_groups_from_cluster_config,
    node_groups_from_launcher_config,
)
from orchestrator.execution.watchdog import start_watchdog
from orchestrator.events.actor import NAMESPACE

__all__ = ["ensure_ray", "cluster_view", "cluster_resources", "free_resources", "is_placed"]

log = logging.getLogger(__name__)


def ensure_ray(address: str | None = None, **init_kwargs: Any) -> None:
    """Join ``address`` (or RAY_ADDRESS), else start a local instance; no-op if connected.

    Without an address this starts a new instance (``address="local"``): a bare ``ray.init()``
    would join whatever cluster ``ray start`` left running on the machine, someone else's too.
    That instance is this process's own, so a watchdog ends it if the process dies without
    shutting it down (``kill -9``), orphaned agents included (``execution.watchdog``).
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    kwargs: dict[str, Any] = {"namespace": NAMESPACE, "ignore_reinit_error": True}
    if address == "local":
        kwargs["include_dashboard"] = False
    kwargs.update(init_kwargs)
    if address == "local":
        start_watchdog()  # before the instance exists: it sees each of its processes appear
    ray.init(address=address, **kwargs)


def cluster_view() -> ClusterView:
    """The live nodes' resources and the node types the autoscaler may add, now."""
    nodes = cast(Callable[[], list[dict[str, Any]]], ray.nodes)()  # untyped in Ray
    live = tuple(dict(node.get("Resources", {})) for node in nodes if node.get("Alive"))
    groups, caps = _node_groups()
    return ClusterView(live, groups, caps)


def cluster_resources() -> dict[str, float]:
    """What the cluster has in all (live nodes), e.g. ``{"CPU": 2.0, "GPU": 1.0}``."""
    return cast(Callable[[], dict[str, float]], ray.cluster_resources)()  # untyped in Ray


def free_resources() -> dict[str, float]:
    """What the cluster has free now (an approximation: the GCS view lags a little)."""
    return cast(Callable[[], dict[str, float]], ray.available_resources)()  # untyped in Ray


def is_placed(actor: Any) -> bool:
    """True once Ray has given the actor a worker process (its __init__ may still be running)."""
    try:
        from ray._private import state  # the GCS actor table: no dashboard needed

        info = state.actors(actor._actor_id.hex())
        return bool(info and info.get("Pid"))
    except Exception:  # an API change: fall back to placement_timeout_s alone
        return False


def _node_groups() -> tuple[tuple[NodeGroup, ...] | None, dict[str, float]]:
    """The node types the autoscaler may add, and its caps; None when nothing says.

    First the ``ClusterConfig`` an autoscaler reports to the GCS (what Ray Train and Ray Data
    read). Ray 2.60's own autoscaler reports none (later versions' v2 autoscaler does), so next
    the launcher config ``ray up`` leaves on the head, where the driver of a launched cluster
    runs (docs/cluster.md).
    """
    try:
        from ray._private.state import state  # the GCS internal KV: no dashboard needed

        reported = state.get_cluster_config()
    except Exception:  # an API change: fall back to the launcher config
        log.debug("could not read the autoscaler's cluster config", exc_info=True)
        reported = None
    if reported is not None:
        return node_groups_from_cluster_config(reported)
    path = Path(LAUNCHER_CONFIG_PATH).expanduser()
    if not path.is_file():
        return None, {}
    try:
        launcher = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        log.warning("ignoring the launcher config %s: %s", path, err)
        return None, {}
    if not isinstance(launcher, dict):
        return None, {}
    return node_groups_from_launcher_config(launcher), {}
