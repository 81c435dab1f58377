"""Runs outlive the API process on an existing cluster: ``kill -9`` of ``serve --address`` mid-run,
a new ``serve --address`` on the same store, and a client that resumes with ``since`` gets every
event exactly once (issue 12's acceptance, with a real ``ray start --head --block``)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from orchestrator.store import JobStore
from tests.head_node import FOLDS, Serve, free_ports, head_node
from tests.made_events import bodies
from tests.synthetic import ar1_ohlcv

EPOCHS = 30


@pytest.fixture
def cluster() -> Iterator[str]:
    """A real head node (``ray start --head --block``) in its own process group, on free ports."""
    with head_node() as address:
        yield address


def _train(serve: Serve, epochs: int, **fields: Any) -> str:
    response = httpx.post(serve.url + "/train", json={"epochs": epochs, **fields}, timeout=30)
    assert response.status_code == 202, response.text
    return str(response.json()["run_id"])


async def _follow(url: str, stop_after_epochs: int | None) -> list[dict[str, Any]]:
    """Events until the run's terminal one, or until ``stop_after_epochs`` epoch_metrics."""
    got: list[dict[str, Any]] = []
    async with websockets.connect(url, proxy=None) as ws:
        async with asyncio.timeout(300):
            async for text in ws:
                message = json.loads(text)
                got.append(message)
                epochs = sum(m["type"] == "epoch_metrics" for m in got)
                if stop_after_epochs is not None and epochs >= stop_after_epochs:
                    break
                if message["type"] in ("training_complete", "training_error"):
                    break
    return got


def _bars_and_port(tmp_path: Path) -> tuple[Path, Path, int]:
    """The bars CSV, the reports folder and the port every ``Serve`` of one test uses."""
    data = tmp_path / "bars.csv"
    ar1_ohlcv(2400, seed=7).to_csv(data, index=False)
    return data, tmp_path / "reports", free_ports(1)[0]


def test_a_run_outlives_a_killed_api_process_and_its_client_resumes_exactly_once(
    cluster: str, tmp_path: Path
) -> None:
    data, reports, port = _bars_and_port(tmp_path)
    first = Serve(cluster, port, reports, data)
    try:
        earlier = _train(first, 2)
        done = asyncio.run(_follow(f"ws://127.0.0.1:{port}/ws?run_id={earlier}", None))
        assert done[-1]["type"] == "training_complete", done[-1]
        run_id = _train(first, EPOCHS, batch_size=8)  # small steps: still training after the restart
        before = asyncio.run(_follow(f"ws://127.0.0.1:{port}/ws?run_id={run_id}", 3))
        first.proc.send_signal(signal.SIGKILL)  # kill -9 of the API process, mid-run
        first.proc.wait(30)
        killed_at = time.time()
    finally:
        first.stop()
    last_seq = before[-1]["seq"]

    second = Serve(cluster, port, reports, data)
    back_at = time.time()
    try:
        on_return = httpx.get(f"{second.url}/runs/{run_id}", timeout=10).json()["state"]
        after = asyncio.run(_follow(f"ws://127.0.0.1:{port}/ws?run_id={run_id}&since={last_seq}", None))
        listed = [r["run_id"] for r in httpx.get(second.url + "/runs", timeout=10).json()["runs"]]
        snapshot = httpx.get(f"{second.url}/runs/{run_id}", timeout=10).json()
    finally:
        second.stop()

    both = before + after
    assert all(m["type"] != "history_gap" for m in both)
    assert after[-1]["type"] == "training_complete", after[-1]
    seqs = [m["seq"] for m in both]
    assert seqs == sorted(set(seqs)), "seq must increase without repeats"
    epochs = [(m["fold_id"], m["epoch"]) for m in both if m["type"] == "epoch_metrics"]
    assert sorted(epochs) == [(f, e) for f in range(FOLDS) for e in range(EPOCHS)]
    assert len(epochs) == len(set(epochs)) == FOLDS * EPOCHS
    store = JobStore.open(f"sqlite:///{reports / 'orchestrator.db'}")
    try:
        assert both == bodies(store.events_since(0, run_id))
    finally:
        store.close()
    assert listed[:2] == [run_id, earlier]
    assert on_return in ("running", "completed")  # never interrupted: its coordinator went on
    assert snapshot["state"] == "completed"
    assert (
        snapshot["progress"]["epochs_done"] == FOLDS * EPOCHS and snapshot["progress"]["folds_done"] == FOLDS
    )
    print(
        f"state when the new server answered: {on_return}; killed at {killed_at:.1f}, back at "
        f"{back_at:.1f}, run ended at {after[-1]['ts']:.1f}, first epoch at {before[0]['ts']:.1f}"
    )


def _queue(serve: Serve) -> list[tuple[str, int]]:
    body = httpx.get(serve.url + "/queue", timeout=10).json()
    return [(entry["run_id"], entry["priority"]) for entry in body["queue"]]


def test_the_queue_outlives_a_killed_api_process_in_its_order(cluster: str, tmp_path: Path) -> None:
    data, reports, port = _bars_and_port(tmp_path)
    first = Serve(cluster, port, reports, data)
    try:
        busy = _train(first, 400, batch_size=8)  # two folds on the cluster's two CPUs
        later = _train(first, 3)
        sooner = _train(first, 3, priority=3)
        assert _queue(first) == [(sooner, 3), (later, 0)]
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(30)
    finally:
        first.stop()

    second = Serve(cluster, port, reports, data)
    try:
        assert _queue(second) == [(sooner, 3), (later, 0)]  # from the store, the running run still held
        assert httpx.get(f"{second.url}/runs/{later}", timeout=10).json()["queue_position"] == 2
        assert httpx.post(f"{second.url}/runs/{busy}/cancel", timeout=10).status_code == 202
        ends = {}
        for run_id in (sooner, later):
            events = asyncio.run(_follow(f"ws://127.0.0.1:{port}/ws?run_id={run_id}", None))
            assert events[-1]["type"] == "training_complete", events[-1]
            ends[run_id] = events
        states = {
            r: httpx.get(f"{second.url}/runs/{r}", timeout=10).json()["state"] for r in (busy, sooner, later)
        }
    finally:
        second.stop()
    assert states == {busy: "cancelled", sooner: "completed", later: "completed"}
    assert ends[sooner][0]["ts"] < ends[later][0]["ts"]  # the higher priority started first
