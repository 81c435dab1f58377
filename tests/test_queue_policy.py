"""The job queue's admission rule (orchestrator.jobs.policy): order, resources, backfill, aging, caps."""

from __future__ import annotations

import math

from orchestrator.execution.placement import ResourceShape
from orchestrator.jobs.policy import (
    Ask,
    Holding,
    Waiting,
    effective_priority,
    fit_slots,
    free_resources,
    plan_admissions,
    queue_order,
)

CPU1 = ResourceShape(1.0, 0.0, None)
GPU1 = ResourceShape(1.0, 1.0, None)


def waiting(
    run_id: str,
    priority: int = 0,
    arrival: int = 0,
    submitted_at: float = 0.0,
    shape: ResourceShape = CPU1,
    folds: int = 5,
    cap: int | None = 1,
) -> Waiting:
    return Waiting(run_id, priority, arrival, submitted_at, Ask(shape, folds, cap))


def test_order_is_priority_then_arrival() -> None:
    runs = [waiting("a", 0, 0), waiting("b", 0, 1), waiting("c", 5, 2), waiting("d", -1, 3)]
    assert [w.run_id for w in queue_order(runs, now=0.0, aging_s=None)] == ["c", "a", "b", "d"]


def test_two_cpus_admit_two_single_fold_runs_and_the_third_waits() -> None:
    runs = [waiting("a", arrival=0), waiting("b", arrival=1), waiting("c", arrival=2)]
    decision = plan_admissions(runs, [], {"CPU": 2.0}, now=0.0)
    assert [(a.run_id, a.slots) for a in decision.admit] == [("a", 1), ("b", 1)]
    assert [w.run_id for w in decision.waiting] == ["c"]
    assert decision.reasons["c"] == "waiting for CPU: a fold needs cpus_per_fold=1, 0 CPU free"


def test_a_run_takes_what_is_free_up_to_its_folds_and_cap() -> None:
    free = {"CPU": 8.0, "GPU": 0.0, "memory": 0.0}
    assert fit_slots(Ask(CPU1, 5, None), free) == 5
    assert fit_slots(Ask(CPU1, 5, 3), free) == 3
    assert fit_slots(Ask(ResourceShape(3.0, 0.0, None), 5, None), free) == 2
    assert fit_slots(Ask(ResourceShape(0.1, 0.0, None), 20, None), {"CPU": 1.0}) == 10  # not 9
    assert fit_slots(Ask(GPU1, 5, None), free) == 0
    assert fit_slots(Ask(CPU1, 5, None), {"CPU": math.inf}) == 5  # an autoscaler without a limit


def test_holdings_are_subtracted_from_the_totals() -> None:
    held = [Holding("x", CPU1, 2), Holding("y", GPU1, 1)]
    assert free_resources({"CPU": 4.0, "GPU": 1.0}, held) == {"CPU": 1.0, "GPU": 0.0, "memory": 0.0}
    decision = plan_admissions([waiting("a")], held, {"CPU": 4.0, "GPU": 1.0}, now=0.0)
    assert [(a.run_id, a.slots) for a in decision.admit] == [("a", 1)]


def test_backfill_never_takes_what_the_head_needs() -> None:
    # the head needs a GPU (busy) and a CPU; 2 CPUs are free: one is held for the head, one may
    # go to a later CPU-only run, and a later run that needs 2 CPUs must wait
    head = waiting("head", priority=5, arrival=0, shape=GPU1)
    small = waiting("small", arrival=1)
    big = waiting("big", arrival=2, shape=ResourceShape(2.0, 0.0, None))
    held = [Holding("x", GPU1, 1)]
    decision = plan_admissions([head, small, big], held, {"CPU": 3.0, "GPU": 1.0}, now=0.0)
    assert [a.run_id for a in decision.admit] == ["small"]
    assert decision.reasons["head"].startswith("waiting for GPU")
    assert decision.reasons["big"].startswith("waiting for CPU")
    # once the GPU run ends, the head starts first, on the CPU held for it
    after = plan_admissions([head, big], [Holding("small", CPU1, 1)], {"CPU": 3.0, "GPU": 1.0}, now=1.0)
    assert [a.run_id for a in after.admit] == ["head"]


def test_a_run_behind_the_head_says_so_when_it_would_fit_but_for_the_reservation() -> None:
    head = waiting("head", priority=1, arrival=0, shape=ResourceShape(2.0, 0.0, None))
    later = waiting("later", arrival=1)
    decision = plan_admissions([head, later], [Holding("x", CPU1, 1)], {"CPU": 2.0}, now=0.0)
    assert decision.admit == []
    assert (
        decision.reasons["later"] == "behind run head: what is free is held for it (it is first in the queue)"
    )


def test_aging_lets_a_waiting_run_pass_later_higher_priority_runs() -> None:
    old = waiting("old", priority=-100, arrival=0, submitted_at=0.0)
    assert effective_priority(old, now=59.0, aging_s=60.0) == -100
    assert effective_priority(old, now=60.0, aging_s=60.0) == -99
    # at 200 aging periods it ranks with a fresh priority-100 run, and arrived first
    now = 200 * 60.0
    fresh = waiting("fresh", priority=100, arrival=1, submitted_at=now)
    assert [w.run_id for w in queue_order([fresh, old], now, 60.0)] == ["old", "fresh"]
    decision = plan_admissions([fresh, old], [Holding("x", CPU1, 1)], {"CPU": 2.0}, now=now, aging_s=60.0)
    assert [a.run_id for a in decision.admit] == ["old"]
    # without aging it would wait behind every later high-priority run
    assert [w.run_id for w in queue_order([fresh, old], now, None)] == ["fresh", "old"]


def test_the_cap_on_running_runs_holds_everyone() -> None:
    decision = plan_admissions(
        [waiting("a"), waiting("b", arrival=1)], [Holding("x", CPU1, 1)], {"CPU": 8.0}, now=0.0, max_running=2
    )
    assert [a.run_id for a in decision.admit] == ["a"]
    assert decision.reasons["b"] == "--max-concurrent-runs=2: 2 runs are running"


def test_memory_is_counted_in_bytes_and_reported_in_mb() -> None:
    shape = ResourceShape(1.0, 0.0, 512 * 2**20)
    decision = plan_admissions(
        [waiting("m", shape=shape)], [], {"CPU": 4.0, "memory": 256.0 * 2**20}, now=0.0
    )
    assert decision.admit == []
    assert (
        decision.reasons["m"]
        == "waiting for memory: a fold needs 512 MB (memory_per_fold_mb), 256 MB are free"
    )
