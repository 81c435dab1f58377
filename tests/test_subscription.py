"""``api.ws.subscription``: parsing ``/ws`` query parameters and choosing the messages a client takes."""

from __future__ import annotations

import pytest

from api.ws.fanout import ControlFrame, Outgoing
from api.ws.subscription import Subscription, SubscriptionError, parse_types
from orchestrator.events.record import EventRecord
from orchestrator.messages import CORE_TYPES, HEAVY_TYPES, MESSAGE_TYPES


def test_subscription_parsing_defaults_and_limits() -> None:
    assert Subscription.from_query({}).types == CORE_TYPES
    assert Subscription.from_query({"types": " epoch_metrics , notification"}).types == {
        "epoch_metrics",
        "notification",
    }
    with pytest.raises(SubscriptionError, match="bogus"):
        Subscription.from_query({"types": "bogus"})


def test_since_and_run_id_are_parsed_and_checked() -> None:
    parsed = Subscription.from_query({"since": " 42 ", "run_id": "run-1.a:b_c", "token": "t"})
    assert parsed == Subscription(since=42, run_id="run-1.a:b_c", types=CORE_TYPES)
    for bad in ("-3", "abc", "1.5", ""):
        with pytest.raises(SubscriptionError, match="since must be an integer >= 0"):
            Subscription.from_query({"since": bad})
    for bad in ("../x", "a b", "x" * 129, ""):
        with pytest.raises(SubscriptionError, match="run_id must be 1-128"):
            Subscription.from_query({"run_id": bad})
    with pytest.raises(SubscriptionError, match=r"unknown query parameter\(s\) sinse, type"):
        Subscription.from_query({"type": "x", "sinse": "1"})


def test_parse_types_all_empty_and_unknown_names() -> None:
    assert parse_types("all") == frozenset(MESSAGE_TYPES)
    assert HEAVY_TYPES <= parse_types("all")
    assert parse_types("batch_progress,,training_error,") == {"batch_progress", "training_error"}
    with pytest.raises(SubscriptionError, match="types is empty"):
        parse_types(" , ")
    with pytest.raises(SubscriptionError, match="bogus, nope"):
        parse_types("epoch_metrics,bogus,nope")


def _item(kind: str, run_id: str | None, seq: int | None = 1) -> Outgoing:
    if seq is None or run_id is None:
        return ControlFrame(kind, run_id, "{}")
    return EventRecord(seq, run_id, kind, 1.0, "{}")  # a subscription reads only the envelope


def test_wants_filters_by_run_and_type_and_lets_control_messages_through() -> None:
    default = Subscription()
    assert default.wants(_item("epoch_metrics", "A"))
    assert not default.wants(_item("batch_progress", "A"))  # heavy: only when asked for
    one_run = Subscription(run_id="A", types=frozenset({"batch_progress"}))
    assert one_run.wants(_item("batch_progress", "A"))
    assert not one_run.wants(_item("batch_progress", "B"))
    assert not one_run.wants(_item("epoch_metrics", "A"))
    # server-made messages (no seq) go to every client whose run they concern, whatever its types
    assert one_run.wants(_item("history_gap", None, seq=None))
    assert one_run.wants(_item("history_gap", "A", seq=None))
    assert not one_run.wants(_item("history_gap", "B", seq=None))
    assert default.wants(_item("history_gap", "B", seq=None))


def test_run_id_star_takes_every_run_and_no_run_id_also_takes_each_runs_start_and_end() -> None:
    star = Subscription.from_query({"run_id": "*", "types": "epoch_metrics"})
    assert star.run_id == "*" and star.one_run is None and not star.follows
    assert star.wants(_item("epoch_metrics", "A")) and star.wants(_item("epoch_metrics", "B"))
    assert not star.wants(_item("training_complete", "A"))
    assert star.wants(_item("history_gap", "B", seq=None))
    follows = Subscription.from_query({"types": "epoch_metrics"})
    assert follows.follows and follows.one_run is None
    # the sender needs to see runs start and end to switch, whatever the client's types
    for kind in ("dataset_ready", "training_start", "training_complete", "training_error"):
        assert follows.wants(_item(kind, "B")), kind
    assert not follows.wants(_item("notification", "B"))
    assert Subscription(run_id="A").one_run == "A"
    with pytest.raises(SubscriptionError, match=r"or \*, got '\*\*'"):
        Subscription.from_query({"run_id": "**"})
