"""The held events: a bounded, contiguous range of seq read after a cursor, with gaps reported."""

from __future__ import annotations

import pytest

from orchestrator.events.history import History
from tests.made_events import epoch, note, record, seqs


def held(*runs: str, max_events: int = 100) -> History:
    history = History(max_events)
    for i, run_id in enumerate(runs, start=1):
        history.append(record(i, run_id, note(i) if i % 2 else epoch(0, i)))
    return history


def test_collect_after_a_cursor_with_filters_and_limit() -> None:
    history = held("a", "b", "a", "b", "a")
    assert history.collect(0) == (history.collect(0)[0], 5, None)
    assert seqs(history.collect(2)[0]) == [3, 4, 5]
    assert seqs(history.collect(0, run_id="b")[0]) == [2, 4]
    assert seqs(history.collect(0, types=frozenset({"epoch_metrics"}))[0]) == [2, 4]
    events, cursor, _ = history.collect(0, limit=2)
    assert seqs(events) == [1, 2] and cursor == 2  # cut short: resume after the last one
    assert history.collect(9) == ([], 9, None)  # a cursor past the end stays where it is
    # a run's scan starts at its first event (told here as 4: the "b" at 2 is not looked at)
    assert seqs(history.collect(0, run_id="b", run_first_seq=4)[0]) == [4]


def test_oldest_leave_first_and_a_lost_stretch_is_a_gap() -> None:
    history = held(*["a"] * 6, "b", max_events=3)
    assert len(history) == 3 and history.oldest_seq == 5 and history.last_seq == 7
    events, cursor, gap = history.collect(0)
    assert seqs(events) == [5, 6, 7] and cursor == 7 and gap == 5
    assert history.collect(4)[2] is None  # 5 is the first wanted and still held
    # a run whose first event is still held lost nothing
    assert history.collect(0, run_id="b", run_first_seq=7)[2] is None
    assert history.collect(0, run_id="a", run_first_seq=1)[2] == 5


def test_iter_from_either_end_and_of_run() -> None:
    history = held(*"abababababab")
    assert seqs(list(history.iter_from(3))) == list(range(3, 13))  # from the front
    assert seqs(list(history.iter_from(11))) == [11, 12]  # from the back
    assert list(history.iter_from(13)) == []
    assert seqs(list(history.of_run("b", first_seq=6))) == [6, 8, 10, 12]
    assert seqs(list(history.of_run("a"))) == [1, 3, 5, 7, 9, 11]


def test_appends_must_continue_the_seq_and_arguments_are_checked() -> None:
    history = held("a")
    with pytest.raises(ValueError, match="seq must be 2, got seq=3"):
        history.append(record(3, "a"))
    with pytest.raises(ValueError, match="since_seq=-1"):
        history.collect(-1)
    with pytest.raises(ValueError, match="limit=0"):
        history.collect(0, limit=0)
    with pytest.raises(ValueError, match="max_events=0"):
        History(0)


def test_a_history_continuing_a_store_reports_everything_before_it_as_a_gap() -> None:
    history = History(5, last_seq=40)
    assert history.collect(40) == ([], 40, None)
    assert history.collect(12) == ([], 40, 41)  # seq 13..40 are not held
    history.append(record(41, "r"))
    events, cursor, gap = history.collect(39)
    assert seqs(events) == [41] and cursor == 41 and gap == 41
