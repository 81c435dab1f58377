"""Subscriptions to the heavy messages, /data/candles, chart_update from a watched file, /hpo."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from api.app import ApiSettings, create_app
from api.server import _data_source
from api.serving import BackgroundServer
from orchestrator.events.stream import RayHubClient
from orchestrator.messages import HEAVY_TYPES
from tests.synthetic import random_walk_ohlcv

pytest.register_assert_rewrite("tests.api_fixtures")
from tests.api_fixtures import ApiServer, assert_schema_valid, collect, of_run, run_until_done  # noqa: E402

pytest_plugins = ["tests.api_fixtures"]
pytestmark = pytest.mark.usefixtures("release_idle_actors")


async def _read_until_quiet(
    url: str, manager: Any, quiet_s: float = 1.5, timeout: float = 150
) -> list[dict[str, Any]]:
    """Everything a client receives until its run has ended and the stream went quiet."""
    messages: list[dict[str, Any]] = []
    async with websockets.connect(url, proxy=None) as ws:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                messages.append(json.loads(await asyncio.wait_for(ws.recv(), quiet_s)))
            except TimeoutError:
                runs = manager.runs()
                if messages and runs and runs[-1].done:
                    break
    return messages


def test_subscribed_client_gets_heavy_kinds_and_default_client_none(api_server: ApiServer) -> None:
    subscribed_types = {"epoch_metrics", "prediction_delta", "batch_progress", "notification"}
    url = f"{api_server.ws_url}?types={','.join(sorted(subscribed_types))}"
    run_id, (subscribed, default) = run_until_done(
        api_server,
        _read_until_quiet(url, api_server.manager),
        collect(api_server.ws_url),
        batch_size=32,
        batch_progress_interval_s=0.01,
    )
    kinds = {m["type"] for m in of_run(subscribed, run_id)}
    assert kinds == subscribed_types, kinds
    assert_schema_valid(subscribed)
    default_kinds = {m["type"] for m in of_run(default, run_id)}
    assert "training_complete" in default_kinds and not default_kinds & HEAVY_TYPES


def test_candles_page_through_the_dataset(api_server: ApiServer) -> None:
    first = httpx.get(f"{api_server.url}/data/candles", params={"limit": 700}).json()
    assert len(first["candles"]) == 700 and first["next_since"] == first["candles"][-1]["timestamp"]
    rest = httpx.get(
        f"{api_server.url}/data/candles", params={"since": first["next_since"], "limit": 5000}
    ).json()
    assert len(first["candles"]) + len(rest["candles"]) == 1200 and rest["next_since"] is None
    bad = httpx.get(f"{api_server.url}/data/candles", params={"since": "yesterday-ish"})
    assert bad.status_code == 422 and "since" in bad.json()["error"]


def test_watched_file_rows_reach_clients_as_chart_update(api_server: ApiServer, tmp_path: Path) -> None:
    frame = random_walk_ohlcv(303, seed=3)
    path = tmp_path / "live.csv"
    frame.iloc[:300].to_csv(path, index=False, date_format="%Y-%m-%d")
    base = api_server.base_config.model_copy(update={"data": str(path)})
    settings = ApiSettings(reports_dir=str(api_server.reports_dir), base_config=base)
    watcher, book = _data_source(argparse.Namespace(watch_data=True), api_server.hub, settings)
    assert watcher is not None
    app = create_app(RayHubClient(api_server.hub), api_server.manager, replace(settings), candles=book)
    server = BackgroundServer(app).start()
    watcher.start()
    try:

        async def scenario() -> list[dict[str, Any]]:
            task = asyncio.create_task(
                collect(
                    f"{server.ws_url}?types=chart_update,notification",
                    until=(),
                    count=2,
                    timeout=30,
                )
            )
            await asyncio.sleep(0.5)
            row = frame.iloc[300]
            with path.open("a") as handle:
                handle.write("not,a,valid,row,at,all\n")
                handle.write(
                    f"{row.timestamp:%Y-%m-%d},{row.open},{row.high},{row.low},{row.close},{row.volume}\n"
                )
            started = time.monotonic()
            messages = await task
            assert time.monotonic() - started < 2.0
            return messages

        messages = asyncio.run(scenario())
        kinds = sorted(m["type"] for m in messages)
        assert kinds == ["chart_update", "notification"], messages
        chart = next(m for m in messages if m["type"] == "chart_update")
        assert [c["close"] for c in chart["candles"]] == [frame.close[300]]
        warning = next(m for m in messages if m["type"] == "notification")
        assert warning["level"] == "warning" and "line 302" in warning["message"]
        assert_schema_valid(messages)
        page = httpx.get(f"{server.url}/data/candles", params={"limit": 5000}).json()
        assert len(page["candles"]) == 301  # the good row is part of the data now
    finally:
        watcher.stop()
        server.stop()


def test_hpo_routes_start_report_and_refuse(api_server: ApiServer) -> None:
    from orchestrator.hpo import HpoService

    settings = ApiSettings(reports_dir=str(api_server.reports_dir), base_config=api_server.base_config)
    service = HpoService(
        api_server.hub, pool=api_server.manager.pool, reports_dir=str(api_server.reports_dir)
    )
    app = create_app(RayHubClient(api_server.hub), api_server.manager, settings, hpo=service)
    with BackgroundServer(app) as server:
        body = {"study": "api-study", "trials": 2, "parallel": 1, "epochs": 2, "metric": "val_nll"}
        assert httpx.post(f"{server.url}/hpo", json={**body, "trials": -1}).status_code == 422
        assert httpx.post(f"{server.url}/hpo", content=b"{nope").status_code == 400
        for refused, field in (
            ({"executor": "local"}, "executor"),
            ({"config": {"reports_dir": "/tmp/elsewhere"}}, "reports_dir"),
            ({"config": [1]}, "config"),
            ({"storage": "/tmp/elsewhere/x.journal"}, "storage"),
            ({"search_space": "/etc/passwd"}, "search_space"),
            ({"config": {"data": "/etc/passwd"}}, "config.data"),
        ):
            response = httpx.post(f"{server.url}/hpo", json={**body, **refused})
            assert response.status_code == 422 and response.json()["fields"] == [field], response.text
            assert "root:" not in response.text  # no line of /etc/passwd
        started = httpx.post(f"{server.url}/hpo", json=body)
        assert started.status_code == 202, started.text
        assert httpx.post(f"{server.url}/hpo", json=body).status_code == 409
        assert httpx.get(f"{server.url}/hpo/no-such-study").status_code == 404
        deadline = time.monotonic() + 240
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = httpx.get(f"{server.url}/hpo/api-study", timeout=30).json()
            if status["state"] in ("completed", "failed", "cancelled"):
                break
            time.sleep(1)
        assert status["state"] == "completed", json.dumps(status)[:2000]
        assert len(status["trials"]) == 2
        values = [t["value"] for t in status["trials"] if t["value"] is not None]
        assert status["best"]["value"] == pytest.approx(min(values), rel=1e-8)
    service.shutdown()
