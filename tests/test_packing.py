"""Which folds share a stack and how waiting folds are split into packs (orchestrator.execution.packing)."""

from __future__ import annotations

import pytest

from orchestrator.config import TrainConfig
from orchestrator.execution.packing import (
    LOCKSTEP_WEIGHT,
    PACK_KEY_FIELDS,
    PackTask,
    pack_cap,
    pack_cost,
    pack_key,
    plan_packs,
)

KEY_A = ("a",)
KEY_B = ("b",)


def tasks(costs: list[float], key: tuple[str, ...] = KEY_A, cap: int | None = None) -> list[PackTask[int]]:
    return [PackTask(i, key, cap, cost) for i, cost in enumerate(costs)]


def test_the_key_is_what_shapes_the_weights_and_the_rows() -> None:
    base = TrainConfig()
    assert pack_key(base) == pack_key(base.model_copy(update={"lr": 0.5, "dropout": 0.3, "seed": 9}))
    assert pack_key(base) == pack_key(base.model_copy(update={"w_bce": 0.0, "patience": 2, "epochs": 3}))
    for name, other in (
        ("hidden", 32),
        ("depth", 3),
        ("lookback", 30),
        ("batch_size", 64),
        ("data", "x.csv"),
    ):
        assert name in PACK_KEY_FIELDS
        assert pack_key(base) != pack_key(base.model_copy(update={name: other})), name


def test_the_cap_of_auto_is_none_and_of_a_number_itself() -> None:
    assert pack_cap(TrainConfig()) is None
    assert pack_cap(TrainConfig(pack=3)) == 3
    assert pack_cap(TrainConfig(pack=1)) == 1


def test_auto_spreads_one_key_over_every_worker_balanced_by_cost() -> None:
    packs = plan_packs(tasks([5, 4, 3, 2, 1]), workers=2)
    assert len(packs) == 2
    assert sorted(i for pack in packs for i in pack) == [0, 1, 2, 3, 4]
    loads = sorted(sum([5, 4, 3, 2, 1][i] for i in pack) for pack in packs)
    assert loads == [7, 8]  # 5+2 (cost 7 + 1.6*5 = 15) against 4+3+1 (8 + 1.6*4 = 14.4)
    assert plan_packs(tasks([5, 4, 3, 2, 1]), workers=1) == [[0, 1, 2, 3, 4]]


def test_never_more_packs_than_tasks_and_biggest_first() -> None:
    packs = plan_packs(tasks([1, 9]), workers=4)
    assert packs == [[1], [0]]


def test_a_cap_splits_a_key_into_packs_of_at_most_cap_and_the_rest_waits() -> None:
    packs = plan_packs(tasks([1.0] * 7, cap=3), workers=2)
    assert [len(p) for p in packs] == [3, 3]
    assert sorted(i for p in packs for i in p) == [0, 1, 2, 3, 4, 5]  # the first six in queue order
    assert plan_packs(tasks([1.0] * 7, cap=3), workers=1) == [[0, 1, 2]]
    assert [len(p) for p in plan_packs(tasks([1.0] * 4, cap=3), workers=2)] == [2, 2]


def test_pack_one_is_the_unpacked_launch_order() -> None:
    order = [PackTask(fold, KEY_A, 1, cost) for fold, cost in ((4, 1.0), (0, 9.0), (2, 5.0))]
    assert plan_packs(order, workers=2) == [[4], [0]]
    assert plan_packs(order, workers=5) == [[4], [0], [2]]


def test_keys_never_share_a_pack_and_each_gets_workers_by_cost() -> None:
    mixed = tasks([3, 3, 3, 3]) + [PackTask(10 + i, KEY_B, None, 1.0) for i in range(2)]
    packs = plan_packs(mixed, workers=3)
    assert len(packs) == 3
    for pack in packs:
        assert all(i < 10 for i in pack) or all(i >= 10 for i in pack)
    a_packs = [p for p in packs if p[0] < 10]
    assert len(a_packs) == 2  # 12 of the 14 cost units: two of the three workers


def test_more_keys_than_workers_starts_the_costliest_first() -> None:
    mixed = [PackTask(0, KEY_A, None, 1.0), PackTask(1, KEY_B, None, 5.0)]
    assert plan_packs(mixed, workers=1) == [[1]]


def test_no_task_no_pack_and_a_worker_is_needed() -> None:
    assert plan_packs([], workers=2) == []
    with pytest.raises(ValueError, match="workers must be >= 1, got workers=0"):
        plan_packs(tasks([1.0]), workers=0)


def test_a_stack_pays_its_step_cost_once_so_the_longest_folds_share_a_pack() -> None:
    """The 1M-row run's five folds (train rows in thousands): LPT on the sums pairs 782 with 578
    and 510 (1870 against 1360); with the lockstep cost the two longest share one stack."""
    rows = [510, 578, 646, 714, 782]
    assert pack_cost([3.0, 1.0]) == pytest.approx(4.0 + LOCKSTEP_WEIGHT * 3.0)
    assert pack_cost([]) == 0.0
    packs = plan_packs(tasks([3.0 * r for r in rows]), workers=2)
    assert sorted(sorted(p) for p in packs) == [[0, 1, 2], [3, 4]]
    worst = max(pack_cost([3.0 * rows[i] for i in p]) for p in packs)
    for left in range(1, 2**5 - 1):  # every other two-way split costs at least as much
        a = [3.0 * rows[i] for i in range(5) if left >> i & 1]
        b = [3.0 * rows[i] for i in range(5) if not left >> i & 1]
        assert max(pack_cost(a), pack_cost(b)) >= worst


def test_two_trials_folds_pair_up_fold_by_fold() -> None:
    """Two trials of five folds on two workers: each fold's two models share a stack (the same
    rows: their metrics are scored at once), five models a stack."""
    costs = [8414.0, 9494.0, 10574.0, 11654.0, 12734.0]  # the default job's fold_cost
    both = [PackTask((trial, fold), KEY_A, None, cost) for trial in (0, 1) for fold, cost in enumerate(costs)]
    packs = plan_packs(both, workers=2)
    assert sorted(len(p) for p in packs) == [5, 5]
    folds = [sorted(fold for _, fold in p) for p in packs]
    assert sorted(folds) == [[0, 0, 1, 4, 4], [1, 2, 2, 3, 3]]


def test_many_tasks_are_split_greedily_within_the_cap() -> None:
    many = tasks([float(c) for c in range(1, 25)], cap=8)  # 3 ** 23 splits: too many to search
    packs = plan_packs(many, workers=3)
    assert [len(p) for p in packs] == [8, 8, 8]
    assert sorted(i for p in packs for i in p) == list(range(24))
    costs = sorted(pack_cost([float(i + 1) for i in p]) for p in packs)
    assert costs[-1] / costs[0] < 1.2  # about even
