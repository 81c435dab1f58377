"""Every actor can die (issue 20, faults), on a real ``ray start --head`` with ``serve --address``:
``kill -9`` of the EventHub actor mid-run (it comes back rebuilt from the job store, producers lose
nothing, a client resumes without gap or repeat), ``kill -9`` of a run's coordinator (its run ends
everywhere), and a run after an HPO study (the study's idle warm actors give their CPUs back).

One head node and one server for the module; each test has runs of its own."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from orchestrator.store import JobStore
from tests.head_node import FOLDS, Serve, actor_pid, free_ports, head_node
from tests.made_events import bodies
from tests.synthetic import ar1_ohlcv

TERMINAL = ("training_complete", "training_error")


@dataclass
class Cluster:
    address: str
    serve: Serve
    reports: Path

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.serve.port}/ws"

    def get(self, path: str) -> Any:
        return httpx.get(self.serve.url + path, timeout=30).json()

    def train(self, epochs: int, **fields: Any) -> str:
        response = httpx.post(self.serve.url + "/train", json={"epochs": epochs, **fields}, timeout=30)
        assert response.status_code == 202, response.text
        return str(response.json()["run_id"])

    def store(self) -> JobStore:
        return JobStore.open(f"sqlite:///{self.reports / 'orchestrator.db'}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("faults")
    data = tmp / "bars.csv"
    ar1_ohlcv(2400, seed=7).to_csv(data, index=False)
    with head_node() as address:
        serve = Serve(address, free_ports(1)[0], tmp / "reports", data)
        try:
            yield Cluster(address, serve, tmp / "reports")
        finally:
            serve.stop()


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


async def _follow(
    url: str, kill_after_epochs: int, kill: Any, timeout: float = 300
) -> tuple[list[dict[str, Any]], list[str]]:
    """The run's messages as a resuming client assembles them (a close with 4012 names where to
    resume: what came after it is dropped and comes again), and the close reasons it got."""
    got: list[dict[str, Any]] = []
    closes: list[str] = []
    killed = False
    async with asyncio.timeout(timeout):
        while True:
            since = f"&since={got[-1]['seq']}" if got else ""
            try:
                async with websockets.connect(url + since, proxy=None, max_size=2**24) as ws:
                    async for text in ws:
                        got.append(json.loads(text))
                        epochs = sum(m["type"] == "epoch_metrics" for m in got)
                        if not killed and epochs >= kill_after_epochs:
                            killed = True
                            await asyncio.to_thread(kill)
                        if got[-1]["type"] in TERMINAL:
                            return got, closes
            except ConnectionClosed as err:
                reason = err.rcvd.reason if err.rcvd is not None else "no close frame"
                closes.append(f"{err.rcvd.code if err.rcvd else 1006} {reason}")
                resume = re.search(r"since=(\d+)", reason)
                if resume is not None:
                    got = [m for m in got if m["seq"] <= int(resume.group(1))]
            except OSError:
                await asyncio.sleep(0.5)


def test_a_killed_hub_comes_back_and_a_client_resumes_without_gap_or_repeat(cluster: Cluster) -> None:
    epochs = 30
    run_id = cluster.train(epochs, batch_size=8)  # small steps: still training once the hub is back
    hub_pid = cluster.get("/")["hub"]["pid"]
    assert isinstance(hub_pid, int)
    got, closes = asyncio.run(_follow(f"{cluster.ws}?run_id={run_id}", 3, lambda: _kill(hub_pid)))
    assert got[-1]["type"] == "training_complete", (got[-1], closes)
    seqs = [m["seq"] for m in got]
    assert seqs == sorted(set(seqs)), "seq increases without repeats"
    trained = [(m["fold_id"], m["epoch"]) for m in got if m["type"] == "epoch_metrics"]
    assert sorted(trained) == [(f, e) for f in range(FOLDS) for e in range(epochs)]  # none lost
    assert len(trained) == len(set(trained))  # none twice
    health = cluster.get("/")
    assert health["hub"]["restarts"] >= 1 and health["hub"]["pid"] not in (None, hub_pid)
    assert cluster.get(f"/runs/{run_id}")["state"] == "completed"
    store = cluster.store()
    try:
        stored = store.events_since(0, run_id)
        assert bodies(stored) == got  # the store holds exactly what the client assembled
        row = store.get_run(run_id)
        assert row is not None and row["state"] == "completed"
        assert row["progress"]["epochs_done"] == FOLDS * epochs
    finally:
        store.close()
    run_dir = Path(cluster.get(f"/runs/{run_id}")["run_dir"])
    assert (run_dir / "events.jsonl").read_text().splitlines() == [r.text for r in stored]
    print(f"hub pid {hub_pid} killed; back as {health['hub']['pid']}; client closes: {closes}")


def test_a_killed_coordinator_ends_its_run_everywhere(cluster: Cluster) -> None:
    run_id = cluster.train(400, batch_size=8)  # far longer than this test waits
    coordinator = -1

    def kill() -> None:
        nonlocal coordinator
        coordinator = actor_pid(cluster.address, f"run:{run_id}")
        _kill(coordinator)

    got, closes = asyncio.run(_follow(f"{cluster.ws}?run_id={run_id}", 2, kill))
    assert got[-1]["type"] == "training_error", (got[-1], closes)
    assert "coordinator died" in got[-1]["error"]
    snapshot = cluster.get(f"/runs/{run_id}")
    assert snapshot["state"] == "failed" and "coordinator died" in snapshot["error"]
    assert run_id not in cluster.get("/")["running"]
    deadline = time.monotonic() + 30
    while True:  # the store's row follows the same event (written by the hub within moments)
        store = cluster.store()
        try:
            row = store.get_run(run_id)
        finally:
            store.close()
        assert row is not None
        if row["state"] != "running" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert row["state"] == "failed" and "coordinator died" in (row["error"] or "")
    print(f"coordinator pid {coordinator} killed: {got[-1]['error']}")


def test_a_run_after_an_hpo_study_gets_the_cpus_its_idle_warm_actors_held(cluster: Cluster) -> None:
    study = f"warm{time.time_ns() % 10**6}"
    body = {"study": study, "trials": 2, "parallel": 2, "pruner": "none", "config": {"epochs": 1}}
    response = httpx.post(cluster.serve.url + "/hpo", json=body, timeout=30)
    assert response.status_code == 202, response.text
    deadline = time.monotonic() + 300
    while (state := cluster.get(f"/hpo/{study}").get("state")) not in ("completed", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"study still {state}"
        time.sleep(1)
    assert state == "completed"
    idle = cluster.get("/queue")["idle_warm_workers"]
    assert idle >= 1, idle  # else nothing below tests the fix
    # its warm actors hold the cluster's CPUs while the queue counts them free: before this fix
    # the run was admitted and its folds waited for placement until it failed
    run_id = cluster.train(2, placement_timeout_s=30)
    deadline = time.monotonic() + 240
    while (snapshot := cluster.get(f"/runs/{run_id}"))["state"] not in ("completed", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"run still {snapshot['state']}"
        time.sleep(1)
    assert snapshot["state"] == "completed", snapshot["error"]
    assert cluster.get("/queue")["idle_warm_workers"] == 0
    print(f"{idle} idle warm actor(s) after the study; the run completed")
