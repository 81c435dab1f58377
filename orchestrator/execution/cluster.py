"""What the Ray cluster has, read from Ray: the one module that touches Ray's internals.

``ensure_ray`` connects; ``cluster_view`` reads the live nodes and the node types an autoscaler
may add (the ``ClusterConfig`` it reports to the GCS, else ``ray up``'s launcher config on the
head); ``is_placed`` asks the GCS actor table whether an actor got a worker process.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import ray
import yaml

from orchestrator.events.actor import NAMESPACE
from orchestrator.execution.connect import ClusterUnreachableError, advice, bounded_join, probe_gcs
from orchestrator.execution.placement import (
    LAUNCHER_CONFIG_PATH,
    ClusterView,
    NodeGroup,
    node_groups_from_cluster_config,
    node_groups_from_launcher_config,
)
from orchestrator.execution.watchdog import start_watchdog, wait_ready

__all__ = [
    "ensure_ray",
    "exit_leaving_own_instance",
    "cluster_view",
    "cluster_resources",
    "free_resources",
    "is_placed",
]

log = logging.getLogger(__name__)

# The watchdog of the local instance this process started, if it did (``ensure_ray``).
_OWN_INSTANCE: list[subprocess.Popen[bytes]] = []


def ensure_ray(
    address: str | None = None, *, connect_deadline_s: float | None = None, **init_kwargs: Any
) -> None:
    """Join ``address`` (or RAY_ADDRESS), else start a local instance; no-op if connected.

    Without an address this starts a new instance (``address="local"``): a bare ``ray.init()``
    would join whatever cluster ``ray start`` left running on the machine, someone else's too.
    That instance is this process's own, so a watchdog ends it if the process dies without
    shutting it down (``kill -9``), orphaned agents included (``execution.watchdog``).

    With an address, the cluster's GCS is probed first (``execution.connect``):
    ``ClusterUnreachableError`` naming the address and what to do when nothing answers.
    ``connect_deadline_s`` (the commands: ``CONNECT_DEADLINE_S``) ends the process when the
    join then hangs, or on SIGTERM meanwhile.
    """
    if ray.is_initialized():
        return
    source = "--address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    kwargs: dict[str, Any] = {"namespace": NAMESPACE, "ignore_reinit_error": True}
    if address == "local":
        kwargs["include_dashboard"] = False
    kwargs.update(init_kwargs)
    if address != "local":
        host, port = _gcs_host_port(address, source)
        probe_gcs(host, port, address, source)
        with bounded_join(connect_deadline_s, address, source):
            ray.init(address=address, **kwargs)
        return
    # Started before the instance exists, it sees each of its processes appear; it comes up
    # while Ray starts, and is ready before this returns.
    watchdog = start_watchdog()
    ray.init(address=address, **kwargs)
    if wait_ready(watchdog):
        _OWN_INSTANCE.append(watchdog)
    else:
        log.warning("the Ray watchdog did not start: a kill -9 may leave Ray processes behind")


def _gcs_host_port(address: str, source: str) -> tuple[str, int]:
    """Where ``ray.init(address)`` connects: Ray's own resolution (``auto``: the last cluster
    ``ray start`` recorded; a local host name: this node's IP); ``ray://host:port`` as written."""
    from ray._private import services

    try:
        if "://" in address:
            resolved = address.split("://", 1)[1].split("/", 1)[0]
        else:
            resolved = services.canonicalize_bootstrap_address(address) or ""
        host, _, port = resolved.rpartition(":")
        return host.strip("[]"), int(port)
    except ConnectionError:  # "auto" and no cluster recorded or running on this machine
        raise ClusterUnreachableError(
            f"no running Ray cluster found on this machine for address {address!r} (from "
            f"{source}); {advice(address, source)}"
        ) from None
    except ValueError:
        raise ClusterUnreachableError(
            f"{source}={address!r} is not a Ray address (host:port, auto, or ray://host:port)"
        ) from None


def exit_leaving_own_instance(code: int) -> None:
    """End this process now with ``code`` when it started its own local Ray instance (``ensure_ray``
    without an address) and its watchdog runs: the watchdog stops the instance in the background
    once this process is gone, where Ray's own shutdown at exit makes a one-shot command wait
    about 1.5 s more. Returns (does nothing) otherwise. Call it only when all work is written."""
    if not _OWN_INSTANCE or _OWN_INSTANCE[-1].poll() is not None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


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
