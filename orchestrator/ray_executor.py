"""Folds in parallel on Ray: warm fold-trainer actors, retries of dead workers, cancellation.

``FoldTrainer`` is a plain class; ``ray.remote`` is applied here, with the fold's resources from
the config. Actors are kept in a ``WorkerPool`` keyed by their resource shape and reused by later
runs and HPO trials, so a second run does not pay process start and ``import torch`` again.
The dataset is put in the object store once per run; every fold gets a reference.

How a run's folds end up on actors (``_FoldRun``):

- before anything starts, the run fails with a ConfigError when no node could ever host one
  fold: none of the live nodes, and none of the node types an autoscaler may add (the cluster
  config it reports to the GCS, else ``ray up``'s launcher config on the head). When only a node
  type to be added fits, the run starts anyway (a ``notification`` of kind ``autoscaling`` says
  so) and its workers wait for the autoscaler within ``placement_timeout_s``, like any other;
- at most ``limit`` folds are in flight (what the cluster fits, or can scale to when it
  autoscales, capped by ``max_concurrent_folds``); each goes through *starting* (a ``ping``
  that returns once the actor is up) and *training* (``FoldTrainer.run``). Actors belong to the
  run until it ends, and a finished fold's actor takes the next pending fold, or one still
  waiting for a new actor. A worker that gets no place within ``placement_timeout_s`` fails the
  run, unless the run's own folds hold what the cluster has left (a node was lost): then the
  fold waits for them;
- a worker process that dies (kill -9, OOM, node loss) fails its attempt: the fold goes back to
  the front of the queue on a fresh actor, from the start (seeded, so the repeated epochs equal
  the lost ones and the hub drops them as duplicates), and a ``notification`` of kind
  ``fold_retry`` names the fold and the attempt. Past ``max_retries`` the run fails naming the
  fold. A Python exception inside a fold is not retried: it fails the run with its message;
- whatever ends the run early (a failure, a cancel), the folds still training are asked to stop
  at their next epoch, given ``CANCEL_GRACE_S``, then killed; their producers are closed in the
  hub before ``run_folds`` returns, so no fold event can arrive after the run's terminal event;
- when the run completes (or fails), its healthy actors go back to the pool; after a cancel
  every actor that worked on the run is killed (``keep_workers_on_cancel`` keeps them warm).
"""

from __future__ import annotations

import enum
import logging
import math
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import yaml
from ray.exceptions import (
    NodeDiedError,
    OutOfMemoryError,
    RayActorError,
    RayTaskError,
    WorkerCrashedError,
)

from orchestrator.config import TrainConfig
from orchestrator.cv import FoldSpec
from orchestrator.errors import (
    ConfigError,
    FoldFailedError,
    OrchestratorError,
    RunCancelledError,
)
from orchestrator.executors import FoldJob, ResultCallback, fold_producer
from orchestrator.events.actor import NAMESPACE
from orchestrator.messages import Notification
from workers.fold import FoldContext, FoldTrainer

__all__ = [
    "ensure_ray",
    "RayExecutor",
    "WorkerPool",
    "ResourceShape",
    "ClusterView",
    "NodeGroup",
    "Placement",
    "fold_placement",
    "reachable_resources",
    "concurrency_limit",
]

log = logging.getLogger(__name__)

# Seconds a stopped fold gets to finish its epoch and flush its events before its actor is killed.
CANCEL_GRACE_S = 2.0
# How often the driver wakes to check for cancels and placement timeouts while folds run.
WAIT_SLICE_S = 0.2
# Seconds a placed worker may take to start (process, imports) before the run fails.
START_TIMEOUT_S = 600.0
# Fold-trainer actors are named this plus a random suffix.
ACTOR_NAME_PREFIX = "fold-trainer-"
# Actors of one fold that may die before their first call; these are not fold attempts.
MAX_START_FAILURES = 3
# What a dead worker process looks like to the caller of one of its methods.
_WORKER_DEATH: tuple[type[BaseException], ...] = (
    RayActorError,
    WorkerCrashedError,
    OutOfMemoryError,
    NodeDiedError,
)


