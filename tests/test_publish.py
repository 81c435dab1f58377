"""Publishers: in-process into an EventHub, and to the hub actor from Ray tasks and actors."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
import ray

from orchestrator.events.actor import get_or_create_hub
from orchestrator.events.hub import EventHub
from orchestrator.events.publish import LIVE_BATCH_WINDOW_S, HubPublisher, InProcessSink
from orchestrator.events.record import EventRecord
from orchestrator.messages import EPOCH_METRIC_FIELDS, MESSAGE_TYPES, EpochMetrics, Notification
from tests.made_events import body, epoch, labels
from tests.test_actor import session_namespace

N_EVENTS = 200


def note(message: str) -> dict[str, Any]:
    return {"type": "notification", "level": "info", "kind": "test", "message": message}


# ---- in-process ---------------------------------------------------------------------------


def test_local_publishers_number_their_events_and_the_listener_sees_each_release() -> None:
    batches: list[list[EventRecord]] = []
    sink = InProcessSink(listener=batches.append)
    sink.register_run("r", None)
    driver, fold = sink.publisher("r", "driver"), sink.publisher("r", "fold-0")
    driver.publish(Notification(level="info", kind="k", message="a", run_id="ignored", seq=99))
    fold.publish(note("b"))
    driver.publish(note("c"))
    assert [labels(batch) for batch in batches] == [["a"], ["b"], ["c"]]
    assert [e.seq for batch in batches for e in batch] == [1, 2, 3]  # the hub's envelope
    assert batches[0][0].run_id == "r" and batches[0][0].message.seq == 1


def test_a_model_with_nan_is_published_as_null() -> None:
    sink = InProcessSink()
    metrics = dict.fromkeys(EPOCH_METRIC_FIELDS, math.nan)
    sink.publisher("r", "fold-0").publish(
        EpochMetrics.model_validate({"fold_id": 0, "epoch": 0, "elapsed_seconds": 1.0, **metrics})
    )
    (event,) = sink.hub.run_events("r")
    assert body(event)["val_auc"] is None and body(event)["elapsed_seconds"] == 1.0
    assert isinstance(event.message, EpochMetrics) and event.message.val_auc is None


def test_in_process_wants_what_the_listener_or_a_poller_delivers() -> None:
    watched = InProcessSink(listener=lambda events: None)
    assert all(watched.publisher("r", "p").wants(kind) for kind in MESSAGE_TYPES)
    hub = EventHub()
    alone = InProcessSink(hub, interest=frozenset({"batch_progress"}))
    publisher = alone.publisher("r", "p")
    assert publisher.wants("batch_progress") and not publisher.wants("prediction_delta")
    hub.note_interest({"prediction_delta"}, 30)  # a consumer polling the same hub
    assert publisher.wants("prediction_delta")


# ---- to the hub actor ---------------------------------------------------------------------


@ray.remote(num_cpus=0)
def publish_from_task(publisher: HubPublisher, first: int, count: int) -> bool:
    # no helper of this module inside: the worker could not import the test module
    for i in range(first, first + count):
        publisher.publish({"type": "notification", "level": "info", "kind": "test", "message": str(i)})
    return publisher.flush(timeout=30)


@ray.remote(num_cpus=0)
class FoldLikeActor:
    def run(self, publisher: HubPublisher, epochs: int) -> bool:
        for n in range(epochs):
            metrics = dict.fromkeys(EPOCH_METRIC_FIELDS, float("nan"))
            publisher.publish(
                EpochMetrics.model_validate(
                    {"fold_id": 0, "epoch": n, "elapsed_seconds": float(n), **metrics}
                )
            )
        return publisher.flush(timeout=30)


def test_publisher_needs_a_run_and_a_producer() -> None:
    with pytest.raises(ValueError, match="producer=''"):
        HubPublisher(object(), "r", "")  # type: ignore[arg-type]


@pytest.mark.usefixtures("ray_session")
def test_publisher_in_a_task_is_released_in_order() -> None:
    hub = get_or_create_hub(namespace=session_namespace())
    run_id = "ray-task-run"
    ray.get(hub.register_run.remote(run_id, None), timeout=60)
    publisher = HubPublisher(hub, run_id, "task-0")
    assert ray.get(publish_from_task.remote(publisher, 0, N_EVENTS), timeout=60) is True
    events: list[EventRecord] = ray.get(hub.run_events.remote(run_id), timeout=60)
    assert [int(label) for label in labels(events)] == list(range(N_EVENTS))
    seqs = [e.seq for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + N_EVENTS))
    # the task numbered its own pickled copy: this one starts at pseq 0 again, a stale repeat
    # (why every task or actor needs its own producer name)
    publisher.publish(note("from the driver's copy"))
    assert publisher.flush(timeout=30) is True
    assert len(ray.get(hub.run_events.remote(run_id), timeout=60)) == N_EVENTS


@pytest.mark.usefixtures("ray_session")
def test_publisher_in_an_actor_sends_models_and_a_poller_sees_them() -> None:
    hub = get_or_create_hub(namespace=session_namespace())
    run_id = "ray-actor-run"
    ray.get(hub.register_run.remote(run_id, None), timeout=60)
    start = ray.get(hub.last_seq.remote(), timeout=60)
    waiting = hub.poll.remote(start, 30, run_id)  # a long-poll already waiting when events come
    actor = FoldLikeActor.remote()
    publisher = HubPublisher(hub, run_id, "fold-0-attempt-0")
    assert ray.get(actor.run.remote(publisher, 20), timeout=60) is True
    answer = ray.get(waiting, timeout=60)
    assert answer["events"] and body(answer["events"][0])["epoch"] == 0
    events = ray.get(hub.run_events.remote(run_id), timeout=60)
    assert [body(e)["epoch"] for e in events] == list(range(20))
    assert all(body(e)["val_auc"] is None and e.run_id == run_id for e in events)
    # across Ray a record is its five fields: the receiver parses its text when it reads one
    assert isinstance(events[0].message, EpochMetrics) and events[0].message.epoch == 0
    ray.kill(actor)


@pytest.mark.usefixtures("ray_session")
def test_ray_publisher_follows_the_hubs_interest() -> None:
    hub = get_or_create_hub(namespace=session_namespace())
    kind = f"test_interest_{time.time_ns()}"  # a type no other test declares on the shared hub
    publisher = HubPublisher(hub, "interest-run", "fold-0")
    assert publisher.wants(kind) is False  # the first answer: waited for
    ray.get(hub.note_interest.remote(frozenset({kind}), 30.0), timeout=60)
    deadline = time.monotonic() + 10
    while not publisher.wants(kind):  # later answers refresh in the background
        assert time.monotonic() < deadline, "the publisher never saw the new interest"
        time.sleep(0.05)


@pytest.mark.usefixtures("ray_session")
def test_a_burst_goes_to_the_hub_in_few_calls_and_a_trailing_event_without_flush() -> None:
    hub = get_or_create_hub(namespace=session_namespace())
    run_id = "ray-batch-run"
    ray.get(hub.register_run.remote(run_id, None), timeout=60)
    batches_before = ray.get(hub.stats.remote(), timeout=60)["batches"]
    publisher = HubPublisher(hub, run_id, "burst-0", batch_window_s=0.05)
    for i in range(200):
        publisher.publish(note(str(i)))
    assert publisher.flush(timeout=30) is True
    events = ray.get(hub.run_events.remote(run_id), timeout=60)
    assert [int(label) for label in labels(events)] == list(range(200))
    batches = ray.get(hub.stats.remote(), timeout=60)["batches"] - batches_before
    assert 1 <= batches <= 20  # the first event went alone; 199 others in a few 50 ms windows
    # two events back to back and no flush: the second waits for its window, then goes by itself
    publisher.publish(note("200"))
    publisher.publish(note("201"))
    deadline = time.monotonic() + 30
    while len(ray.get(hub.run_events.remote(run_id), timeout=60)) < 202:
        assert time.monotonic() < deadline, "a batched event never reached the hub"
        time.sleep(0.02)


@pytest.mark.usefixtures("ray_session")
def test_a_type_someone_watches_goes_with_the_live_window_and_others_wait_for_theirs() -> None:
    # a hub of its own: the interest it declares must not reach other tests, nor theirs this one
    hub = get_or_create_hub(namespace=f"{session_namespace()}-live-window")
    for run_id in ("ray-quiet-run", "ray-watched-run"):
        ray.get(hub.register_run.remote(run_id, None), timeout=60)
    quiet = HubPublisher(hub, "ray-quiet-run", "quiet-0", batch_window_s=600.0)
    assert not quiet.wants("notification")  # nobody delivers notifications yet
    quiet.publish(note("q0"))  # the first goes at once, the second waits for its 600 s window
    quiet.publish(note("q1"))
    ray.get(hub.note_interest.remote(frozenset({"notification"}), 30.0), timeout=60)
    watched = HubPublisher(hub, "ray-watched-run", "watched-0", batch_window_s=600.0)
    assert watched.wants("notification")  # its first question waits for the hub's answer
    watched.publish(note("w0"))
    time.sleep(2 * LIVE_BATCH_WINDOW_S)
    watched.publish(note("w1"))  # past the live window since the last send: at once
    deadline = time.monotonic() + 30
    while len(ray.get(hub.run_events.remote("ray-watched-run"), timeout=60)) < 2:
        assert time.monotonic() < deadline, "a watched event waited for the long window"
        time.sleep(0.02)
    assert labels(ray.get(hub.run_events.remote("ray-quiet-run"), timeout=60)) == ["q0"]
    assert quiet.flush(timeout=30) is True
    assert labels(ray.get(hub.run_events.remote("ray-quiet-run"), timeout=60)) == ["q0", "q1"]
    # a watched event that follows an unwatched one closely does not wait for the long timer
    mixed = HubPublisher(hub, "ray-watched-run", "mixed-0", batch_window_s=600.0)
    assert mixed.wants("notification")
    mixed.publish(epoch(0, 0))  # nobody watches epoch_metrics: goes at once (its first send)
    mixed.publish(epoch(0, 1))  # within its window: waits for the 600 s timer...
    mixed.publish(note("w2"))  # ...until a watched event takes the sooner end of the live window
    deadline = time.monotonic() + 30
    while len(ray.get(hub.run_events.remote("ray-watched-run"), timeout=60)) < 5:
        assert time.monotonic() < deadline, "a watched event waited for an unwatched one's window"
        time.sleep(0.02)
    ray.kill(hub)
