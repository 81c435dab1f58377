"""Walk-forward fold planning: order, purge gaps, tiling, window modes and clear errors."""

from __future__ import annotations

import itertools
from itertools import pairwise
from typing import Literal

import pytest

from orchestrator.config import FoldSpec, Segment, config_from_mapping
from orchestrator.errors import ConfigError
from orchestrator.run.cv import plan_folds, plan_folds_for

Window = Literal["expanding", "rolling"]


def _plan(n: int = 5000, **overrides: object) -> list[FoldSpec]:
    kwargs: dict[str, object] = dict(
        folds=5, use_cv=True, window="expanding", val_fraction=0.4, cal_fraction=0.15, gap=21
    )
    kwargs.update(overrides)
    return plan_folds(n, **kwargs)  # type: ignore[arg-type]


def _assert_walk_forward(plan: list[FoldSpec], n: int, gap: int) -> None:
    for k, fold in enumerate(plan):
        assert fold.fold_id == k
        tr, cal, val = fold.train, fold.calibration, fold.validation
        assert 0 <= tr.start < tr.stop and tr.stop + gap <= cal.start
        assert cal.start < cal.stop and cal.stop + gap <= val.start
        assert val.start < val.stop <= n
        # Nothing a fold trains or calibrates on lies at or after its own validation.
        assert max(tr.stop, cal.stop) <= val.start


SETTINGS = list(
    itertools.product(
        [800, 2000, 5031, 12345],  # n
        [2, 3, 5],  # folds
        ["expanding", "rolling"],  # window
        [0.2, 0.4],  # val_fraction
        [0.1, 0.25],  # cal_fraction
        [0, 3, 21],  # gap
    )
)


@pytest.mark.parametrize("n,folds,window,val_fraction,cal_fraction,gap", SETTINGS)
def test_segments_are_ordered_purged_and_tile_the_tail(
    n: int, folds: int, window: Window, val_fraction: float, cal_fraction: float, gap: int
) -> None:
    plan = _plan(n, folds=folds, window=window, val_fraction=val_fraction, cal_fraction=cal_fraction, gap=gap)
    assert len(plan) == folds
    _assert_walk_forward(plan, n, gap)
    v = int(n * val_fraction / folds + 1e-9)
    assert [len(f.validation) for f in plan] == [v] * folds
    assert plan[-1].validation.stop == n
    for earlier, later in pairwise(plan):
        assert earlier.validation.stop == later.validation.start  # contiguous blocks
    for fold in plan:
        val_start = fold.validation.start
        assert fold.calibration.stop == val_start - gap
        assert len(fold.calibration) == int(cal_fraction * (val_start - 2 * gap) + 1e-9)
        assert fold.train.stop == fold.calibration.start - gap


def test_known_layout_by_hand() -> None:
    # v = 400 / 2 = 200; fold 0: calibration floor(0.1 * (600 - 20)) = 58 ending at 590,
    # train ends 10 before 532; fold 1: calibration floor(0.1 * 780) = 78 ending at 790.
    plan = _plan(1000, folds=2, val_fraction=0.4, cal_fraction=0.1, gap=10)
    assert plan == [
        FoldSpec(0, train=Segment(0, 522), calibration=Segment(532, 590), validation=Segment(600, 800)),
        FoldSpec(1, train=Segment(0, 702), calibration=Segment(712, 790), validation=Segment(800, 1000)),
    ]
    assert [(len(f.train), len(f.calibration), len(f.validation)) for f in plan] == [
        (522, 58, 200),
        (702, 78, 200),
    ]


def test_expanding_train_starts_at_zero_and_grows() -> None:
    plan = _plan(5000, window="expanding")
    assert all(f.train.start == 0 for f in plan)
    sizes = [len(f.train) for f in plan]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


def test_rolling_train_keeps_fold_zero_length_and_slides() -> None:
    expanding = _plan(5000, window="expanding")
    rolling = _plan(5000, window="rolling")
    assert {len(f.train) for f in rolling} == {len(expanding[0].train)}
    starts = [f.train.start for f in rolling]
    assert starts[0] == 0 and starts == sorted(starts) and starts[-1] > 0
    for e, r in zip(expanding, rolling, strict=True):  # only the train start differs
        assert e.train.stop == r.train.stop
        assert (e.calibration, e.validation) == (r.calibration, r.validation)


