"""Which queued runs start now and why the others wait: priority with aging, resources, backfill (pure).

The rule (docs/operations.md, "The job queue"):

* **Order**: effective priority first (higher first), then arrival (first come, first served).
  A run's effective priority is its ``priority`` plus one point per ``aging_s`` seconds it has
  waited, so a waiting run is never passed forever: a run submitted more than
  ``(p_max - p) * aging_s`` seconds after it ranks behind it even at the highest priority
  ``p_max`` (equal effective priority goes to the earlier arrival), so only the runs submitted
  within that window can pass it. Without aging (``aging_s`` None) there is no such bound.
* **Admission**: a run starts when the resources of at least one of its folds are free (the
  cluster's totals, counting the node types an autoscaler may still add, minus what the running
  runs hold) and the cap on running runs allows. It then holds ``slots`` folds' worth of
  resources: ``min(folds, max_concurrent_folds, what is free)``.
* **Backfill**: the first run in order that cannot start (the head) reserves, of what is free,
  what one of its folds needs. A later run starts only within what is left after that
  reservation, so it never takes what the head needs when the head's missing resource frees up:
  it can start ahead of the head without delaying it.

Resources are counted in aggregate over the cluster (``CPU``, ``GPU``, ``memory`` in bytes);
whether a fold fits on one node at all is checked at submit (``fold_placement``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from orchestrator.execution.placement import ResourceShape, folds_within

__all__ = [
    "FOLD_FIELDS",
    "Ask",
    "Waiting",
    "Holding",
    "Admission",
    "Decision",
    "effective_priority",
    "queue_order",
    "fold_need",
    "free_resources",
    "fit_slots",
    "plan_admissions",
    "PRIORITY_MIN",
    "PRIORITY_MAX",
]

PRIORITY_MIN = -100
PRIORITY_MAX = 100
_EPS = 1e-9
_KEYS = ("CPU", "GPU", "memory")
# The config field that asks for each resource, per fold.
FOLD_FIELDS = {"CPU": "cpus_per_fold", "GPU": "gpus_per_fold", "memory": "memory_per_fold_mb"}


@dataclass(frozen=True)
class Ask:
    """What a run asks for: the resources of one fold, its fold count and its own cap."""

    shape: ResourceShape
    folds: int
    max_concurrent_folds: int | None = None


@dataclass(frozen=True)
class Waiting:
    """A queued run: ``arrival`` is its submit order (unique, increasing); times in seconds."""

    run_id: str
    priority: int
    arrival: int
    submitted_at: float
    ask: Ask


@dataclass(frozen=True)
class Holding:
    """A running run and the folds' worth of resources it holds."""

    run_id: str
    shape: ResourceShape
    slots: int


@dataclass(frozen=True)
class Admission:
    run_id: str
    slots: int


@dataclass
class Decision:
    """What one admission pass decided: the runs to start (in order), the rest in queue order
    with the reason each waits."""

    admit: list[Admission] = field(default_factory=list)
    waiting: list[Waiting] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)


def effective_priority(run: Waiting, now: float, aging_s: float | None) -> int:
    """``priority`` plus one per ``aging_s`` seconds waited (no aging when ``aging_s`` is None)."""
    if not aging_s:
        return run.priority
    return run.priority + int(max(now - run.submitted_at, 0.0) // aging_s)


def queue_order(waiting: Sequence[Waiting], now: float, aging_s: float | None) -> list[Waiting]:
    """The queue in admission order: effective priority (higher first), then arrival."""
    return sorted(waiting, key=lambda w: (-effective_priority(w, now, aging_s), w.arrival))


def fold_need(shape: ResourceShape, slots: int = 1) -> dict[str, float]:
    """The resources ``slots`` folds of ``shape`` hold."""
    return {
        "CPU": shape.num_cpus * slots,
        "GPU": shape.num_gpus * slots,
        "memory": float(shape.memory or 0) * slots,
    }


def free_resources(totals: Mapping[str, float], holdings: Sequence[Holding]) -> dict[str, float]:
    """``totals`` minus what ``holdings`` hold, per resource (inf stays inf; never below 0)."""
    free = {key: float(totals.get(key, 0.0)) for key in _KEYS}
    for held in holdings:
        for key, amount in fold_need(held.shape, held.slots).items():
            free[key] = max(free[key] - amount, 0.0)
    return free


def fit_slots(ask: Ask, free: Mapping[str, float]) -> int:
    """How many folds of ``ask`` start now: ``min(folds, max_concurrent_folds, what fits)``; 0 when
    not even one fold fits."""
    limit = min(ask.folds, ask.max_concurrent_folds or ask.folds)
    for key, per_fold in fold_need(ask.shape).items():
        limit = min(limit, folds_within(free.get(key, 0.0), per_fold, limit))
    return max(limit, 0)


def plan_admissions(
    waiting: Sequence[Waiting],
    holdings: Sequence[Holding],
    totals: Mapping[str, float],
    *,
    now: float,
    aging_s: float | None = None,
    max_running: int | None = None,
) -> Decision:
    """One admission pass (module doc): which of ``waiting`` start, with how many fold slots."""
    decision = Decision()
    free = free_resources(totals, holdings)
    running = len(holdings)
    reserved = dict.fromkeys(_KEYS, 0.0)
    head: Waiting | None = None
    for run in queue_order(waiting, now, aging_s):
        if max_running is not None and running >= max_running:
            decision.waiting.append(run)
            decision.reasons[run.run_id] = f"--max-concurrent-runs={max_running}: {running} runs are running"
            continue
        usable = {key: max(free[key] - reserved[key], 0.0) for key in _KEYS}
        slots = fit_slots(run.ask, usable)
        if slots >= 1:
            decision.admit.append(Admission(run.run_id, slots))
            for key, amount in fold_need(run.ask.shape, slots).items():
                free[key] = max(free[key] - amount, 0.0)
            running += 1
            continue
        decision.waiting.append(run)
        if head is None:
            head = run
            need = fold_need(run.ask.shape)
            reserved = {key: min(free[key], need[key]) for key in _KEYS}
            decision.reasons[run.run_id] = _short_of(run.ask, free)
        elif fit_slots(run.ask, free) >= 1:
            decision.reasons[run.run_id] = (
                f"behind run {head.run_id}: what is free is held for it (it is first in the queue)"
            )
        else:
            decision.reasons[run.run_id] = _short_of(run.ask, free)
    return decision


def _short_of(ask: Ask, free: Mapping[str, float]) -> str:
    """Why not one fold of ``ask`` fits in ``free``: the first resource it lacks."""
    for key, per_fold in fold_need(ask.shape).items():
        have = free.get(key, 0.0)
        if per_fold > have + _EPS:
            if key == "memory":
                return (
                    f"waiting for memory: a fold needs {per_fold / 2**20:g} MB "
                    f"({FOLD_FIELDS[key]}), {have / 2**20:g} MB are free"
                )
            value = ask.shape.num_cpus if key == "CPU" else ask.shape.num_gpus
            return f"waiting for {key}: a fold needs {FOLD_FIELDS[key]}={value:g}, {have:g} {key} free"
    return "waiting for resources"
