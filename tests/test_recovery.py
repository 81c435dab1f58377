"""A hub that Ray restarted, rebuilt from its job store (no Ray): producers continued at their
stored positions, a retried call recognised, a run's events.jsonl cut back to what the store has,
milestones not sent twice, and a run ended only once."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from orchestrator.events.durable import restore_runs
from orchestrator.events.hub import EventHub
from orchestrator.events.recorder import StoreRecorder, open_recorder
from orchestrator.events.stream import Batch, EventStream, LocalHubClient
from orchestrator.store import JobStore
from orchestrator.store.schema import SCHEMA_VERSION
from tests.made_events import complete, epoch, error, labels, note, seqs, start


def _row(run_id: str, run_dir: Path) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "state": "pending",
        "config": '{"epochs": 4}',
        "priority": 0,
        "created_at": 1.0,
        "run_dir": str(run_dir),
    }


def _killed(recorder: StoreRecorder) -> None:
    """What a kill -9 leaves: what was written so far (the queue is lost); the lease is given up
    here only because this test's process lives on."""
    with recorder._cond:
        recorder._events.clear()
        recorder._closing = True
        recorder._cond.notify()
    assert recorder._thread is not None
    recorder._thread.join(10)
    recorder.store.release_lease(recorder.owner)
    recorder.store.close()


def test_a_restarted_hub_continues_each_producer_and_cuts_the_journal_back_to_the_store(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'orchestrator.db'}"
    run_dir = tmp_path / "run"
    first = StoreRecorder(JobStore.open(url), "first", flush_interval_s=3600)  # writes on flush()
    first.start()
    hub = EventHub(recorder=first)
    hub.record_run(_row("r", run_dir))
    hub.register_run("r", str(run_dir))
    hub.publish("r", "driver", 0, start(1, 4))
    for n in range(2):
        hub.publish("r", "fold-0", n, epoch(0, n, val_auc=0.5))  # epoch 1 of 4: the 50% milestone
    assert first.flush()
    stored = first.store.events_since(0, "r")
    hub.publish("r", "fold-0", 2, epoch(0, 2))  # with its 75% milestone: in the file, not stored,
    _killed(first)  # as when the hub dies before its writer's next batch
    journal = (run_dir / "events.jsonl").read_text().splitlines()
    assert len(journal) == len(stored) + 2

    second = open_recorder(url)
    restarted = EventHub(recorder=second)
    assert restore_runs(restarted, second.store) == ["r"]
    assert (run_dir / "events.jsonl").read_text().splitlines() == [r.text for r in stored]
    assert restarted.last_seq() == stored[-1].seq and restarted.running_runs() == ["r"]
    # Ray retries every call the dead hub had not acknowledged: pseq 1 was stored, 2 was not
    assert restarted.publish("r", "fold-0", 1, epoch(0, 1)) == []
    again, milestone = restarted.publish("r", "fold-0", 2, epoch(0, 2))
    assert again.seq == stored[-1].seq + 1 and json.loads(again.text)["epoch"] == 2
    assert "75%" in labels([milestone])[0]  # the milestones the store had are not sent again
    assert [r.type for r in restarted.publish("r", "fold-0", 3, epoch(0, 3))] == ["epoch_metrics"]
    assert restarted.publish("r", "driver", 1, complete())[0].type == "training_complete"
    assert restarted.publish("r", "coordinator-watch", 0, error("its coordinator died")) == []
    assert restarted.stats()["dropped_after_end"] == 1  # a run ends once
    assert second.flush()
    everything = second.store.events_since(0, "r")
    assert (run_dir / "events.jsonl").read_text().splitlines() == [r.text for r in everything]
    assert seqs(everything) == list(range(1, len(everything) + 1))
    notes = [json.loads(r.text)["message"] for r in everything if r.type == "notification"]
    assert [n.split("%")[0][-2:] for n in notes] == ["25", "50", "75"]  # each milestone once
    assert second.store.get_run("r")["state"] == "completed"  # type: ignore[index]
    assert second.store.producer_positions("r") == {"driver": 2, "fold-0": 4}
    second.close()


def test_an_older_store_gets_the_producers_table_and_is_upgraded(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    JobStore.open(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as conn:  # as version 1 left it
        conn.execute("DROP TABLE orch_producers")
        conn.execute("UPDATE orch_schema_version SET version = 1")
    store = JobStore.open(f"sqlite:///{path}")
    try:
        assert store.producer_positions("any") == {}
    finally:
        store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM orch_schema_version").fetchone() == (SCHEMA_VERSION,)


def test_the_stream_notices_a_restarted_hub_and_goes_back_to_where_it_continued() -> None:
    old = EventHub()
    for pseq in range(5):
        old.publish("r", "driver", pseq, note(pseq))
    client = LocalHubClient(old)
    batches: list[Batch] = []

    async def scenario() -> EventStream:
        stream = EventStream(client, poll_timeout_s=0.2)
        stream.subscribe(batches.append)
        await stream.start()
        old.publish("r", "driver", 5, note(5))
        assert await stream.drain(5) and stream.cursor == 6
        restarted = EventHub()  # its store had up to seq 3: it continues from there
        restarted._history.last_seq = restarted._history.start_seq = 3
        restarted.identity["restored_at"] = 3
        client._hub = restarted
        restarted.publish("r", "driver", 0, note("again"))  # released as its seq 4
        deadline = asyncio.get_running_loop().time() + 5
        while stream.cursor != 4:
            assert asyncio.get_running_loop().time() < deadline, stream.cursor
            await asyncio.sleep(0.01)
        await stream.stop()
        return stream

    stream = asyncio.run(scenario())
    restarts = [b for b in batches if b.restart is not None]
    assert [(b.since, b.restart, b.events) for b in restarts] == [(6, 3, [])]
    assert labels(batches[-1].events) == ["again"] and stream.restarts == 1
