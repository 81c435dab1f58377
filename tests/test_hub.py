"""EventHub without Ray: ordering, de-duplication, stamping, replay, gaps, memory, polling."""

from __future__ import annotations

import asyncio
import json
import math
import random
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orchestrator.events.hub import EventHub, PollReply
from orchestrator.messages import EpochMetrics, parse_message
from tests.made_events import body, complete, epoch, error, fold_done, labels, note, seqs, start

RUN = "run-1"
__all__ = ["RUN", "complete", "epoch", "note", "publish_in_order"]


def publish_in_order(hub: EventHub, events: list[dict[str, Any]], producer: str = "driver") -> None:
    for pseq, event in enumerate(events):
        hub.publish(RUN, producer, pseq, event)


def test_shuffled_arrival_is_released_in_each_producers_order() -> None:
    hub = EventHub()
    hub.register_run(RUN, None)
    rng = random.Random(7)
    arrivals = [(f"fold-{p}", i) for p in range(3) for i in range(50)]
    rng.shuffle(arrivals)
    released_at_once = 0
    for producer, pseq in arrivals:
        released = hub.publish(RUN, producer, pseq, note(pseq, kind=producer))
        released_at_once = max(released_at_once, len(released))
    events = hub.run_events(RUN)
    assert seqs(events) == list(range(1, 151))
    for p in range(3):
        mine = [int(body(e)["message"]) for e in events if body(e)["kind"] == f"fold-{p}"]
        assert mine == list(range(50))
    assert released_at_once > 1  # some arrivals really were early and waited in the buffer
    assert all(e.run_id == RUN and isinstance(e.ts, float) for e in events)
    assert hub.stats()["buffered"] == 0


def test_early_event_waits_for_the_missing_one() -> None:
    hub = EventHub()
    assert hub.publish(RUN, "driver", 1, note(1)) == []
    released = hub.publish(RUN, "driver", 0, note(0))
    assert list(zip(labels(released), seqs(released), strict=True)) == [("0", 1), ("1", 2)]


def test_duplicates_are_dropped() -> None:
    hub = EventHub()
    publish_in_order(hub, [note(0), note(1)])
    assert hub.publish(RUN, "driver", 1, note(1)) == []
    assert hub.publish(RUN, "driver", 3, note(3)) == []
    assert hub.publish(RUN, "driver", 3, note(3)) == []  # duplicate of a buffered one
    assert labels(hub.publish(RUN, "driver", 2, note(2))) == ["2", "3"]
    assert seqs(hub.run_events(RUN)) == [1, 2, 3, 4]
    assert hub.stats()["dropped_stale"] == 2


def test_retried_fold_does_not_repeat_epochs_or_completion() -> None:
    hub = EventHub()
    first = [epoch(0, 0), epoch(0, 1)]
    batch = {
        "type": "batch_progress",
        "fold_id": 0,
        "epoch": 2,
        "batch": 0,
        "total_batches": 9,
        "train_loss": None,
        "samples_per_second": None,
    }
    retry = [
        epoch(0, 0),
        epoch(0, 1),
        epoch(0, 2),
        {"type": "prediction_delta", "fold_id": 0, "epoch": 2, "predictions": []},
        {"type": "prediction_delta", "fold_id": 0, "epoch": 2, "predictions": []},
        batch,
        batch,
        fold_done(0),
        fold_done(0),
        epoch(1, 0),  # another fold's epoch 0 is new
    ]
    publish_in_order(hub, first, "fold-0-attempt-0")
    publish_in_order(hub, retry, "fold-0-attempt-1")
    kinds = [(e.type, body(e)["fold_id"], body(e).get("epoch")) for e in hub.run_events(RUN)]
    assert kinds == [
        ("epoch_metrics", 0, 0),
        ("epoch_metrics", 0, 1),
        ("epoch_metrics", 0, 2),
        ("prediction_delta", 0, 2),
        ("batch_progress", 0, 2),
        ("fold_complete", 0, None),
        ("epoch_metrics", 1, 0),
    ]
    assert hub.stats()["dropped_retry"] == 5
    assert hub.last_seq() == 7  # dropped events take no seq


def test_same_fold_and_epoch_in_another_run_is_not_a_retry() -> None:
    hub = EventHub()
    hub.publish("a", "driver", 0, epoch(0, 0))
    assert len(hub.publish("b", "driver", 0, epoch(0, 0))) == 1


