"""``orchestrator watch``: the terminal client against a real server, with a dropped connection."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from pydantic import BaseModel

from orchestrator.console.watch import EXIT_COMPLETE, EXIT_ERROR, RunFollower, ws_url_with
from orchestrator.messages import HEAVY_TYPES, parse_message

pytest.register_assert_rewrite("tests.api_fixtures")
from tests import made_events  # noqa: E402
from tests.api_fixtures import ApiServer, assert_legal_run  # noqa: E402

pytest_plugins = ["tests.api_fixtures"]
pytestmark = pytest.mark.usefixtures("release_idle_actors")

ROOT = Path(__file__).resolve().parents[1]


# ---- the pure part ---------------------------------------------------------------------------


_BODIES: dict[str, dict[str, Any]] = {
    "dataset_ready": {"type": "dataset_ready", "size": 9, "min_samples": 1},
    "training_start": made_events.start(1, 2),
    "epoch_metrics": made_events.epoch(0, 0),
    "notification": made_events.note(0),
    "training_complete": made_events.complete(),
    "training_error": made_events.error("x"),
}


def event(seq: int, kind: str, run_id: str = "A") -> BaseModel:
    """A message as a client parses it from its frame."""
    return parse_message({**_BODIES[kind], "seq": seq, "run_id": run_id, "ts": 1.0})


def test_follower_follows_the_first_run_and_exits_with_its_outcome() -> None:
    follower = RunFollower()
    assert follower.accept(event(1, "dataset_ready"))
    assert not follower.accept(event(2, "epoch_metrics", run_id="B"))  # another run
    assert not follower.accept(event(1, "dataset_ready"))  # a duplicate seq is never shown twice
    assert follower.accept(event(3, "notification", run_id="data_feed"))  # names no run to follow
    assert follower.run_id == "A" and follower.last_seq == 3
    assert follower.exit_code(event(3, "training_complete", run_id="B")) is None
    assert follower.exit_code(event(4, "training_error")) == EXIT_ERROR
    keep = RunFollower(keep_going=True)
    keep.accept(event(1, "training_start"))
    assert keep.exit_code(event(2, "training_complete")) is None and keep.run_id is None
    # the server replays the next run from its start: its seqs are below the last one received
    assert keep.accept(event(1, "training_start", run_id="C")) and keep.last_seq == 1
    assert keep.run_id == "C" and keep.finished == [("A", "training_complete")]
    assert not keep.accept(event(1, "training_start", run_id="C"))
    named = RunFollower(run_id="Z")
    assert not named.accept(event(1, "training_start"))
    assert named.exit_code(event(2, "training_complete", run_id="Z")) == EXIT_COMPLETE


def test_after_a_hub_restart_the_follower_takes_the_events_after_the_resume_point_again() -> None:
    follower = RunFollower()
    for seq in (1, 2, 3, 4):
        assert follower.accept(event(seq, "epoch_metrics" if seq > 1 else "training_start"))
    follower.rewind(2)  # close 4012: "reconnect with ?since=2"
    assert follower.last_seq == 2
    assert follower.accept(event(3, "epoch_metrics"))  # seq 3 again: another event now, shown
    assert not follower.accept(event(3, "epoch_metrics"))  # but never twice


def test_ws_url_with_sets_query_parameters() -> None:
    assert ws_url_with("ws://h:1/ws", since=5, run_id=None) == "ws://h:1/ws?since=5"
    assert ws_url_with("ws://h:1/ws?types=all", since=7) == "ws://h:1/ws?types=all&since=7"


# ---- against the server ----------------------------------------------------------------------


class DroppingProxy:
    """A TCP proxy to the server that cuts its first connection after ``cut_after`` bytes from
    the server (mid-frame, most likely), and passes later connections through."""

    def __init__(self, upstream: tuple[str, int], cut_after: int) -> None:
        self.upstream = upstream
        self.cut_after = cut_after
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            server = socket.create_connection(self.upstream)
            limit = self.cut_after if self.connections == 1 else None
            threading.Thread(target=self._pipe, args=(client, server, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, limit), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while True:
                data = source.recv(512)
                if not data:
                    break
                if limit is not None and sent + len(data) >= limit:
                    sink.sendall(data[: limit - sent])
                    break
                sink.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self.listener.close()


def start_watch(url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "watch", url, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(process: subprocess.Popen[str], needle: str) -> list[str]:
    assert process.stderr is not None
    lines = []
    for line in process.stderr:
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"watch ended before printing {needle!r}: {''.join(lines)}")


T = TypeVar("T")


def watch_while(url: str, start: Callable[[], T], *args: str) -> tuple[T, int, str]:
    """Run ``watch url args``; once it is connected, ``start()`` (the runs it is to see); wait
    for it to exit. Returns what ``start`` returned, the exit code and what watch printed."""
    watch = start_watch(url, *args)
    try:
        head = wait_for_line(watch, "connected to")
        started = start()
        _, rest = watch.communicate(timeout=120)
    finally:
        if watch.poll() is None:
            watch.kill()
    return started, watch.returncode, "".join(head) + rest


@pytest.fixture
def proxy(api_server: ApiServer) -> Iterator[DroppingProxy]:
    p = DroppingProxy((api_server.server.host, api_server.server.port), cut_after=3000)
    yield p
    p.close()


def test_watch_reconnects_with_since_and_exits_0_at_training_complete(
    api_server: ApiServer, proxy: DroppingProxy, tmp_path: Path
) -> None:
    events_out = tmp_path / "events.jsonl"
    run_id, code, output = watch_while(
        f"ws://127.0.0.1:{proxy.port}/ws",
        lambda: api_server.post_train(epochs=8),
        "--events-out",
        str(events_out),
    )
    assert code == 0, output
    assert proxy.connections >= 2 and "resuming after seq" in output
    assert "training complete" in output
    events = [json.loads(line) for line in events_out.read_text().splitlines()]
    assert {e["run_id"] for e in events} == {run_id}
    assert_legal_run(events, folds=2, epochs=8)  # every seq once: nothing lost or repeated
    reference = httpx.get(f"{api_server.url}/runs/{run_id}/events").json()["events"]
    assert events == [e for e in reference if e["type"] not in HEAVY_TYPES]  # the default types


def test_watch_exits_1_when_the_run_fails(api_server: ApiServer) -> None:
    run_id, code, output = watch_while(
        api_server.ws_url, lambda: api_server.post_train(min_samples=100_000), "--quiet"
    )
    assert code == EXIT_ERROR, output
    assert "fewer than min_samples=100000" in output
    api_server.wait_done(run_id)


def test_watch_exits_2_when_refused(api_server: ApiServer) -> None:
    with api_server.another_server(token="s3cret") as server:
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator", "watch", server.ws_url, "--token", "wrong"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2 and "401" in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "watch", f"{api_server.ws_url}", "--types", "bogus"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "bogus" in done.stderr


@pytest.mark.slow
def test_serve_train_on_start_then_watch_and_a_clean_sigint(tmp_path: Path) -> None:
    """The README's flow as a user runs it: its own Ray instance, a run at start, a watcher."""
    import asyncio
    import signal

    import websockets
    from websockets.exceptions import ConnectionClosed

    from tests.synthetic import ar1_ohlcv

    data = tmp_path / "bars.csv"
    ar1_ohlcv(1200, seed=2).to_csv(data, index=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "serve",
            "--port",
            str(port),
            "--train-on-start",
            "--data",
            str(data),
            "--min-samples",
            "500",
            "--folds",
            "2",
            "--epochs",
            "3",
            "--set",
            "lookback=10",
            "--reports-dir",
            str(tmp_path / "reports"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        runs: list[dict[str, Any]] = []
        for _ in range(600):
            try:
                runs = httpx.get(f"http://127.0.0.1:{port}/runs", timeout=2).json()["runs"]
                if runs:
                    break
            except httpx.HTTPError:
                pass
            assert serve.poll() is None, serve.stderr.read() if serve.stderr else ""
            threading.Event().wait(0.2)
        assert runs, "no run was started"
        watch = subprocess.run(
            [
                sys.executable,
                "-m",
                "orchestrator",
                "watch",
                f"ws://127.0.0.1:{port}/ws",
                "--run-id",
                runs[0]["run_id"],
                "--quiet",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert watch.returncode == 0, watch.stderr
        assert "training complete: 2 folds" in watch.stderr

        async def interrupted() -> int | None:
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws", proxy=None) as ws:
                serve.send_signal(signal.SIGINT)
                try:
                    await asyncio.wait_for(ws.recv(), 30)
                except ConnectionClosed as closed:
                    return closed.rcvd.code if closed.rcvd else None
            return None

        assert asyncio.run(interrupted()) == 4001
        serve.wait(timeout=120)
    finally:
        if serve.poll() is None:
            serve.kill()