def ensure_ray(address: str | None = None, **init_kwargs: Any) -> None:
    """Join ``address`` (or RAY_ADDRESS), else start a local instance; no-op if connected.

    Without an address this starts a new instance (``address="local"``): a bare ``ray.init()``
    would join whatever cluster ``ray start`` left running on the machine, someone else's too.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    kwargs: dict[str, Any] = {"namespace": NAMESPACE, "ignore_reinit_error": True}
    if address == "local":
        kwargs["include_dashboard"] = False
    kwargs.update(init_kwargs)
    ray.init(address=address, **kwargs)


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

    def options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory:
            opts["memory"] = self.memory
        return opts

    def describe(self) -> str:
        text = f"cpus_per_fold={self.num_cpus:g}, gpus_per_fold={self.num_gpus:g}"
        if self.memory:
            text += f", memory_per_fold_mb={self.memory // 2**20}"
        return text


@dataclass
class _Worker:
    actor: Any
    name: str  # the actor's name: `ray list actors` and ray.util.list_named_actors show it
    shape: ResourceShape
    pid: int | None = None  # known once the actor answered its first ping
    idle_since: float = field(default_factory=time.monotonic)


_remote_trainer: Any = None


def _trainer_class() -> Any:
    """``ray.remote(FoldTrainer)``, made once: each call of ``ray.remote`` exports the class."""
    global _remote_trainer
    if _remote_trainer is None:
        _remote_trainer = ray.remote(FoldTrainer)
    return _remote_trainer


class WorkerPool:
    """Warm fold-trainer actors, reused while their resource shape fits.

    ``max_concurrency=2`` lets ``cancel()`` reach an actor while ``run()`` is busy in it.
    Idle actors are released after ``idle_timeout_s`` (a daemon thread checks) and on
    ``shutdown``. ``created`` and ``reused`` count acquisitions, for tests and benchmarks.
    """

    def __init__(self, idle_timeout_s: float = 600.0) -> None:
        if not idle_timeout_s > 0:
            raise ValueError(f"idle_timeout_s must be > 0, got idle_timeout_s={idle_timeout_s!r}")
        self.idle_timeout_s = idle_timeout_s
        self.created = 0
        self.reused = 0
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._reaper: threading.Thread | None = None

    def acquire(self, shape: ResourceShape) -> _Worker:
        """An idle actor of ``shape``, else a new one (still starting: ping it before use)."""
        self.reap_idle()
        with self._lock:
            for i, worker in enumerate(self._idle):
                if worker.shape == shape:
                    self.reused += 1
                    return self._idle.pop(i)
            # Idle actors of another shape hold resources the new one may need: release them.
            others, self._idle = self._idle, []
            self.created += 1
        for worker in others:
            self.discard(worker)
        name = f"{ACTOR_NAME_PREFIX}{uuid.uuid4().hex[:12]}"
        actor = _trainer_class().options(
            **shape.options(), name=name, max_concurrency=2, max_restarts=0, max_task_retries=0
        ).remote()
        return _Worker(actor=actor, name=name, shape=shape)

    def release(self, worker: _Worker) -> None:
        """Keep a healthy actor for later runs."""
        if self._closed.is_set():
            self.discard(worker)
            return
        worker.idle_since = time.monotonic()
        with self._lock:
            self._idle.append(worker)
        self._start_reaper()

    def discard(self, worker: _Worker) -> None:
        """Kill an actor (dead already is fine)."""
        try:
            ray.kill(worker.actor, no_restart=True)
        except Exception:  # already dead, or Ray shut down
            pass

    def reap_idle(self) -> None:
        now = time.monotonic()
        with self._lock:
            stale = [w for w in self._idle if now - w.idle_since > self.idle_timeout_s]
            self._idle = [w for w in self._idle if w not in stale]
        for worker in stale:
            self.discard(worker)

    def idle_count(self) -> int:
        with self._lock:
            return len(self._idle)

    def idle_actor_names(self) -> set[str]:
        with self._lock:
            return {w.name for w in self._idle}

    def shutdown(self) -> None:
        """Kill the idle actors; actors released later are killed too."""
        self._closed.set()
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            self.discard(worker)

    def _start_reaper(self) -> None:
        with self._lock:
            if self._reaper is not None:
                return
            self._reaper = threading.Thread(
                target=self._reap_until_closed, name="worker-pool-reaper", daemon=True
            )
        self._reaper.start()

    def _reap_until_closed(self) -> None:
        interval = min(max(self.idle_timeout_s / 4, 0.05), 30.0)
        while not self._closed.wait(interval):
            if ray.is_initialized():
                self.reap_idle()


def _placed(worker: _Worker) -> bool:
    """True once Ray has given the actor a worker process (its __init__ may still be running)."""
    try:
        from ray._private import state  # the GCS actor table: no dashboard needed

        info = state.actors(worker.actor._actor_id.hex())
        return bool(info and info.get("Pid"))
    except Exception:  # an API change: fall back to placement_timeout_s alone
        return False


# ---- where a fold can run: pure decisions over plain resource dicts --------------------------

# ``ray up`` writes the head's autoscaling config here (the monitor's --autoscaling-config); Ray
# Tune reads the same path to tell a launcher-made cluster (ray.tune.execution.cluster_info).
LAUNCHER_CONFIG_PATH = "~/ray_bootstrap_config.yaml"


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
    limit = min(n_folds, _fits(totals.get("CPU", 0.0), shape.num_cpus, n_folds))
    if shape.num_gpus:
        limit = min(limit, _fits(totals.get("GPU", 0.0), shape.num_gpus, n_folds))
    limit = max(1, limit)
    if max_concurrent:
        limit = min(limit, max_concurrent)
    return limit


def _fits(total: float, per_fold: float, most: int) -> int:
    if not per_fold or math.isinf(total):
        return most
    # total / per_fold, not total // per_fold: 1.0 // 0.1 == 9.0 in floating point
    return math.floor(total / per_fold + 1e-9)


def placement_timeout_message(
    fold_id: int,
    waited: float,
    timeout: float,
    shape: ResourceShape,
    free: Mapping[str, float],
    scale_up: list[str],
) -> str:
    text = (
        f"the worker of fold {fold_id} was not up after {waited:.0f} s "
        f"(placement_timeout_s={timeout:g}): each fold needs {shape.describe()} "
        f"and the cluster has {_resource_text(free, shape)} free"
    )
    if scale_up:
        text += (
            f"; the autoscaler did not provide a node of type {' or '.join(scale_up)} in time "
            f"(a new cloud node takes minutes to start: raise placement_timeout_s to cover it)"
        )
    return text


def node_groups_from_cluster_config(
    config: Any,
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


# ---- the same, read from Ray ----------------------------------------------------------------


def _cluster_view() -> ClusterView:
    live = tuple(
        dict(node.get("Resources", {})) for node in ray.nodes() if node.get("Alive")
    )
    groups, caps = _node_groups()
    return ClusterView(live, groups, caps)


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


def _concurrency(config: TrainConfig, shape: ResourceShape, n_folds: int) -> int:
    totals = reachable_resources(_cluster_view())
    return concurrency_limit(shape, totals, n_folds, config.max_concurrent_folds)


def _cause_text(err: RayTaskError) -> str:
    """The fold's own exception as ``Type: message`` (an OrchestratorError: its message)."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, OrchestratorError):
        return str(cause)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    return _short(err)