def test_replay_since_a_seq_with_filters_and_limit() -> None:
    hub = EventHub()
    for pseq in range(10):
        hub.publish("a" if pseq % 2 == 0 else "b", "driver", pseq // 2, note(pseq))
    events, gap = hub.events_since(6)
    assert seqs(events) == [7, 8, 9, 10] and gap is None
    events, gap = hub.events_since(6, run_id="b")
    assert seqs(events) == [8, 10] and gap is None
    events, _ = hub.events_since(0, limit=3)
    assert seqs(events) == [1, 2, 3]
    events, _ = hub.events_since(0, types=frozenset({"epoch_metrics"}))
    assert events == []
    assert hub.events_since(10) == ([], None)
    with pytest.raises(ValueError, match="since_seq=-1"):
        hub.events_since(-1)


def test_gap_reported_when_history_is_truncated_and_memory_is_bounded() -> None:
    hub = EventHub(max_events=5)
    publish_in_order(hub, [note(i) for i in range(12)])
    assert hub.stats()["held_events"] == 5
    events, gap = hub.events_since(0)
    assert seqs(events) == [8, 9, 10, 11, 12]
    assert gap == 8
    assert hub.events_since(6)[1] == 8
    assert hub.events_since(7) == (events, None)  # 8 is the first wanted and still held
    assert seqs(hub.events_since(10)[0]) == [11, 12]


def test_gap_for_one_run_only_when_that_run_lost_events() -> None:
    hub = EventHub(max_events=4)
    publish_in_order(hub, [note(i) for i in range(4)])  # run-1: seq 1..4
    hub.publish("run-2", "driver", 0, note(0))  # seq 5 pushes seq 1 out
    assert hub.events_since(0, run_id="run-2")[1] is None
    assert hub.events_since(0, run_id=RUN)[1] == 2


def test_invalid_arguments_name_the_value() -> None:
    with pytest.raises(ValueError, match="max_events=0"):
        EventHub(max_events=0)
    with pytest.raises(ValueError, match="pseq=-1"):
        EventHub().publish(RUN, "driver", -1, note(0))


def test_an_event_that_is_no_message_of_the_contract_is_dropped_but_does_not_stall_its_producer() -> None:
    hub = EventHub()
    hub.publish(RUN, "driver", 0, {"no_type": 1})
    hub.publish(RUN, "driver", 1, {**note(1), "bad": object()})  # an unknown field
    hub.publish(RUN, "driver", 2, '{"type": "epoch_metrics", "fold_id": 0}')  # fields missing
    hub.publish(RUN, "driver", 3, "not json")
    released = hub.publish(RUN, "driver", 4, note(4))
    assert seqs(released) == [1]
    assert hub.stats()["dropped_invalid"] == 4


def test_nan_and_infinity_become_null() -> None:
    hub = EventHub()
    event = epoch(0, 0, val_auc=float("nan"), ECE=float("inf"), train_loss=0.5)
    (stamped,) = hub.publish(RUN, "fold-0", 0, event)
    assert body(stamped)["val_auc"] is None and body(stamped)["ECE"] is None
    assert body(stamped)["train_loss"] == 0.5
    assert isinstance(stamped.message, EpochMetrics) and stamped.message.val_auc is None
    assert math.isnan(event["val_auc"])  # the caller's dict is not modified
    json.loads(stamped.text, parse_constant=lambda name: pytest.fail(f"{name} in the text"))


def test_numpy_values_are_made_plain_instead_of_dropping_the_event() -> None:
    hub = EventHub()
    event = epoch(np.int64(2), 0, val_auc=np.float32("nan"), DirAcc=np.float32(0.5))
    (stamped,) = hub.publish(RUN, "fold-2", 0, event)
    assert body(stamped)["fold_id"] == 2 and type(body(stamped)["fold_id"]) is int
    assert body(stamped)["val_auc"] is None and body(stamped)["DirAcc"] == 0.5


def test_a_record_is_the_message_text_once_with_the_envelope_in_front() -> None:
    hub = EventHub()
    text = '{"type":"training_error","error":"boom \u00e9"}'
    (record,) = hub.publish(RUN, "driver", 0, text)
    assert (
        record.text
        == f'{{"run_id":"{RUN}","seq":1,"ts":{record.ts!r},"type":"training_error","error":"boom \u00e9"}}'
    )
    assert (record.seq, record.run_id, record.type) == (1, RUN, "training_error")
    assert parse_message(record.text) == record.message  # the text and the typed message agree
    assert record.message.seq == 1 and record.message.run_id == RUN and record.message.ts == record.ts


def test_a_buffer_past_its_bound_skips_the_missing_event() -> None:
    hub = EventHub(max_pending=3)
    for pseq in (1, 2, 3):
        assert hub.publish(RUN, "driver", pseq, note(pseq)) == []
    released = hub.publish(RUN, "driver", 4, note(4))
    assert labels(released) == ["1", "2", "3", "4"]
    assert hub.publish(RUN, "driver", 0, note(0)) == []  # given up: dropped, never out of order
    assert hub.stats()["order_gaps_skipped"] == 1


def test_close_producer_releases_what_it_buffered_and_drops_stragglers() -> None:
    hub = EventHub()
    hub.publish(RUN, "fold-0", 0, note(0))
    hub.publish(RUN, "fold-0", 2, note(2))
    hub.close_producer(RUN, "fold-0")
    assert labels(hub.run_events(RUN)) == ["0", "2"]
    assert hub.publish(RUN, "fold-0", 1, note(1)) == []
    assert hub.publish(RUN, "fold-0", 3, note(3)) == []
    assert hub.stats()["buffered"] == 0


def test_running_runs_are_those_started_and_not_ended_oldest_start_first(tmp_path: Path) -> None:
    hub = EventHub()
    assert hub.running_runs() == []
    hub.register_run("a", None)
    hub.register_run("b", str(tmp_path))
    assert hub.running_runs() == []  # registered, not started: loading its data
    hub.publish("b", "driver", 0, {"type": "dataset_ready", "size": 10, "min_samples": 5})  # seq 1
    hub.publish("stray", "driver", 0, note(0))  # seq 2: a run that never starts
    hub.publish("a", "driver", 0, start(2, 3))  # seq 3
    hub.publish("c", "driver", 0, error("no data"))  # 4: never ran
    assert hub.running_runs() == ["b", "a"]  # by the seq of their start, not registration
    hub.publish("b", "driver", 1, error("boom"))  # seq 5
    assert hub.running_runs() == ["a"]
    assert hub.running_runs(at=4) == ["b", "a"] and hub.running_runs(at=2) == ["b"]
    assert hub.running_runs(at=0) == []
    hub.publish("a", "driver", 1, complete())  # seq 6
    assert hub.running_runs() == [] and hub.running_runs(at=5) == ["a"]
    with pytest.raises(ValueError, match="already registered"):
        hub.register_run("b", None)


def test_old_finished_runs_are_forgotten_past_max_runs() -> None:
    hub = EventHub(max_runs=2)
    for name in ("r0", "r1", "r2"):
        hub.register_run(name, None)
        hub.publish(name, "driver", 0, error("x"))
    assert hub.stats()["runs"] == 2
    assert hub.publish("r0", "driver", 1, note(1)) == []  # a straggler of a forgotten run
    assert hub.stats()["dropped_forgotten"] == 1
    assert [e.run_id for e in hub.run_events("r0")] == ["r0"]  # its events stay in history


def test_poll_returns_after_timeout_with_no_events() -> None:
    hub = EventHub()
    publish_in_order(hub, [note(0)])

    async def main() -> tuple[PollReply, float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        answer = await hub.poll(1, timeout=0.2)
        return answer, loop.time() - start

    answer, waited = asyncio.run(main())
    assert (answer["events"], answer["last_seq"], answer["gap"], answer["store"]) == ([], 1, None, None)
    assert answer["hub"] == hub.identity and answer["hub"]["restored_at"] == 0  # who answered
    assert 0.15 <= waited < 2.0


def test_poll_returns_at_once_when_events_exist() -> None:
    hub = EventHub()
    publish_in_order(hub, [note(0), note(1)])
    answer = asyncio.run(hub.poll(0, timeout=30))
    assert seqs(answer["events"]) == [1, 2] and answer["last_seq"] == 2


def test_concurrent_pollers_all_get_every_event() -> None:
    hub = EventHub()
    total = 60

    async def poller() -> list[int]:
        seen: list[int] = []
        cursor = 0
        while len(seen) < total:
            answer = await hub.poll(cursor, timeout=5)
            seen += seqs(answer["events"])
            cursor = answer["last_seq"]
        return seen

    async def producer() -> None:
        for pseq in range(total):
            hub.publish(RUN, "driver", pseq, note(pseq))
            if pseq % 7 == 0:
                await asyncio.sleep(0.005)

    async def main() -> list[list[int]]:
        pollers = [asyncio.create_task(poller()) for _ in range(10)]
        await asyncio.sleep(0.01)  # let them all wait first
        assert hub.stats()["pollers"] == 10
        await producer()
        return await asyncio.wait_for(asyncio.gather(*pollers), timeout=10)

    results = asyncio.run(main())
    assert results == [list(range(1, total + 1))] * 10


def test_poll_filtered_by_run_waits_for_that_run_and_advances_the_cursor() -> None:
    hub = EventHub()

    async def main() -> PollReply:
        task = asyncio.create_task(hub.poll(0, timeout=5, run_id="b"))
        await asyncio.sleep(0.01)
        hub.publish("a", "driver", 0, note(0))
        await asyncio.sleep(0.01)
        assert not task.done()  # another run's event does not answer a filtered poll
        hub.publish("b", "driver", 0, note(1))
        return await asyncio.wait_for(task, timeout=5)

    answer = asyncio.run(main())
    assert [(e.run_id, e.seq) for e in answer["events"]] == [("b", 2)]
    assert answer["last_seq"] == 2


def test_publish_from_another_thread_wakes_a_poller() -> None:
    hub = EventHub()

    async def main() -> PollReply:
        task = asyncio.create_task(hub.poll(0, timeout=5))
        await asyncio.sleep(0.01)
        thread = threading.Thread(target=hub.publish, args=(RUN, "driver", 0, note(0)))
        thread.start()
        answer = await asyncio.wait_for(task, timeout=5)
        thread.join()
        return answer

    assert seqs(asyncio.run(main())["events"]) == [1]
