"""Which folds train together as one stacked model (a pack), and how the folds waiting for workers are
split into packs (pure: no Ray, no torch).

A pack is the unit a worker trains (DESIGN 9): the folds of a run, and of HPO trials admitted
together, whose models have the same shape and whose samples are the same rows (``pack_key``);
each keeps its own scaling, seed, dropout, learning rate, weight decay, loss weights, early
stopping and best state. ``pack`` in the config caps the models of one stack: ``auto`` (no cap),
an integer, or ``1`` (one model at a time, exactly the unpacked behaviour).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from orchestrator.config import TrainConfig

__all__ = [
    "PACK_KEY_FIELDS",
    "LOCKSTEP_WEIGHT",
    "PackTask",
    "pack_key",
    "pack_cap",
    "pack_cost",
    "plan_packs",
]

# The fields that shape the stacked weights or the rows a model sees, and where and how it runs:
# folds that differ in one of these cannot share a stack.
PACK_KEY_FIELDS = (
    "data",
    "date_format",
    "lookback",
    "hidden",
    "depth",
    "batch_size",
    "executor",
    "cpus_per_fold",
    "gpus_per_fold",
    "memory_per_fold_mb",
    "cuda_graphs",
    "mixed_precision",
)

T = TypeVar("T")

# A stack's step costs about a + b*K for K models, not K*(a + b): bench/stacked_step.py, one CPU
# thread, the default model: 1.13 ms for one model, 2.85 ms for five, so a/b = 1.6. Every step of
# a pack pays the fixed part a once, and a pack takes as many steps as its longest member.
LOCKSTEP_WEIGHT = 1.6
# Splits of a key's folds searched exhaustively (count ** (n - 1) bounds them); beyond, greedy.
_EXACT_LIMIT = 20_000


def pack_key(config: TrainConfig) -> tuple[Hashable, ...]:
    """What two folds must share to train in one stack (``PACK_KEY_FIELDS``' values)."""
    return tuple(getattr(config, name) for name in PACK_KEY_FIELDS)


def pack_cost(costs: Sequence[float]) -> float:
    """The modelled cost of training folds of ``costs`` as one stack: ``sum + LOCKSTEP_WEIGHT *
    max`` (every step pays the stack's fixed part once; the longest member sets the steps)."""
    return sum(costs) + LOCKSTEP_WEIGHT * max(costs) if costs else 0.0


def pack_cap(config: TrainConfig) -> int | None:
    """The most models one stack of ``config``'s folds may hold; None for ``pack: auto``."""
    return None if config.pack == "auto" else int(config.pack)


@dataclass(frozen=True)
class PackTask(Generic[T]):
    """A fold waiting for a worker: its identity (``item``), pack key, cap and cost."""

    item: T
    key: tuple[Hashable, ...]
    cap: int | None
    cost: float


def plan_packs(tasks: Sequence[PackTask[T]], workers: int) -> list[list[T]]:
    """The packs to start now on ``workers`` free workers (at least 1), biggest first.

    Tasks of one key share packs; a key's tasks are spread over a share of the workers in
    proportion to its cost (at least one worker each, as long as there are workers), and within
    a key split so that the costliest pack (``pack_cost``: a stack pays its per-step cost once)
    is as cheap as it can be: every split searched for a few tasks, else longest first to the
    pack it costs least (LPT: Graham 1969), so the packs of a key end about together. A cap
    splits a key's tasks into at least ``ceil(n / cap)`` packs;
    packs beyond ``workers`` wait for the next free worker (the caller asks again then). With
    ``cap == 1`` every task is its own pack, in the order given (the unpacked launch order).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got workers={workers!r}")
    groups: dict[tuple[Hashable, ...], list[PackTask[T]]] = {}
    for task in tasks:
        groups.setdefault(task.key, []).append(task)
    if not groups:
        return []
    shares = _worker_shares({key: sum(t.cost for t in group) for key, group in groups.items()}, workers)
    packs: list[tuple[float, list[T]]] = []
    for key, group in groups.items():
        cap = group[0].cap
        if cap == 1:
            packs.extend((task.cost, [task.item]) for task in group)
            continue
        count = min(max(shares[key], 1), len(group))
        if cap is not None and len(group) > count * cap:
            group = group[: count * cap]  # full packs now, in queue order; the rest waits
        packs.extend(_balanced(group, count, cap))
    if all(task.cap == 1 for task in tasks):
        return [items for _, items in packs][:workers]
    packs.sort(key=lambda pack: -pack[0])
    return [items for _, items in packs[:workers]]


def _worker_shares(costs: dict[tuple[Hashable, ...], float], workers: int) -> dict[tuple[Hashable, ...], int]:
    """Workers per key in proportion to its cost (largest remainders), at least one per key while
    workers last (the costliest keys first)."""
    total = sum(costs.values()) or 1.0
    order = sorted(costs, key=lambda key: -costs[key])
    if len(order) >= workers:
        return {key: (1 if i < workers else 0) for i, key in enumerate(order)}
    exact = {key: workers * costs[key] / total for key in order}
    shares = {key: max(1, int(exact[key])) for key in order}
    spare = workers - sum(shares.values())
    for key in sorted(order, key=lambda k: -(exact[k] - int(exact[k]))):
        if spare <= 0:
            break
        shares[key] += 1
        spare -= 1
    return shares


def _balanced(group: Sequence[PackTask[T]], count: int, cap: int | None) -> list[tuple[float, list[T]]]:
    """``group`` in at most ``count`` packs of at most ``cap``, the costliest pack's ``pack_cost``
    made small: exactly when ``count ** (n - 1)`` splits are few, else greedily."""
    ordered = sorted(group, key=lambda t: -t.cost)  # stable: ties in queue order
    limit = len(ordered) if cap is None else cap
    if count ** max(len(ordered) - 1, 0) <= _EXACT_LIMIT:
        packs = _best_split(ordered, count, limit)
    else:
        packs = _greedy_split(ordered, count, limit)
    return [(pack_cost([t.cost for t in pack]), [t.item for t in pack]) for pack in packs if pack]


def _best_split(ordered: Sequence[PackTask[T]], count: int, cap: int) -> list[list[PackTask[T]]]:
    """The split of ``ordered`` (costliest first) whose costliest pack is cheapest, then whose
    packs cost least in all; branch and bound over the packs each task can join."""
    best: list[list[PackTask[T]]] = []
    best_key = (math.inf, math.inf)
    packs: list[list[PackTask[T]]] = []
    sums: list[float] = []

    def cost_of(i: int) -> float:  # a pack's first task is its costliest (ordered)
        return sums[i] + LOCKSTEP_WEIGHT * packs[i][0].cost

    def place(n: int) -> None:
        nonlocal best, best_key
        costs = [cost_of(i) for i in range(len(packs))]
        worst = max(costs, default=0.0)
        if worst > best_key[0]:
            return
        if n == len(ordered):
            key = (worst, sum(costs))
            if key < best_key:
                best, best_key = [list(p) for p in packs], key
            return
        task = ordered[n]
        for i in range(len(packs)):
            if len(packs[i]) < cap:
                packs[i].append(task)
                sums[i] += task.cost
                place(n + 1)
                sums[i] -= task.cost
                packs[i].pop()
        if len(packs) < count:  # a new pack (the packs are interchangeable: one way to open one)
            packs.append([task])
            sums.append(task.cost)
            place(n + 1)
            packs.pop()
            sums.pop()

    place(0)
    return best


def _greedy_split(ordered: Sequence[PackTask[T]], count: int, cap: int) -> list[list[PackTask[T]]]:
    """Costliest first, each task to the pack (with room) whose ``pack_cost`` it leaves lowest."""
    packs: list[list[PackTask[T]]] = [[] for _ in range(count)]
    for task in ordered:
        open_packs = [p for p in packs if len(p) < cap]
        target = min(open_packs, key=lambda p: pack_cost([t.cost for t in p] + [task.cost]))
        target.append(task)
    return packs
