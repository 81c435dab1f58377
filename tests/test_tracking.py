"""The study's subscriber: routing released events to trials and the listener, the study's end."""

from __future__ import annotations

from typing import Any

from orchestrator.hpo.tracking import StudyEvents


def event(run_id: str, kind: str, **fields: Any) -> dict[str, Any]:
    return {"run_id": run_id, "type": kind, **fields}


def test_routes_trial_events_and_hands_the_study_s_events_to_the_listener() -> None:
    batches: list[list[dict[str, Any]]] = []
    seen: list[dict[str, Any]] = []
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
    batches: list[list[dict[str, Any]]] = []
    seen: list[dict[str, Any]] = []
    events = StudyEvents("hpo_s", batches.append)
    events.route("t0", seen.append)
    events.unroute("t0")
    late = event("t0", "training_complete")
    events.receive([late])
    assert seen == [] and batches == [[late]]


def test_a_failing_callback_or_listener_does_not_stop_delivery() -> None:
    def broken(_: Any) -> None:
        raise RuntimeError("boom")

    seen: list[dict[str, Any]] = []
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
