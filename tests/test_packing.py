"""Which folds share a stack and how waiting folds are split into packs (orchestrator.execution.packing)."""

from __future__ import annotations

import pytest

from orchestrator.config import TrainConfig
from orchestrator.execution.packing import PACK_KEY_FIELDS, PackTask, pack_cap, pack_key, plan_packs

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
    assert loads == [7, 8]  # LPT: 5+2 against 4+3+1
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
