"""Per-producer ordering and retry repeats, without a hub: the pure bookkeeping on its own."""

from __future__ import annotations

import random

from orchestrator.events.ordering import Refusal, RetryFilter, RunOrdering, retry_key
from orchestrator.messages import parse_message as message
from tests.made_events import epoch, fold_done, note, start


def test_each_producer_is_released_in_its_own_order_whatever_the_arrival() -> None:
    ordering: RunOrdering[tuple[str, int]] = RunOrdering(max_pending=1000)
    arrivals = [(p, i) for p in ("a", "b") for i in range(30)]
    random.Random(3).shuffle(arrivals)
    released: list[tuple[str, int]] = []
    for producer, pseq in arrivals:
        released += ordering.accept(producer, pseq, (producer, pseq)).ready
    for producer in ("a", "b"):
        assert [i for p, i in released if p == producer] == list(range(30))
    assert ordering.buffered() == 0


def test_early_arrival_waits_and_duplicates_are_stale() -> None:
    ordering: RunOrdering[str] = RunOrdering(max_pending=10)
    early = ordering.accept("p", 1, "one")
    assert early.ready == [] and early.refused is None and ordering.buffered() == 1
    assert ordering.accept("p", 1, "one again").refused is Refusal.STALE  # buffered already
    assert ordering.accept("p", 0, "zero").ready == ["zero", "one"]
    assert ordering.accept("p", 0, "zero again").refused is Refusal.STALE  # released already
    assert ordering.accept("q", 0, "other producer").ready == ["other producer"]


def test_an_overflowing_buffer_gives_up_on_the_missing_ones() -> None:
    ordering: RunOrdering[int] = RunOrdering(max_pending=2)
    assert ordering.accept("p", 2, 2).ready == []
    assert ordering.accept("p", 3, 3).ready == []
    overflow = ordering.accept("p", 5, 5)
    assert overflow.skipped == (0, 2) and overflow.ready == [2, 3]
    assert ordering.accept("p", 0, 0).refused is Refusal.STALE  # given up: never out of order
    assert ordering.accept("p", 4, 4).ready == [4, 5]


def test_closing_a_producer_releases_its_buffer_and_refuses_stragglers() -> None:
    ordering: RunOrdering[int] = RunOrdering(max_pending=10)
    ordering.accept("p", 0, 0)
    ordering.accept("p", 3, 3)
    ordering.accept("p", 2, 2)
    assert ordering.close_producer("p") == [2, 3]
    assert ordering.accept("p", 1, 1).refused is Refusal.CLOSED
    assert ordering.close_producer("never-seen") == []
    assert ordering.accept("never-seen", 0, 0).refused is Refusal.CLOSED
    assert ordering.buffered() == 0


def test_retry_keys_name_what_a_retried_fold_repeats() -> None:
    assert retry_key(message(epoch(1, 2))) == ("epoch_metrics", 1, 2)
    assert retry_key(message(fold_done(1))) == ("fold_complete", 1)
    delta = {
        "type": "prediction_delta",
        "fold_id": 0,
        "epoch": 3,
        "predictions": [],
        "chunk": 1,
        "final": True,
    }
    assert retry_key(message(delta)) == ("prediction_delta", 0, 3, 1, True)
    progress = {
        "type": "batch_progress",
        "fold_id": 0,
        "epoch": 3,
        "batch": 7,
        "total_batches": 9,
        "train_loss": None,
        "samples_per_second": None,
    }
    assert retry_key(message(progress)) == ("batch_progress", 0, 3, 7)
    # a type a retry never repeats (the driver's own events, a fold's notification): no key
    assert retry_key(message({**note("retry", kind="fold_retry"), "fold_id": 1})) is None
    assert retry_key(message(start(2, 3))) is None


def test_retry_filter_remembers_only_released_events() -> None:
    retries = RetryFilter()
    first = message(epoch(0, 0))
    assert not retries.is_repeat(first)  # seen but not released (say, dropped as invalid)
    retries.remember(first)
    assert retries.is_repeat(message(epoch(0, 0)))
    assert not retries.is_repeat(message(epoch(1, 0)))
    notification = message({**note(0), "fold_id": 0})
    retries.remember(notification)
    assert not retries.is_repeat(notification)  # keyless events are never repeats
