"""One encoding per event: every ``/ws`` frame a real client receives is, byte for byte, its run's
``events.jsonl`` line, live and replayed, and ``GET /runs/{id}/events`` carries the same texts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
import websockets

pytest.register_assert_rewrite("tests.api_fixtures")
from tests.api_fixtures import TERMINAL, ApiServer, run_until_done  # noqa: E402

pytest_plugins = ["tests.api_fixtures"]
pytestmark = pytest.mark.usefixtures("release_idle_actors")


async def frames(url: str, run_id: str | None = None, timeout: float = 120) -> list[str]:
    """The text frames from ``url``, exactly as received, until a terminal event (of ``run_id``)."""
    received: list[str] = []
    async with websockets.connect(url, proxy=None, max_size=2**24) as ws:
        async with asyncio.timeout(timeout):
            async for frame in ws:
                assert isinstance(frame, str), "every message is a text frame"
                received.append(frame)
                message = json.loads(frame)
                if message["type"] in TERMINAL and (run_id is None or message["run_id"] == run_id):
                    break
    return received


def test_every_frame_is_its_runs_events_jsonl_line_byte_for_byte(api_server: ApiServer) -> None:
    # every type, so the run also produces and sends its heavy live detail (deltas, batches)
    live_url = f"{api_server.ws_url}?run_id=*&types=all"
    run_id, (live,) = run_until_done(api_server, frames(live_url), epochs=2, batch_progress_interval_s=0.01)
    mine = [text for text in live if json.loads(text)["run_id"] == run_id]
    run_dir = Path(api_server.wait_done(run_id)["run_dir"])
    lines = (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    kinds = {json.loads(line)["type"] for line in lines}
    assert {"epoch_metrics", "prediction_delta", "batch_progress", "training_complete"} <= kinds
    assert mine == lines  # live frames: the same bytes, in the same order
    replayed = asyncio.run(frames(f"{api_server.ws_url}?run_id={run_id}&since=0&types=all", run_id))
    assert replayed == lines  # replayed from the hub: the same bytes again
    page = httpx.get(f"{api_server.url}/runs/{run_id}/events", params={"limit": 10_000}, timeout=30)
    assert page.status_code == 200 and page.headers["content-type"] == "application/json"
    body = page.text
    assert json.loads(body)["events"] == [json.loads(line) for line in lines]
    assert all(line in body for line in lines)  # spliced in as they are, never encoded again
