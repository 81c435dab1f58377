"""Where a fold can run and how many at a time: pure arithmetic over plain resource dicts.

A run is planned against a ``ClusterView``: each live node's resources, and the node types an
autoscaler may add. Before anything starts, the run fails with a ``ConfigError`` when no node
could ever host one fold (``fold_placement``); when only a node type still to be added fits, the
run starts and waits for the autoscaler. At most ``concurrency_limit`` folds are in flight: what
the cluster fits, or can scale to when it autoscales, capped by ``max_concurrent_folds``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from orchestrator.config import TrainConfig
from orchestrator.errors import ConfigError

__all__ = [
    "LAUNCHER_CONFIG_PATH",
    "ResourceShape",
    "NodeGroup",
    "ClusterView",
    "Placement",
    "fits_one_fold",
    "scale_up_types",
    "fold_placement",
    "reachable_resources",
    "concurrency_limit",
    "combined_fold_cap",
    "folds_within",
    "placement_timeout_message",
    "node_groups_from_cluster_config",
    "node_groups_from_launcher_config",
]

# ``ray up`` writes the head's autoscaling config here (the monitor's --autoscaling-config); Ray
# Tune reads the same path to tell a launcher-made cluster (ray.tune.execution.cluster_info).
LAUNCHER_CONFIG_PATH = "~/ray_bootstrap_config.yaml"


@dataclass(frozen=True)
class ResourceShape:
    """What one fold-trainer actor holds; actors are reused only for the same shape."""

    num_cpus: float
    num_gpus: float
    memory: int | None

    @classmethod
    def of(cls, config: TrainConfig) -> ResourceShape:
        memory = config.memory_per_fold_mb * 1024 * 1024 if config.memory_per_fold_mb else None
        return cls(config.cpus_per_fold, config.gpus_per_fold, memory)

    def options(self) -> dict[str, float]:
        """The resource options of ``ray.remote(...).options``."""
        opts: dict[str, float] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory:
            opts["memory"] = self.memory
        return opts

    def describe(self) -> str:
        text = f"cpus_per_fold={self.num_cpus:g}, gpus_per_fold={self.num_gpus:g}"
        if self.memory:
            text += f", memory_per_fold_mb={self.memory // 2**20}"
        return text


@dataclass(frozen=True)
class NodeGroup:
    """A node type the autoscaler may add (Ray's ``NodeGroupConfig``) and how many of it.

    ``max_count`` is -1 for no limit and 0 for a type that is never added.
    """

    name: str
    resources: Mapping[str, float]
    max_count: int


@dataclass(frozen=True)
class ClusterView:
    """What a run is planned against: each live node's resources, and the node types an
    autoscaler may add (None when nothing says the cluster autoscales) with the cluster-wide
    caps on what it may add (``max_resources``, where given)."""

    live_nodes: tuple[Mapping[str, float], ...]
    node_groups: tuple[NodeGroup, ...] | None = None
    max_resources: Mapping[str, float] = field(default_factory=dict)


class Placement(enum.Enum):
    """Where one fold can be placed when its run starts."""

    LIVE_NODE = "live_node"  # a node that is up has room for one fold (maybe not free now)
    AFTER_SCALE_UP = "after_scale_up"  # only a node type the autoscaler may add has room


def fits_one_fold(shape: ResourceShape, resources: Mapping[str, float]) -> bool:
    """True when a node with ``resources`` in all could host one fold of ``shape``."""
    return (
        resources.get("CPU", 0) >= shape.num_cpus
        and resources.get("GPU", 0) >= shape.num_gpus
        and (not shape.memory or resources.get("memory", 0) >= shape.memory)
    )


def scale_up_types(shape: ResourceShape, view: ClusterView) -> list[str]:
    """The node types the autoscaler may add that could host one fold of ``shape``."""
    return [
        group.name
        for group in view.node_groups or ()
        if group.max_count != 0 and fits_one_fold(shape, group.resources)
    ]


def fold_placement(shape: ResourceShape, view: ClusterView) -> Placement:
    """Where a fold of ``shape`` can run; ConfigError when no node, live or to come, ever can."""
    if any(fits_one_fold(shape, node) for node in view.live_nodes):
        return Placement.LIVE_NODE
    if scale_up_types(shape, view):
        return Placement.AFTER_SCALE_UP
    raise ConfigError(
        f"no node of the Ray cluster can host a fold with {shape.describe()}: its live nodes "
        f"have [{', '.join(_resource_text(node, shape) for node in view.live_nodes)}]"
        f"{_node_groups_text(shape, view)}"
    )


def _resource_text(resources: Mapping[str, float], shape: ResourceShape) -> str:
    """``{'CPU': 4, 'GPU': 0}``: the resources a fold asks for (memory in MB when it does)."""
    amounts = {key: resources.get(key, 0) for key in ("CPU", "GPU")}
    if shape.memory:
        amounts["memory_mb"] = resources.get("memory", 0) / 2**20
    return "{" + ", ".join(f"'{key}': {value:g}" for key, value in amounts.items()) + "}"


def _node_groups_text(shape: ResourceShape, view: ClusterView) -> str:
    if view.node_groups is None:
        return (
            "; no autoscaler node types are known (no cluster config in the GCS, no "
            f"{LAUNCHER_CONFIG_PATH} on this node), so only the live nodes count"
        )
    if not view.node_groups:
        return "; the autoscaler has no node types to add"
    groups = ", ".join(
        f"{g.name} ({'no limit' if g.max_count < 0 else f'up to {g.max_count} nodes'}): "
        f"{_resource_text(g.resources, shape)}"
        for g in view.node_groups
    )
    return f"; the node types the autoscaler may add have {groups}"


def reachable_resources(view: ClusterView) -> dict[str, float]:
    """Per resource, the larger of what the live nodes have and what the node types can scale
    to (inf for a type without a limit), like Ray's ``get_max_resources_from_cluster_config``."""
    live: dict[str, float] = {}
    for node in view.live_nodes:
        for key, amount in node.items():
            live[key] = live.get(key, 0.0) + amount
    if view.node_groups is None:
        return live
    scaled: dict[str, float] = {}
    for group in view.node_groups:
        for key, amount in group.resources.items():
            if group.max_count == 0 or amount <= 0:
                continue
            more = math.inf if group.max_count < 0 else group.max_count * amount
            scaled[key] = scaled.get(key, 0.0) + more
    for key, cap in view.max_resources.items():
        if key in scaled:
            scaled[key] = min(scaled[key], cap)
    return {key: max(live.get(key, 0.0), scaled.get(key, 0.0)) for key in live.keys() | scaled}


def concurrency_limit(
    shape: ResourceShape, totals: Mapping[str, float], n_folds: int, max_concurrent: int | None
) -> int:
    """How many folds may be in flight: what ``totals`` fit, at least 1, capped by ``n_folds``
    and ``max_concurrent``."""
    limit = min(n_folds, folds_within(totals.get("CPU", 0.0), shape.num_cpus, n_folds))
    if shape.num_gpus:
        limit = min(limit, folds_within(totals.get("GPU", 0.0), shape.num_gpus, n_folds))
    limit = max(1, limit)
    if max_concurrent:
        limit = min(limit, max_concurrent)
    return limit


def combined_fold_cap(caps: Sequence[int | None]) -> int | None:
    """The fold concurrency of runs trained in one call, each admitted with its own
    ``max_concurrent_folds`` (``caps``): their sum, or None (no cap) when one of them has none."""
    return None if None in caps else sum(cap or 0 for cap in caps)


def folds_within(total: float, per_fold: float, most: int) -> int:
    """How many folds asking ``per_fold`` of a resource ``total`` holds, at most ``most`` (all of
    them when the fold asks none or the total has no limit)."""
    if not per_fold or math.isinf(total):
        return most
    # total / per_fold, not total // per_fold: 1.0 // 0.1 == 9.0 in floating point
    return min(most, math.floor(total / per_fold + 1e-9))


def placement_timeout_message(
    fold_id: int,
    waited: float,
    timeout: float,
    shape: ResourceShape,
    free: Mapping[str, float],
    scale_up: Iterable[str],
) -> str:
    """Why a fold's worker found no place in time, naming the autoscaler when one was awaited."""
    text = (
        f"the worker of fold {fold_id} was not up after {waited:.0f} s "
        f"(placement_timeout_s={timeout:g}): each fold needs {shape.describe()} "
        f"and the cluster has {_resource_text(free, shape)} free"
    )
    types = list(scale_up)
    if types:
        text += (
            f"; the autoscaler did not provide a node of type {' or '.join(types)} in time "
            f"(a new cloud node takes minutes to start: raise placement_timeout_s to cover it)"
        )
    return text


class _NodeGroupConfig(Protocol):
    """The fields read of Ray's ``autoscaler_pb2.NodeGroupConfig``."""

    name: str
    max_count: int
    resources: Mapping[str, float]


class _ClusterConfig(Protocol):
    """The fields read of Ray's ``autoscaler_pb2.ClusterConfig``."""

    node_group_configs: Iterable[_NodeGroupConfig]
    max_resources: Mapping[str, float]


def node_groups_from_cluster_config(
    config: _ClusterConfig,
) -> tuple[tuple[NodeGroup, ...], dict[str, float]]:
    """Ray's ``autoscaler_pb2.ClusterConfig`` (what an autoscaler reports to the GCS) as plain
    node groups and cluster-wide caps."""
    groups = tuple(
        NodeGroup(
            name=g.name,
            resources={key: float(amount) for key, amount in g.resources.items()},
            max_count=int(g.max_count),
        )
        for g in config.node_group_configs
    )
    return groups, {key: float(amount) for key, amount in config.max_resources.items()}


def node_groups_from_launcher_config(config: Mapping[str, Any]) -> tuple[NodeGroup, ...]:
    """The worker node types of a cluster launcher config (``ray up``'s YAML), mapped as Ray's
    autoscaler maps them into a ``ClusterConfig``: the head type left out (it is never added),
    a type's ``max_workers`` defaulting to, and capped by, the cluster's ``max_workers``."""
    head = config.get("head_node_type")
    cluster_max = config.get("max_workers")
    groups = []
    for name, spec in (config.get("available_node_types") or {}).items():
        if name == head:
            continue
        count = int(spec.get("max_workers", -1 if cluster_max is None else cluster_max))
        if cluster_max is not None:
            count = int(cluster_max) if count < 0 else min(count, int(cluster_max))
        resources = {key: float(amount) for key, amount in (spec.get("resources") or {}).items()}
        groups.append(NodeGroup(name=str(name), resources=resources, max_count=count))
    return tuple(groups)
