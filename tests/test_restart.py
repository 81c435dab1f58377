"""Runs outlive the API process on an existing cluster: ``kill -9`` of ``serve --address`` mid-run,
a new ``serve --address`` on the same store, and a client that resumes with ``since`` gets every
event exactly once (issue 12's acceptance, with a real ``ray start --head --block``)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from orchestrator.store import JobStore
from tests.made_events import bodies
from tests.synthetic import ar1_ohlcv

ROOT = Path(__file__).resolve().parents[1]
FOLDS, EPOCHS = 2, 30
_GRACE_S = 10.0


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    for name in ("RAY_ADDRESS", "ORCHESTRATOR_DB"):
        env.pop(name, None)
    return env


def _stop_group(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM to the process group, SIGKILL after a grace period."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(_GRACE_S)


@pytest.fixture
def cluster() -> Iterator[str]:
    """A real head node (``ray start --head --block``) in its own process group, on free ports."""
    ports = _free_ports(8)
    gcs, node_manager, object_manager, client, agent_listen, agent_grpc, metrics, runtime_env = ports
    low = _free_ports(1)[0] % 20_000 + 30_000
    while any(low <= port <= low + 200 for port in ports):  # Ray refuses a worker range over them
        low = (low + 211 - 30_000) % 20_000 + 30_000
    temp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths are limited
    log = open(Path(temp) / "ray-start.log", "w")
    head = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "start",
            "--head",
            "--block",
            "--port",
            str(gcs),
            "--node-ip-address",
            "127.0.0.1",
            "--num-cpus",
            "2",
            "--num-gpus",
            "0",
            "--include-dashboard",
            "false",
            "--disable-usage-stats",
            "--temp-dir",
            temp,
            "--node-manager-port",
            str(node_manager),
            "--object-manager-port",
            str(object_manager),
            "--ray-client-server-port",
            str(client),
            "--dashboard-agent-listen-port",
            str(agent_listen),
            "--dashboard-agent-grpc-port",
            str(agent_grpc),
            "--metrics-export-port",
            str(metrics),
            "--runtime-env-agent-port",
            str(runtime_env),
            "--min-worker-port",
            str(low),
            "--max-worker-port",
            str(low + 200),
        ],
        env=_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    address = f"127.0.0.1:{gcs}"
    try:
        deadline = time.monotonic() + 90
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", gcs)) == 0:
                    break
            assert head.poll() is None, "ray start exited: " + Path(log.name).read_text()[-3000:]
            assert time.monotonic() < deadline, "the head node did not come up"
            time.sleep(0.2)
        yield address
    finally:
        _stop_group(head)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


class Serve:
    """One ``serve --address`` process."""

    def __init__(self, address: str, port: int, reports: Path, data: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(reports.parent / f"serve-{time.monotonic_ns()}.log", "w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "orchestrator",
                "serve",
                "--address",
                address,
                "--port",
                str(port),
                "--reports-dir",
                str(reports),
                "--data",
                str(data),
                "--folds",
                str(FOLDS),
                "--set",
                "min_samples=500",
                "--set",
                "lookback=10",
                "--set",
                "patience=10000",
                "--log-level",
                "warning",
            ],
            cwd=reports.parent,
            env=_env(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(self.url + "/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.log.flush()
                raise AssertionError(Path(self.log.name).read_text()[-3000:])
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


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
    return data, tmp_path / "reports", _free_ports(1)[0]


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