def _short(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:300] if lines else type(err).__name__


@dataclass
class _Attempt:
    """One try of one fold on one worker."""

    spec: FoldSpec
    number: int  # 0 for the first try
    worker: _Worker
    submitted: float = field(default_factory=time.monotonic)

    @property
    def fold_id(self) -> int:
        return self.spec.fold_id


class RayExecutor:
    """Trains a run's folds concurrently on fold-trainer actors from ``pool``.

    ``current_pids`` maps fold_id to the worker pid of its latest attempt in the current (or
    last) run, and ``run_actor_names`` holds the names of every actor that worked on it.

    After a cancel the run's actors are killed (a user's cancel leaves nothing of the run
    behind); ``keep_workers_on_cancel=True`` keeps the ones that stopped cleanly warm instead,
    for callers that cancel as a matter of course (HPO pruning).
    """

    name = "ray"

    def __init__(
        self, pool: WorkerPool | None = None, *, keep_workers_on_cancel: bool = False
    ) -> None:
        self.pool = pool or WorkerPool()
        self.keep_workers_on_cancel = keep_workers_on_cancel
        self.current_pids: dict[int, int] = {}
        self.run_actor_names: set[str] = set()

    def shutdown(self) -> None:
        self.pool.shutdown()

    def run_folds(self, job: FoldJob, on_result: ResultCallback) -> None:
        shape = ResourceShape.of(job.config)
        view = _cluster_view()
        # Fails at once when no node, live or one the autoscaler may add, could host a fold.
        placement = fold_placement(shape, view)
        self.current_pids.clear()
        self.run_actor_names.clear()
        _FoldRun(self, job, shape, view, placement, on_result).execute()


