"""The hub's journal in the job store (no Ray): batched writes, seq continuing, replay from the store,
the one-writer lease and runs marked interrupted."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.events.durable import mark_interrupted
from orchestrator.events.hub import EventHub
from orchestrator.events.recorder import StoreRecorder, open_recorder
from orchestrator.store import JobStore, LeaseHeldError
from tests import made_events
from tests.made_events import note, seqs, start


def epoch(fold_id: int, n: int) -> dict[str, Any]:
    return made_events.epoch(fold_id, n, val_auc=0.5)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'orchestrator.db'}"


def _dead_owner() -> str:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return f"{socket.gethostname()}:{gone.pid}:dead"


def _row(run_id: str) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "state": "pending",
        "config": '{"epochs": 2}',
        "priority": 0,
        "created_at": 1.0,
        "run_dir": None,
    }


@pytest.fixture
def recorded_hub(url: str) -> Iterator[tuple[EventHub, StoreRecorder]]:
    recorder = open_recorder(url)
    yield EventHub(recorder=recorder, max_events=7), recorder
    recorder.close()


def test_released_events_reach_the_store_exactly_as_sent_in_batches(
    recorded_hub: tuple[EventHub, StoreRecorder],
) -> None:
    hub, recorder = recorded_hub
    hub.record_run(_row("a"))
    for pseq in range(200):
        hub.publish("a", "driver", pseq, epoch(0, pseq + 1))
    assert recorder.flush()
    stored = recorder.store.events_since(0)
    assert seqs(stored) == list(range(1, 201))
    held = hub.run_events("a")
    assert stored[-len(held) :] == held  # the same records, their texts byte for byte: what /ws sends
    stats = recorder.stats()
    assert stats["written"] == 200 and stats["pending"] == 0
    assert stats["batches"] < 200  # never one transaction per event
    run = recorder.store.get_run("a")
    assert run is not None and run["progress"]["epochs_done"] == 200


def test_seq_continues_after_a_restart_and_every_since_is_answered_without_gap_or_repeat(url: str) -> None:
    first = open_recorder(url)
    hub = EventHub(recorder=first, max_events=7)
    for pseq in range(30):
        hub.publish(
            "a" if pseq % 3 else "b",
            f"p{pseq % 3 != 0}",
            pseq // 3 if pseq % 3 == 0 else pseq - pseq // 3 - 1,
            note(pseq),
        )
    first.close()

    second = open_recorder(url)
    restarted = EventHub(recorder=second, max_events=7)
    assert restarted.last_seq() == 30
    for pseq in range(12):
        restarted.publish("c", "driver", pseq, note(100 + pseq))
    assert restarted.last_seq() == 42
    assert second.flush()
    everything = second.store.events_since(0)
    assert seqs(everything) == list(range(1, 43))
    for since in range(0, 43):
        events, gap = restarted.events_since(since)
        assert gap is None
        assert events == everything[since:], since
        for run_id in ("a", "b", "c"):
            of_run, gap = restarted.events_since(since, run_id)
            assert gap is None and of_run == [e for e in everything[since:] if e.run_id == run_id]
    page, _ = restarted.events_since(3, limit=4)
    assert seqs(page) == [4, 5, 6, 7]
    reply = asyncio.run(restarted.poll(33, 0.0, limit=5))
    assert seqs(reply["events"]) == [34, 35, 36, 37, 38] and reply["last_seq"] == 38
    reply = asyncio.run(restarted.poll(2, 0.0))
    assert seqs(reply["events"]) == list(range(3, 43)) and reply["gap"] is None
    second.close()


def test_a_second_writer_is_refused_naming_the_first(url: str) -> None:
    first = open_recorder(url, owner=f"{socket.gethostname()}:{__import__('os').getpid()}:first")
    try:
        with pytest.raises(LeaseHeldError, match=":first"):
            open_recorder(url)
    finally:
        first.close()
    open_recorder(url).close()  # given up: free again


def test_unfinished_runs_of_a_gone_writer_are_marked_interrupted(url: str) -> None:
    old = StoreRecorder(JobStore.open(url), _dead_owner())
    old.start()
    hub = EventHub(recorder=old)
    hub.record_run(_row("lost"))
    hub.record_run(_row("done"))
    hub.publish("lost", "driver", 0, start(2, 2))
    hub.publish("done", "driver", 0, made_events.complete())
    assert old.flush()  # and then the process "dies" without giving the lease up

    recorder = open_recorder(url)
    restarted = EventHub(recorder=recorder)
    assert mark_interrupted(restarted, recorder.store) == ["lost"]
    assert recorder.flush()
    lost = recorder.store.get_run("lost")
    assert lost is not None and lost["state"] == "interrupted"
    assert lost["error"].startswith("interrupted: ") and ":dead" in lost["error"]
    errors = [e for e in recorder.store.events_since(0, "lost") if e.type == "training_error"]
    assert len(errors) == 1 and errors[0].seq == 3
    assert recorder.store.get_run("done")["state"] == "completed"  # type: ignore[index]
    assert mark_interrupted(restarted, recorder.store) == []
    recorder.close()
    old.close()  # its lease was taken: giving it up changes nothing


def test_a_store_that_cannot_be_written_keeps_the_events_queued_in_order(
    recorded_hub: tuple[EventHub, StoreRecorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub, recorder = recorded_hub
    real_append = recorder.store.append
    failures = iter([True, True])

    def flaky(runs: Any, batch: Any, *rest: Any) -> None:
        if next(failures, False):
            raise OSError("disk unplugged")
        real_append(runs, batch, *rest)

    monkeypatch.setattr(recorder.store, "append", flaky)
    for pseq in range(20):
        hub.publish("a", "driver", pseq, note(pseq))
    assert recorder.flush(15)
    assert seqs(recorder.store.events_since(0)) == list(range(1, 21))
    assert recorder.stats()["write_errors"] == 2
    health = recorder.health()
    assert health["ok"] and health["error"] is None and health["written"] == 20  # recovered


def test_a_run_the_store_had_before_this_hub_is_replayed_whole(url: str) -> None:
    old = StoreRecorder(JobStore.open(url), _dead_owner())
    old.start()
    hub = EventHub(recorder=old)
    hub.record_run(_row("lost"))
    hub.publish("lost", "driver", 0, {"type": "dataset_ready", "size": 9, "min_samples": 1})
    hub.publish("lost", "driver", 1, start(2, 2))
    assert old.flush()

    recorder = open_recorder(url)
    restarted = EventHub(recorder=recorder)
    mark_interrupted(restarted, recorder.store)  # the run is known to this hub from seq 3 on
    events, gap = restarted.events_since(0, "lost")
    assert gap is None
    assert [e.type for e in events] == ["dataset_ready", "training_start", "training_error"]
    assert seqs(restarted.events_since(2, "lost")[0]) == [3]
    recorder.close()
    old.close()  # its lease was taken: giving it up changes nothing
