"""``api.ws.follow``: which run a client that names none follows, judged event by event (pure)."""

from __future__ import annotations

from api.ws.follow import RunFollow, Verdict
from tests.made_events import complete, epoch, error, note, record

SEND, SKIP, END = Verdict.SEND, Verdict.SKIP, Verdict.END


def test_follows_the_oldest_run_then_the_next_and_lets_other_streams_through() -> None:
    follow = RunFollow()
    assert follow.enter(["A", "B"]) == "A"
    assert follow.judge("epoch_metrics", "A") is SEND
    assert follow.judge("epoch_metrics", "B") is SKIP
    assert follow.judge("notification", "A") is SEND  # a training run's notification: its run's
    assert follow.judge("notification", "B") is SKIP
    assert follow.judge("notification", "data_feed") is SEND  # no training run: everyone's
    assert follow.judge("chart_update", "data_feed") is SEND
    assert follow.judge("hpo_trial", "hpo_s") is SEND
    assert follow.judge("dataset_ready", "C") is SKIP  # a younger run starts: not followed yet
    assert follow.judge("notification", "C") is SKIP  # ... but known as a training run now
    assert follow.judge("training_error", "B") is SKIP  # another run's end changes nothing
    assert follow.following == "A"
    assert follow.judge("training_complete", "A") is END and follow.following is None
    assert follow.enter(["C"]) == "C"
    assert follow.judge("training_complete", "C") is END


def test_while_no_run_runs_the_next_to_start_is_followed_and_a_lone_end_is_shown() -> None:
    follow = RunFollow()
    assert follow.enter([]) is None
    assert follow.judge("epoch_metrics", "late") is SKIP  # a straggler of a run that ended
    assert follow.judge("training_error", "refused") is SEND  # ended before it started
    assert follow.following is None
    assert follow.judge("training_start", "D") is SEND and follow.following == "D"
    assert follow.judge("training_error", "refused-2") is SKIP  # D is followed now


def test_resume_after_a_runs_end_replays_the_next_run() -> None:
    follow = RunFollow()
    assert follow.resume(["B"], record(9, "A", complete())) is True
    assert follow.following == "B" and follow.ahead == set()
    idle = RunFollow()
    assert idle.resume([], record(9, "A", error("x"))) is False
    assert idle.following is None


def test_resume_inside_a_replayed_run_skips_what_came_before_the_older_runs_ended() -> None:
    # the client got B's history after A ended; it left after B's event at a seq where A (and
    # Z, older still) were running
    follow = RunFollow()
    assert follow.resume(["Z", "A", "B"], record(5, "B", epoch(0, 0))) is False
    assert follow.following == "B" and follow.ahead == {"Z", "A"}
    assert follow.judge("chart_update", "data_feed") is SKIP  # the client had it before A ended
    assert follow.judge("epoch_metrics", "A") is SKIP
    assert follow.judge("epoch_metrics", "B") is SEND  # the rest of B's history
    assert follow.judge("training_error", "Z") is SKIP and follow.ahead == {"A"}
    assert follow.judge("training_complete", "A") is SKIP and follow.ahead == set()
    assert follow.judge("chart_update", "data_feed") is SEND  # in order from here


def test_resume_elsewhere_follows_the_oldest_run_in_order() -> None:
    assert RunFollow().following is None  # what resume() sets below
    for last in (
        record(5, "A", epoch(0, 0)),  # the oldest run's own event
        record(5, "data_feed", {"type": "chart_update", "candles": []}),
        record(5, "data_feed", note(5)),
        None,  # the hub no longer holds it
    ):
        follow = RunFollow()
        assert follow.resume(["A", "B"], last) is False
        assert follow.following == "A" and follow.ahead == set(), last