class _FoldRun:
    """The folds of one run: which wait for a worker, which start, which train (module doc)."""

    def __init__(
        self,
        executor: RayExecutor,
        job: FoldJob,
        shape: ResourceShape,
        view: ClusterView,
        placement: Placement,
        on_result: ResultCallback,
    ) -> None:
        self.executor = executor
        self.pool = executor.pool
        self.job = job
        self.config = job.config
        self.shape = shape
        self.placement = placement
        self.node_types_to_add = scale_up_types(shape, view)
        self.on_result = on_result
        self.limit = concurrency_limit(
            shape, reachable_resources(view), len(job.specs), job.config.max_concurrent_folds
        )
        self.pending: deque[FoldSpec] = deque(job.specs)
        self.attempts = {spec.fold_id: 0 for spec in job.specs}
        self.start_failures = {spec.fold_id: 0 for spec in job.specs}
        self.starting: dict[Any, _Attempt] = {}  # ping ref -> attempt
        self.training: dict[Any, _Attempt] = {}  # run ref -> attempt
        self.free: list[_Worker] = []  # this run's actors between two folds
        self.producers: list[str] = []
        self.notices = job.sink.publisher(job.run_id, "executor")
        self.features_ref: Any = None

    def execute(self) -> None:
        completed = False
        try:
            if self.placement is Placement.AFTER_SCALE_UP:
                self._announce_scale_up()
            self.features_ref = ray.put(self.job.features)  # once per run, shared by every fold
            while self.pending or self.starting or self.training:
                self._raise_if_cancelled()
                self._launch()
                self._check_placement()
                for ref in self._wait():
                    if ref in self.starting:
                        self._on_started(ref, self.starting.pop(ref))
                    else:
                        self._on_finished(ref, self.training.pop(ref))
            completed = True
        finally:
            self._end(completed)

    # ---- one step at a time ------------------------------------------------------------------

    def _announce_scale_up(self) -> None:
        types = " or ".join(self.node_types_to_add)
        message = (
            f"no live node can host a fold with {self.shape.describe()}: waiting up to "
            f"placement_timeout_s={self.config.placement_timeout_s:g} for the autoscaler to "
            f"add a node of type {types}"
        )
        log.info("run %s: %s", self.job.run_id, message)
        self.notices.publish(Notification(level="info", kind="autoscaling", message=message))

    def _raise_if_cancelled(self) -> None:
        if self.job.cancel_event.is_set():
            raise RunCancelledError(f"run {self.job.run_id} was cancelled")

    def _launch(self) -> None:
        """Give pending folds a worker, up to the concurrency limit."""
        self._move_to_free_workers()
        while self.pending and len(self.starting) + len(self.training) < self.limit:
            spec = self.pending.popleft()
            worker = self.free.pop() if self.free else self._acquire()
            attempt = _Attempt(spec, self.attempts[spec.fold_id], worker)
            # A warm actor answers at once; a new one once its process is up and torch imported.
            self.starting[worker.actor.ping.remote()] = attempt

    def _move_to_free_workers(self) -> None:
        """A fold waiting for a new actor (still starting, or not even placed) moves to a warm
        worker of this run whose fold has ended: it trains now rather than in seconds. The new
        actor stays with the run if it got a place (it will be warm for later folds and runs)."""
        ready = [w for w in self.free if w.pid is not None]
        for ref, attempt in list(self.starting.items()):
            if not ready:
                return
            if attempt.worker.pid is not None:  # a warm worker answering its ping
                continue
            worker = ready.pop()
            self.free.remove(worker)
            del self.starting[ref]
            if _placed(attempt.worker):
                self.free.insert(0, attempt.worker)
            else:
                self.pool.discard(attempt.worker)
            attempt.worker = worker
            attempt.submitted = time.monotonic()
            self.starting[worker.actor.ping.remote()] = attempt

    def _acquire(self) -> _Worker:
        worker = self.pool.acquire(self.shape)
        self.executor.run_actor_names.add(worker.name)
        return worker

    def _wait(self) -> list[Any]:
        """The refs that are ready, after waiting at most WAIT_SLICE_S for the first one."""
        refs = [*self.starting, *self.training]
        done, rest = ray.wait(refs, num_returns=1, timeout=WAIT_SLICE_S, fetch_local=False)
        if done and rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0, fetch_local=False)
            done += more
        return done

    def _check_placement(self) -> None:
        """A worker not placed on a node within placement_timeout_s fails the run.

        A placed worker still starting (its process imports torch: tens of seconds on a loaded
        machine) is given until START_TIMEOUT_S instead. When this run's own folds hold what the
        cluster has (a node was lost), the fold waits in the queue for one of them to end, and
        the run runs fewer folds at a time from then on.
        """
        now = time.monotonic()
        timeout = self.config.placement_timeout_s
        for ref, attempt in list(self.starting.items()):
            waited = now - attempt.submitted
            if waited <= timeout or (waited <= START_TIMEOUT_S and _placed(attempt.worker)):
                continue
            if self.training:
                del self.starting[ref]
                self.pool.discard(attempt.worker)
                self.pending.appendleft(attempt.spec)
                self.limit = max(1, len(self.starting) + len(self.training))
                log.warning(
                    "fold %d: no room for its worker after %.0f s; it waits for one of the "
                    "run's %d folds in flight (at most %d at a time from now on)",
                    attempt.fold_id, waited, len(self.training), self.limit,
                )
                continue
            raise OrchestratorError(placement_timeout_message(
                attempt.fold_id, waited, timeout, self.shape, ray.available_resources(),
                self.node_types_to_add,
            ))

    def _on_started(self, ref: Any, attempt: _Attempt) -> None:
        try:
            attempt.worker.pid = int(ray.get(ref))
        except _WORKER_DEATH as err:  # died before its first call: a new actor, not a new attempt
            self.pool.discard(attempt.worker)
            self.start_failures[attempt.fold_id] += 1
            if self.start_failures[attempt.fold_id] > MAX_START_FAILURES:
                raise FoldFailedError(
                    attempt.fold_id,
                    f"{self.start_failures[attempt.fold_id]} workers died while starting "
                    f"({_short(err)})",
                ) from err
            self.pending.appendleft(attempt.spec)
            return
        self._submit(attempt)

    def _submit(self, attempt: _Attempt) -> None:
        job = self.job
        producer = fold_producer(attempt.fold_id, attempt.number)
        self.producers.append(producer)
        self.executor.current_pids[attempt.fold_id] = attempt.worker.pid or 0
        context = FoldContext(job.run_id, job.training_started_at, attempt.number)
        publisher = job.sink.publisher(job.run_id, producer)
        ref = attempt.worker.actor.run.remote(
            self.features_ref, attempt.spec, self.config, context, publisher
        )
        attempt.submitted = time.monotonic()
        self.training[ref] = attempt

    def _on_finished(self, ref: Any, attempt: _Attempt) -> None:
        try:
            result = ray.get(ref)
        except _WORKER_DEATH as err:
            self.pool.discard(attempt.worker)
            self._retry(attempt, err)
            return
        except RayTaskError as err:
            # A Python exception inside the fold: the worker is fine, and a retry would fail again.
            self.free.append(attempt.worker)
            cause = getattr(err, "cause", None)
            if isinstance(cause, RunCancelledError) and self.job.cancel_event.is_set():
                raise RunCancelledError(str(cause)) from err
            raise FoldFailedError(attempt.fold_id, _cause_text(err)) from err
        self.free.append(attempt.worker)
        self.on_result(result)

    def _retry(self, attempt: _Attempt, err: BaseException) -> None:
        fold_id, max_retries = attempt.fold_id, self.config.max_retries
        self._close_producers([fold_producer(fold_id, attempt.number)], wait=False)
        # A lost node takes its resources with it: run no more folds than the rest can hold.
        self.limit = min(self.limit, _concurrency(self.config, self.shape, len(self.job.specs)))
        self.attempts[fold_id] += 1
        tries = self.attempts[fold_id]
        cause = f"its worker process (pid {attempt.worker.pid}) died: {_short(err)}"
        if tries > max_retries:
            raise FoldFailedError(
                fold_id, f"{cause}; no retry left after {tries} attempt(s) (max_retries={max_retries})"
            ) from err
        log.warning("fold %d: %s; retrying, attempt %d", fold_id, cause, tries + 1)
        self.notices.publish(Notification(
            level="warning",
            kind="fold_retry",
            fold_id=fold_id,
            attempt=tries + 1,
            message=f"fold {fold_id}: {cause}; retrying from the start, "
            f"attempt {tries + 1} of {max_retries + 1}",
        ))
        self.pending.appendleft(attempt.spec)

    # ---- the end -----------------------------------------------------------------------------

    def _end(self, completed: bool) -> None:
        try:
            if not completed:
                self._stop_folds()
            cancelled = not completed and self.job.cancel_event.is_set()
            kill = cancelled and not self.executor.keep_workers_on_cancel
            for worker in self.free:
                # A cancel takes every actor of the run down with it; otherwise they stay warm.
                if kill:
                    self.pool.discard(worker)
                else:
                    self.pool.release(worker)
            self.free.clear()
            if not completed:
                self._close_producers(self.producers, wait=True)
        finally:
            self.notices.flush()

    def _stop_folds(self) -> None:
        """Ask the folds still training to stop; kill what has not stopped within the grace."""
        # A placed actor still starting is healthy as far as anyone knows (its next user pings
        # it); one still waiting for resources would take them later, unasked: it goes.
        for attempt in self.starting.values():
            if _placed(attempt.worker):
                self.free.append(attempt.worker)
            else:
                self.pool.discard(attempt.worker)
        self.starting.clear()
        stopping, self.training = self.training, {}
        if not stopping:
            return
        for attempt in stopping.values():
            try:
                attempt.worker.actor.cancel.remote()
            except Exception:  # its actor is gone already
                pass
        stopped, _ = ray.wait(
            list(stopping), num_returns=len(stopping), timeout=CANCEL_GRACE_S, fetch_local=False
        )
        for ref, attempt in stopping.items():
            if ref in stopped and self._returned(ref):
                self.free.append(attempt.worker)
            else:
                self.pool.discard(attempt.worker)

    @staticmethod
    def _returned(ref: Any) -> bool:
        """True when the fold's call ended in its own process (a result or an exception)."""
        try:
            ray.get(ref, timeout=0)
        except _WORKER_DEATH:
            return False
        except Exception:
            return True
        return True

    def _close_producers(self, producers: list[str], *, wait: bool) -> None:
        close = getattr(self.job.sink, "close_producers", None)
        if close is None or not producers:
            return
        try:
            close(self.job.run_id, producers, timeout=10.0 if wait else None)
        except Exception:  # the hub is gone: nothing left to protect
            log.exception("run %s: could not close producers %s", self.job.run_id, producers)
