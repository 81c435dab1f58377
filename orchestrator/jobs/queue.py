"""``JobQueue``: the queued and running runs of one server, admitted by ``policy.plan_admissions`` (thread-safe).

Runs wait here, in memory, while the job store holds their rows (state ``queued``), so a restarted
server puts them back (``RunManager.restore_queue``). An admission pass runs on every change
(a run queued, cancelled or ended) and every ``tick_s`` while runs wait (aging, an autoscaler that
added a node); it calls each admitted run's ``on_admit(slots)`` outside the lock, in order.
``capacity`` returns the ``ClusterView`` the run is planned against: live nodes plus the node types
an autoscaler may still add.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from orchestrator.errors import ConfigError
from orchestrator.execution.placement import ClusterView, ResourceShape, fold_placement, reachable_resources
from orchestrator.jobs.policy import (
    FOLD_FIELDS,
    Admission,
    Ask,
    Holding,
    Waiting,
    effective_priority,
    fold_need,
    free_resources,
    plan_admissions,
)

__all__ = ["JobQueue", "JobKind", "QueueEntry", "ResourceError", "DEFAULT_AGING_S"]

log = logging.getLogger(__name__)

# One priority point per this many seconds waited (policy.effective_priority).
DEFAULT_AGING_S = 60.0

JobKind = Literal["run", "trial"]


class ResourceError(ConfigError):
    """No node, live or one an autoscaler may add, could ever hold one fold; ``field`` names the
    config field at fault (``cpus_per_fold``, ``gpus_per_fold`` or ``memory_per_fold_mb``)."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class QueueEntry:
    """A queued run: its place in the policy, what it is, and whom to tell when it starts."""

    waiting: Waiting
    kind: JobKind
    study: str | None
    on_admit: Callable[[int], None]