def test_use_cv_false_gives_one_split() -> None:
    plan = _plan(1000, use_cv=False, folds=5, val_fraction=0.3, gap=5)
    assert len(plan) == 1
    (fold,) = plan
    assert fold.fold_id == 0
    assert fold.validation == Segment(700, 1000)
    _assert_walk_forward(plan, 1000, 5)


def test_more_samples_at_the_end_never_reach_back_into_a_fold() -> None:
    # Two plans: the whole data, and the data cut at one fold's validation stop (one split with
    # that validation block). The samples after the cut change nothing of the fold.
    lengths = range(1500, 1700, 37)
    compared = 0
    for n in lengths:
        plan = _plan(n, gap=21)
        assert len(plan) == 5
        _assert_walk_forward(plan, n, gap=21)
        for fold in plan:
            val = fold.validation
            cut = _plan(val.stop, use_cv=False, val_fraction=len(val) / val.stop, gap=21)
            assert len(cut) == 1 and cut[0].validation == val, (n, fold.fold_id, cut)
            assert (cut[0].train, cut[0].calibration) == (fold.train, fold.calibration), (n, fold.fold_id)
            compared += 1
    assert compared == 5 * len(lengths)


def test_plan_folds_for_uses_the_config_and_its_purge_gap() -> None:
    config = config_from_mapping(
        {"lookback": 30, "folds": 3, "window": "rolling", "val_fraction": 0.3, "cal_fraction": 0.2}
    )
    plan = plan_folds_for(config, 4000)
    assert plan == plan_folds(
        4000, folds=3, use_cv=True, window="rolling", val_fraction=0.3, cal_fraction=0.2, gap=31
    )
    _assert_walk_forward(plan, 4000, config.purge_gap)
    assert len(plan_folds_for(config.model_copy(update={"use_cv": False}), 4000)) == 1


def test_segment_basics() -> None:
    seg = Segment(3, 10)
    assert len(seg) == 7 and list(range(10))[seg.as_slice()] == [3, 4, 5, 6, 7, 8, 9]
    with pytest.raises(ValueError, match=r"\[5, 2\)"):
        Segment(5, 2)


@pytest.mark.parametrize(
    "n,overrides,message",
    [
        (
            100,
            {},
            r"each validation segment would have 8 samples, fewer than 16 \(n_samples=100, folds=5",
        ),
        (0, {}, r"validation segment would have 0 samples.*n_samples=0"),
        # v = 16, validation from 120: calibration floor(0.15 * (120 - 42)) = 11
        (
            200,
            {"gap": 21},
            r"fold 0 would have 11 calibration samples, fewer than 16 \(validation starts at 120",
        ),
        # v = 20, validation from 150: calibration floor(0.5 * 108) = 54, train 150 - 42 - 54 = 54
        (
            250,
            {"cal_fraction": 0.5, "gap": 21},
            r"fold 0 would have 54 train samples, fewer than 64 .*n_samples=250, folds=5",
        ),
        (
            200,
            {"use_cv": False, "val_fraction": 0.2, "gap": 100},
            r"fold 0 would have -?\d+ calibration samples, fewer than 16",
        ),
    ],
)
def test_too_little_data_names_the_numbers(n: int, overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _plan(n, **overrides)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"folds": 1}, r"folds must be >= 2 when use_cv is true, got folds=1"),
        ({"folds": 0, "use_cv": False}, r"folds must be >= 1, got folds=0"),
        ({"val_fraction": 1.0}, r"val_fraction must be in \(0, 1\), got val_fraction=1.0"),
        ({"cal_fraction": 0.0}, r"cal_fraction must be in \(0, 1\), got cal_fraction=0.0"),
        ({"gap": -1}, r"gap must be >= 0, got gap=-1"),
        ({"window": "sliding"}, r"window must be 'expanding' or 'rolling', got window='sliding'"),
    ],
)
def test_bad_arguments_name_the_value(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _plan(5000, **overrides)
