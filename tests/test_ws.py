"""``/ws`` on a real uvicorn server with real ``websockets`` clients and runs trained on Ray."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from api.ws.connection import CloseCode
from orchestrator.events.publish import HubPublisher
from orchestrator.messages import HEAVY_TYPES

pytest.register_assert_rewrite("tests.api_fixtures")
from tests.api_fixtures import (  # noqa: E402
    ApiServer,
    assert_legal_run,
    assert_schema_valid,
    clients_connected,
    collect,
    connections_of,
    of_run,
    run_until_done,
)

pytest_plugins = ["tests.api_fixtures"]
pytestmark = pytest.mark.usefixtures("release_idle_actors")


# ---- a whole run ----------------------------------------------------------------------------


def test_a_client_receives_a_whole_run_schema_valid_in_order_with_reachable_files(
    api_server: ApiServer,
) -> None:
    run_id, (messages,) = run_until_done(api_server, collect(api_server.ws_url))
    run = of_run(messages, run_id)
    assert run == messages  # nothing else was going on
    assert_schema_valid(run)
    assert_legal_run(run, folds=2, epochs=3)
    assert all(m["type"] not in HEAVY_TYPES for m in run)
    root = api_server.reports_dir.resolve()
    paths = [m["predictions_path"] for m in run if m["type"] == "fold_complete"]
    paths.append(run[-1]["summary_path"])
    for path in paths:
        relative = Path(path).resolve().relative_to(root).as_posix()
        response = httpx.get(f"{api_server.url}/reports/{relative}")
        assert response.status_code == 200, (relative, response.text)
        assert response.content == Path(path).read_bytes()
    assert api_server.wait_done(run_id)["state"] == "completed"


def test_joining_mid_run_replays_then_goes_live_and_resuming_with_since_has_no_gap(
    api_server: ApiServer,
) -> None:
    epochs = 40

    async def late_joiner() -> list[dict[str, Any]]:
        # wait until the run is well under way, then connect with no ``since``
        async with websockets.connect(api_server.ws_url, proxy=None) as ws:
            while True:
                message = json.loads(await ws.recv())
                if message["type"] == "epoch_metrics" and message["epoch"] >= 5:
                    break
        return await collect(api_server.ws_url)

    async def dropper() -> list[dict[str, Any]]:
        first = await collect(api_server.ws_url, count=12)
        await asyncio.sleep(0.2)  # events go on meanwhile
        rest = await collect(f"{api_server.ws_url}?since={first[-1]['seq']}")
        return first + rest

    run_id, (full, late, dropped) = run_until_done(
        api_server, collect(api_server.ws_url), late_joiner(), dropper(), epochs=epochs
    )
    assert_legal_run(full, folds=2, epochs=epochs)
    assert late == full  # the history first, then live: all of it, each once, same order
    assert dropped == full
    assert full[0]["run_id"] == run_id


def test_fifty_concurrent_clients_all_receive_every_event(api_server: ApiServer) -> None:
    clients = [collect(api_server.ws_url) for _ in range(50)]
    run_id, results = run_until_done(api_server, *clients)
    assert len(results) == 50
    first = results[0]
    assert_legal_run(first, folds=2, epochs=3)
    for messages in results[1:]:
        assert messages == first


# ---- ping, slow clients ---------------------------------------------------------------------


def test_text_ping_gets_a_json_pong_at_once_and_keeps_the_connection(api_server: ApiServer) -> None:
    async def main() -> None:
        async with websockets.connect(api_server.ws_url, proxy=None) as ws:
            for text in ("ping", "  PING\n", "Ping"):
                started = time.perf_counter()
                await ws.send(text)
                reply = await asyncio.wait_for(ws.recv(), 5)
                assert json.loads(reply) == {"type": "pong"}
                assert time.perf_counter() - started < 1.0
            await ws.send("something else")  # ignored, not an error
            await ws.send("ping")
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "pong"}
            await ws.ping()  # protocol ping/pong works too

    asyncio.run(main())


class StalledClient:
    """A WebSocket client that completes the handshake and then never reads (tiny receive buffer)."""

    def __init__(self, ws_url: str) -> None:
        uri = parse_uri(ws_url)
        self.protocol = ClientProtocol(uri, max_size=None)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect((uri.host, uri.port))
        self.protocol.send_request(self.protocol.connect())
        self.sock.sendall(b"".join(self.protocol.data_to_send()))
        self.frames: list[dict[str, Any]] = []
        while not any(isinstance(e, Response) for e in self._read_some()):
            pass

    def _read_some(self) -> list[Any]:
        data = self.sock.recv(65536)
        if not data:
            self.protocol.receive_eof()
        else:
            self.protocol.receive_data(data)
        events = self.protocol.events_received()
        for event in events:
            if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                self.frames.append(json.loads(bytes(event.data)))
        return events

    def drain(self, timeout: float = 30) -> tuple[int | None, str]:
        """Read everything until the close frame (or EOF); (close code, reason)."""
        self.sock.settimeout(timeout)
        while self.protocol.close_rcvd is None:
            try:
                self._read_some()
            except (TimeoutError, OSError):
                break
            if self.protocol.state.name == "CLOSED":
                break
        close = self.protocol.close_rcvd
        return (close.code, close.reason) if close is not None else (None, "")

    def close(self) -> None:
        self.sock.close()


def test_a_client_that_never_reads_delays_neither_training_nor_other_clients(
    api_server: ApiServer,
) -> None:
    stalled = StalledClient(api_server.ws_url)
    try:
        started = time.monotonic()
        run_id, (messages,) = run_until_done(api_server, collect(api_server.ws_url))
        elapsed = time.monotonic() - started
        assert_legal_run(of_run(messages, run_id), folds=2, epochs=3)
        assert api_server.wait_done(run_id, timeout=60)["state"] == "completed"
        assert elapsed < 60
    finally:
        stalled.close()


def test_an_overflowing_client_is_closed_4008_with_where_to_resume_and_loses_nothing(
    api_server: ApiServer,
) -> None:
    run_id = "flood-run"
    count, size = 1000, 16_000
    with api_server.another_server(client_queue_events=200, close_timeout_s=30.0) as server:
        import ray

        ray.get(api_server.hub.register_run.remote(run_id, None))
        stalled = StalledClient(f"{server.ws_url}?run_id={run_id}")
        publisher = HubPublisher(api_server.hub, run_id, "flood")

        async def flood() -> None:
            for i in range(count):
                publisher.publish(
                    {
                        "type": "notification",
                        "level": "info",
                        "kind": "flood",
                        "message": f"{i:06d}" + "x" * size,
                    }
                )
                if i % 10 == 9:
                    await asyncio.sleep(0.02)  # about 500 events/s: a reading client keeps up
            publisher.publish({"type": "training_complete", "folds_completed": 0, "summary_path": "-"})
            assert publisher.flush(30)

        async def main() -> list[dict[str, Any]]:
            reader = asyncio.create_task(collect(f"{server.ws_url}?run_id={run_id}", max_size=2**20))
            await clients_connected(server.app, 2)  # the stalled one and the reader
            await flood()
            return await reader

        try:
            read = asyncio.run(main())
            assert [m["message"][:6] for m in read[:-1]] == [f"{i:06d}" for i in range(count)]
            code, reason = stalled.drain()
            assert code == CloseCode.SLOW_CONSUMER, (code, reason)
            last = stalled.frames[-1]["seq"]
            assert f"?since={last}" in reason
            assert len(stalled.frames) < count
            # resuming where the close said gives exactly the rest
            rest = asyncio.run(collect(f"{server.ws_url}?run_id={run_id}&since={last}", max_size=2**20))
            assert [m["seq"] for m in stalled.frames + rest] == [m["seq"] for m in read]
        finally:
            stalled.close()


# ---- subscriptions --------------------------------------------------------------------------


def publish_mixed(server: ApiServer, run_id: str) -> None:
    import ray

    ray.get(server.hub.register_run.remote(run_id, None))
    publisher = HubPublisher(server.hub, run_id, "mixed")
    publisher.publish({"type": "dataset_ready", "size": 1000, "min_samples": 500})
    publisher.publish(
        {
            "type": "batch_progress",
            "fold_id": 0,
            "epoch": 0,
            "batch": 1,
            "total_batches": 4,
            "train_loss": 0.5,
            "samples_per_second": 1e4,
        }
    )
    publisher.publish({"type": "notification", "level": "info", "kind": "progress", "message": "25%"})
    publisher.publish({"type": "prediction_delta", "fold_id": 0, "epoch": 0, "predictions": []})
    publisher.publish({"type": "chart_update", "candles": []})
    publisher.publish({"type": "training_error", "error": "synthetic end"})
    assert publisher.flush(30)


def test_types_subscription_default_excludes_heavy_types_and_selection_gets_only_those(
    api_server: ApiServer,
) -> None:
    run_id = "mixed-run"

    async def main() -> list[list[dict[str, Any]]]:
        base = f"{api_server.ws_url}?run_id={run_id}"
        before = connections_of(api_server.app)
        clients = [
            asyncio.create_task(collect(base)),
            asyncio.create_task(collect(f"{base}&types=batch_progress,training_error")),
            asyncio.create_task(collect(f"{base}&types=all")),
        ]
        await clients_connected(api_server.app, len(clients), before=before)
        await asyncio.to_thread(publish_mixed, api_server, run_id)
        return list(await asyncio.gather(*clients))

    default, chosen, everything = asyncio.run(main())
    assert [m["type"] for m in default] == ["dataset_ready", "notification", "training_error"]
    assert [m["type"] for m in chosen] == ["batch_progress", "training_error"]
    assert [m["type"] for m in everything] == [
        "dataset_ready",
        "batch_progress",
        "notification",
        "prediction_delta",
        "chart_update",
        "training_error",
    ]
    assert_schema_valid(everything)
    # the same subscription applies to the replay of a finished run
    replayed = asyncio.run(collect(f"{api_server.ws_url}?run_id={run_id}&types=chart_update,training_error"))
    assert [m["type"] for m in replayed] == ["chart_update", "training_error"]


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("types=epoch_metrics,bogus,nope", "bogus, nope"),
        ("types=", "types is empty"),
        ("since=-3", "since must be an integer >= 0"),
        ("since=abc", "since must be an integer >= 0"),
        ("run_id=../x", "run_id"),
        ("type=epoch_metrics", "unknown query parameter(s) type"),
    ],
)
def test_invalid_query_is_closed_4400_with_a_reason_naming_it(
    api_server: ApiServer, query: str, needle: str
) -> None:
    async def main() -> ConnectionClosed:
        async with websockets.connect(f"{api_server.ws_url}?{query}", proxy=None) as ws:
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 5)
        return info.value

    closed = asyncio.run(main())
    assert closed.rcvd is not None
    assert closed.rcvd.code == CloseCode.BAD_REQUEST
    assert needle in closed.rcvd.reason


def test_since_beyond_the_hubs_last_seq_says_so_then_replays(api_server: ApiServer) -> None:
    messages = asyncio.run(collect(f"{api_server.ws_url}?since=999999999", count=1, timeout=10))
    assert messages[0]["type"] == "history_gap"
    assert messages[0]["requested_since"] == 999999999
    assert_schema_valid(messages)


# ---- limits and refusals --------------------------------------------------------------------


def test_an_oversized_client_message_closes_1009_and_the_server_keeps_serving(
    api_server: ApiServer,
) -> None:
    async def main() -> int | None:
        async with websockets.connect(api_server.ws_url, proxy=None) as ws:
            await ws.send("x" * 5000)
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 5)
        return info.value.rcvd.code if info.value.rcvd else None

    assert asyncio.run(main()) == 1009
    assert httpx.get(f"{api_server.url}/").status_code == 200


@pytest.fixture
def uvicorn_errors() -> Iterator[list[str]]:
    """The ERROR lines uvicorn logs while a test runs (after the server's own log filters)."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.ERROR:
                lines.append(record.getMessage())

    handler = Collect()
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


def test_client_cap_refuses_before_the_upgrade(api_server: ApiServer, uvicorn_errors: list[str]) -> None:
    with api_server.another_server(max_clients=2) as server:

        async def main() -> int:
            async with (
                websockets.connect(server.ws_url, proxy=None),
                websockets.connect(server.ws_url, proxy=None),
            ):
                with pytest.raises(InvalidStatus) as info:
                    async with websockets.connect(server.ws_url, proxy=None):
                        pass
                assert b"too many clients" in info.value.response.body
                return info.value.response.status_code

        assert asyncio.run(main()) == 503
    assert uvicorn_errors == []  # a refusal the server means to make is not an error


def test_foreign_origin_is_refused_403_before_the_upgrade_loopback_and_listed_pass(
    api_server: ApiServer, uvicorn_errors: list[str]
) -> None:
    async def status(url: str, origin: str | None) -> int:
        try:
            async with websockets.connect(url, proxy=None, origin=origin):  # type: ignore[arg-type]
                return 101
        except InvalidStatus as err:
            return err.response.status_code

    assert asyncio.run(status(api_server.ws_url, "http://evil.example")) == 403
    assert asyncio.run(status(api_server.ws_url, "null")) == 403
    for origin in (None, "http://localhost:3000", "http://127.0.0.1:9999", "http://[::1]:80"):
        assert asyncio.run(status(api_server.ws_url, origin)) == 101, origin
    with api_server.another_server(allow_origins=("https://dash.example",)) as server:
        assert asyncio.run(status(server.ws_url, "https://dash.example")) == 101
        assert asyncio.run(status(server.ws_url, "https://other.example")) == 403
    assert uvicorn_errors == []


def test_token_is_required_on_ws_by_header_or_query(api_server: ApiServer, uvicorn_errors: list[str]) -> None:
    with api_server.another_server(token="s3cret") as server:

        async def status(url: str, headers: dict[str, str] | None = None) -> int:
            try:
                async with websockets.connect(url, proxy=None, additional_headers=headers):
                    return 101
            except InvalidStatus as err:
                assert b'"error"' in err.response.body
                return err.response.status_code

        assert asyncio.run(status(server.ws_url)) == 401
        assert asyncio.run(status(f"{server.ws_url}?token=wrong")) == 401
        assert asyncio.run(status(server.ws_url, {"Authorization": "Bearer wrong"})) == 401
        assert asyncio.run(status(f"{server.ws_url}?token=s3cret")) == 101
        assert asyncio.run(status(server.ws_url, {"Authorization": "Bearer s3cret"})) == 101
    assert uvicorn_errors == []  # three deliberate 401s, none of them an error in the log


def test_server_shutdown_closes_clients_4001_with_where_to_resume(api_server: ApiServer) -> None:
    with api_server.another_server() as server:

        async def main() -> ConnectionClosed:
            async with websockets.connect(server.ws_url, proxy=None) as ws:
                await ws.send("ping")
                await ws.recv()
                stopping = asyncio.create_task(asyncio.to_thread(server.stop))
                with pytest.raises(ConnectionClosed) as info:
                    await asyncio.wait_for(ws.recv(), 10)
                await stopping
                return info.value

        closed = asyncio.run(main())
    assert closed.rcvd is not None and closed.rcvd.code == CloseCode.SERVER_SHUTDOWN
    assert "since=" in closed.rcvd.reason