class JobQueue:
    """Queued runs, the running runs' holdings, and the admission passes between them."""

    def __init__(
        self,
        capacity: Callable[[], ClusterView],
        *,
        max_running: int | None = None,
        aging_s: float | None = DEFAULT_AGING_S,
        tick_s: float = 2.0,
    ) -> None:
        if max_running is not None and max_running < 1:
            raise ValueError(f"max_running must be >= 1 or None, got max_running={max_running!r}")
        self.capacity = capacity
        self.max_running = max_running
        self.aging_s = aging_s
        self.tick_s = tick_s
        self._entries: dict[str, QueueEntry] = {}
        self._holdings: dict[str, Holding] = {}
        self._reasons: dict[str, str] = {}
        self._order: list[str] = []
        self._totals: dict[str, float] = {}
        self._arrivals = itertools.count()
        self._lock = threading.RLock()
        self._closed = threading.Event()
        self._ticker: threading.Thread | None = None

    # ---- checks ---------------------------------------------------------------------------

    def check(self, ask: Ask, view: ClusterView | None = None) -> ClusterView:
        """``ResourceError`` naming the resource and the node with the most of it when no node,
        live or one an autoscaler may add, could ever hold one fold of ``ask``; else the cluster
        view it checked against (``view``, or ``capacity()`` read now), for ``put`` to reuse."""
        view = view if view is not None else self.capacity()
        try:
            fold_placement(ask.shape, view)
        except ConfigError as err:
            field, key = _missing(ask.shape, view)
            raise ResourceError(f"{field}: {_largest_node(view, key)}; {err}", field) from None
        return view

    # ---- changes --------------------------------------------------------------------------

    def put(
        self,
        run_id: str,
        priority: int,
        ask: Ask,
        on_admit: Callable[[int], None],
        *,
        submitted_at: float | None = None,
        kind: JobKind = "run",
        study: str | None = None,
        admit: bool = True,
        view: ClusterView | None = None,
    ) -> None:
        """Queue a run; an admission pass follows at once (``on_admit`` may run before this
        returns) unless ``admit`` is False (queueing several at once: call ``admit()`` after).
        ``view``: the cluster as ``check`` just read it (else the pass reads it)."""
        waiting = Waiting(
            run_id, priority, next(self._arrivals), time.time() if submitted_at is None else submitted_at, ask
        )
        with self._lock:
            if run_id in self._entries or run_id in self._holdings:
                raise ValueError(f"run {run_id!r} is already in the queue")
            self._entries[run_id] = QueueEntry(waiting, kind, study, on_admit)
            self._order.append(run_id)  # listed even before a pass could read the cluster
        self._start_ticker()
        if admit:
            self.admit(view)

    def hold(self, run_id: str, shape: ResourceShape, slots: int) -> None:
        """Count a run that started outside the queue (a run followed again after a restart)."""
        with self._lock:
            self._holdings[run_id] = Holding(run_id, shape, slots)

    def remove(self, run_id: str) -> bool:
        """Take a queued run out (cancel); False when it is not queued (running, ended, unknown)."""
        with self._lock:
            found = self._entries.pop(run_id, None) is not None
            if found:
                self._order = [r for r in self._order if r != run_id]
                self._reasons.pop(run_id, None)
        if found:
            self.admit()
        return found

    def release(self, run_id: str) -> None:
        """A running run ended: what it held is free. Releasing twice, or a run never held, is fine."""
        with self._lock:
            found = self._holdings.pop(run_id, None) is not None
        if found:
            self.admit()

    def admit(self, view: ClusterView | None = None) -> list[Admission]:
        """One admission pass over ``view`` (default: ``capacity()`` read now); the admitted
        runs' ``on_admit`` are called in order, outside the lock. Once the queue is closed,
        nothing is admitted."""
        if self._closed.is_set():
            return []
        try:
            totals = reachable_resources(view if view is not None else self.capacity())
        except Exception as err:  # Ray unreachable for a moment: try again on the next tick
            log.warning("job queue: cannot read the cluster's resources: %s", err)
            return []
        started: list[tuple[QueueEntry, int]] = []
        with self._lock:
            decision = plan_admissions(
                [e.waiting for e in self._entries.values()],
                list(self._holdings.values()),
                totals,
                now=time.time(),
                aging_s=self.aging_s,
                max_running=self.max_running,
            )
            self._totals = totals
            for admission in decision.admit:
                entry = self._entries.pop(admission.run_id)
                self._holdings[admission.run_id] = Holding(
                    admission.run_id, entry.waiting.ask.shape, admission.slots
                )
                started.append((entry, admission.slots))
            self._order = [w.run_id for w in decision.waiting]
            self._reasons = decision.reasons
        for entry, slots in started:
            try:
                entry.on_admit(slots)
            except Exception:
                log.exception("job queue: starting run %s failed", entry.waiting.run_id)
                self.release(entry.waiting.run_id)
        return decision.admit

    # ---- reads ----------------------------------------------------------------------------

    def position(self, run_id: str) -> int | None:
        """The run's 1-based place in the queue; None when it is not queued."""
        with self._lock:
            try:
                return self._order.index(run_id) + 1
            except ValueError:
                return None

    def queued_ids(self) -> list[str]:
        with self._lock:
            return list(self._order)

    def running_ids(self) -> list[str]:
        with self._lock:
            return list(self._holdings)

    def describe(self) -> dict[str, Any]:
        """``GET /queue``: the queued runs in order (position, priority, resources, why each
        waits), the running runs' holdings, and the cluster's totals and what is free."""
        now = time.time()
        with self._lock:
            entries = [self._entries[r] for r in self._order if r in self._entries]
            holdings = list(self._holdings.values())
            totals = dict(self._totals)
            reasons = dict(self._reasons)
        queue = []
        for position, entry in enumerate(entries, start=1):
            w = entry.waiting
            queue.append(
                {
                    "run_id": w.run_id,
                    "position": position,
                    "priority": w.priority,
                    "effective_priority": effective_priority(w, now, self.aging_s),
                    "submitted_at": w.submitted_at,
                    "waited_s": round(now - w.submitted_at, 3),
                    "kind": entry.kind,
                    "study": entry.study,
                    "resources": _ask_json(w.ask),
                    "reason": reasons.get(w.run_id, "waiting for the next admission pass"),
                }
            )
        return {
            "queue": queue,
            "running": [
                {"run_id": h.run_id, "slots": h.slots, "holds": _json_amounts(fold_need(h.shape, h.slots))}
                for h in holdings
            ],
            "capacity": {
                "total": _json_amounts(totals),
                "free": _json_amounts(free_resources(totals, holdings)),
            },
            "max_concurrent_runs": self.max_running,
            "aging_s": self.aging_s,
        }

    # ---- the ticker -----------------------------------------------------------------------

    def close(self) -> None:
        """Admit nothing more and stop the ticker; queued runs stay queued (in the store: the
        next server takes them)."""
        self._closed.set()

    def _start_ticker(self) -> None:
        with self._lock:
            if self._ticker is not None or self._closed.is_set():
                return
            self._ticker = threading.Thread(target=self._tick, name="job-queue", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        while not self._closed.wait(self.tick_s):
            with self._lock:
                idle = not self._entries
            if not idle:
                self.admit()


def _ask_json(ask: Ask) -> dict[str, Any]:
    return {
        "cpus_per_fold": ask.shape.num_cpus,
        "gpus_per_fold": ask.shape.num_gpus,
        "memory_per_fold_mb": (ask.shape.memory or 0) // 2**20 or None,
        "folds": ask.folds,
        "max_concurrent_folds": ask.max_concurrent_folds,
    }


def _json_amounts(amounts: dict[str, float]) -> dict[str, float | None]:
    """Resource amounts as JSON allows them: inf (an autoscaler without a limit) as null."""
    return {key: None if value == float("inf") else value for key, value in amounts.items()}


def _nodes(view: ClusterView) -> list[tuple[str, Mapping[str, float]]]:
    nodes: list[tuple[str, Mapping[str, float]]] = [("live node", node) for node in view.live_nodes]
    nodes += [(f"node type {g.name}", g.resources) for g in view.node_groups or () if g.max_count != 0]
    return nodes


def _missing(shape: ResourceShape, view: ClusterView) -> tuple[str, str]:
    """The config field and resource no node has enough of for one fold (the first of CPU, GPU,
    memory that no node holds alone; CPU when only their combination is missing)."""
    need = fold_need(shape)
    for key in ("CPU", "GPU", "memory"):
        if need[key] > 0 and not any(node.get(key, 0.0) >= need[key] for _, node in _nodes(view)):
            return FOLD_FIELDS[key], key
    return FOLD_FIELDS["CPU"], "CPU"


def _largest_node(view: ClusterView, key: str) -> str:
    """``the node with the most GPU (node type gpu.1x) has CPU 4, GPU 1``: of the live nodes and
    the node types an autoscaler may add, the one with the most of ``key``."""
    nodes = _nodes(view)
    if not nodes:
        return "the cluster has no nodes"
    name, best = max(nodes, key=lambda n: (n[1].get(key, 0.0), n[1].get("CPU", 0.0)))
    text = f"CPU {best.get('CPU', 0.0):g}, GPU {best.get('GPU', 0.0):g}"
    if key == "memory":
        text += f", memory {best.get('memory', 0.0) / 2**20:g} MB"
    return f"the node with the most {key} ({name}) has {text}"
