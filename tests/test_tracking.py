"""The study's subscriber: routing released events to trials and the listener, the study's end."""

from __future__ import annotations

import itertools
from typing import Any

from orchestrator.events.record import EventRecord
from orchestrator.hpo.tracking import StudyEvents
from tests.made_events import complete, epoch, record

_SEQ = itertools.count(1)


def trial(state: str) -> dict[str, Any]:
    return {
        "type": "hpo_trial",
        "study": "s",
        "trial": 0,
        "state": state,
        "params": {},
        "trials_done": 0,
        "trials_total": 1,
    }


def event(run_id: str, kind: str, **fields: Any) -> EventRecord:
    """A released record of ``run_id``: an hpo_trial (``state``), an epoch or the run's end."""
    if kind == "hpo_trial":
        return record(next(_SEQ), run_id, trial(fields["state"]))
    return record(next(_SEQ), run_id, epoch(0, fields["epoch"]) if kind == "epoch_metrics" else complete())


def test_routes_trial_events_and_hands_the_study_s_events_to_the_listener() -> None:
    batches: list[list[EventRecord]] = []
    seen: list[EventRecord] = []
    events = StudyEvents("hpo_s", batches.append)
    events.route("t0", seen.append)
    start = event("hpo_s", "hpo_trial", state="running")
    epoch = event("t0", "epoch_metrics", epoch=0)
    other = event("someone_else", "epoch_metrics", epoch=0)
    events.receive([start, other, epoch])
    assert seen == [epoch]
    assert batches == [[start, epoch]]  # other runs' events are not the study's
    events.receive([other])
    assert len(batches) == 1  # nothing of the study: no call


def test_a_finished_trial_s_late_events_still_reach_the_listener() -> None:
    batches: list[list[EventRecord]] = []
    seen: list[EventRecord] = []
    events = StudyEvents("hpo_s", batches.append)
    events.route("t0", seen.append)
    events.unroute("t0")
    late = event("t0", "training_complete")
    events.receive([late])
    assert seen == [] and batches == [[late]]


def test_a_failing_callback_or_listener_does_not_stop_delivery() -> None:
    def broken(_: Any) -> None:
        raise RuntimeError("boom")

    seen: list[EventRecord] = []
    events = StudyEvents("hpo_s", broken)
    events.route("t0", broken)
    events.route("t1", seen.append)
    one = event("t1", "epoch_metrics", epoch=0)
    events.receive([event("t0", "epoch_metrics", epoch=0), one])
    assert seen == [one]


def test_the_study_ends_with_its_own_study_complete() -> None:
    events = StudyEvents("hpo_s")
    events.receive([event("hpo_s", "hpo_trial", state="complete")])
    events.receive([event("hpo_other", "hpo_trial", state="study_complete")])
    assert not events.wait_ended(0)
    events.receive([event("hpo_s", "hpo_trial", state="study_complete")])
    assert events.wait_ended(0)
