"""REST on a real uvicorn server: runs, reports, refusals; and the API's boundaries."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from api.files import file_under
from api.security import AccessPolicy, InsecureBindError, check_bind, is_loopback_host
from api.serving import RedactTokens
from orchestrator.messages import message_json_schema

pytest.register_assert_rewrite("tests.api_fixtures")
from tests.api_fixtures import (  # noqa: E402
    ApiServer,
    assert_legal_run,
    clients_connected,
    collect,
    connections_of,
    of_run,
)
from tests.synthetic import random_walk_ohlcv  # noqa: E402

pytest_plugins = ["tests.api_fixtures"]
pytestmark = pytest.mark.usefixtures("release_idle_actors")

ROOT = Path(__file__).resolve().parents[1]


def test_health_and_schema(api_server: ApiServer) -> None:
    health = httpx.get(f"{api_server.url}/").json()
    assert health["status"] == "ok" and health["ray_connected"] is True
    assert health["hub"]["reachable"] is True and health["version"]
    assert "active_run_id" in health
    assert httpx.get(f"{api_server.url}/ws/schema").json() == message_json_schema()
    served = httpx.get(f"{api_server.url}/ws/asyncapi").json()
    assert served == yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
    assert httpx.get(f"{api_server.url}/openapi.json").status_code == 200


def test_run_lifecycle_over_rest(api_server: ApiServer) -> None:
    run_id = api_server.post_train(epochs=2, seed=3)
    snapshot = api_server.wait_done(run_id)
    assert snapshot["state"] == "completed"
    body = httpx.get(f"{api_server.url}/runs/{run_id}").json()
    assert body["state"] == "completed" and body["config"]["epochs"] == 2
    assert body["progress"] == {"folds_total": 2, "folds_done": 2, "epochs_total": 4, "epochs_done": 4}
    assert set(body["latest_metrics"]) == {"0", "1"}
    assert len(body["files"]["predictions"]) == 2
    for url in [body["files"]["summary"], *body["files"]["predictions"]]:
        assert httpx.get(f"{api_server.url}{url}").status_code == 200
    assert run_id in [r["run_id"] for r in httpx.get(f"{api_server.url}/runs").json()["runs"]]
    summary = httpx.get(f"{api_server.url}/runs/{run_id}/summary").json()
    assert summary["run_id"] == run_id and len(summary["folds"]) == 2
    events = httpx.get(f"{api_server.url}/runs/{run_id}/events").json()
    assert_legal_run(events["events"], folds=2, epochs=2)
    since = events["events"][3]["seq"]
    later = httpx.get(f"{api_server.url}/runs/{run_id}/events", params={"since": since, "limit": 2}).json()
    assert [e["seq"] for e in later["events"]] == [e["seq"] for e in events["events"][4:6]]
    assert later["next_since"] == later["events"][-1]["seq"]
    finished = httpx.post(f"{api_server.url}/runs/{run_id}/cancel")
    assert finished.status_code == 409 and "already ended" in finished.json()["error"]


BAD_BODIES = [
    (b"{not json", 400, "malformed JSON", None),
    (b"[1, 2]", 422, "JSON object", None),
    (b'{"learning_rate": 0.1}', 422, "learning_rate: unknown field", "learning_rate"),
    (b'{"epochs": "many"}', 422, "epochs", "epochs"),
    (b'{"epochs": -1}', 422, "epochs", "epochs"),
    (b'{"folds": 1}', 422, "folds must be >= 2", None),
    (b'{"data": "/no/such/bars.csv"}', 422, "data: '/no/such/bars.csv' is not a data name", "data"),
    (b'{"data": "no/such/bars.csv"}', 422, "data: no data file named 'no/such/bars.csv'", "data"),
    (b'{"reports_dir": "/tmp/elsewhere"}', 422, "reports_dir: set by the server", "reports_dir"),
    (b'{"executor": "local"}', 422, "executor", "executor"),
    (
        b'{"priority": "high"}',
        422,
        "priority must be an integer from -100 to 100 (higher first), got priority='high'",
        "priority",
    ),
    (b'{"priority": 101}', 422, "got priority=101", "priority"),
    (b'{"priority": 1.5}', 422, "got priority=1.5", "priority"),
    (b'{"priority": true}', 422, "got priority=True", "priority"),
    (
        b'{"cpus_per_fold": 64}',
        422,
        "cpus_per_fold: the node with the most CPU (live node) has CPU 2, "
        "GPU 0; no node of the Ray cluster can host a fold with cpus_per_fold=64",
        "cpus_per_fold",
    ),
    (
        b'{"gpus_per_fold": 1}',
        422,
        "gpus_per_fold: the node with the most GPU (live node) has CPU 2, GPU 0",
        "gpus_per_fold",
    ),
]


def test_bad_input_is_refused_clearly_while_a_run_in_progress_goes_on(api_server: ApiServer) -> None:
    """Every refusal is a JSON error naming the problem; the run started first completes whole."""

    async def main() -> tuple[str, list[dict[str, Any]]]:
        before = connections_of(api_server.app)
        client = asyncio.create_task(collect(api_server.ws_url))
        await clients_connected(api_server.app, 1, before=before)
        async with httpx.AsyncClient(base_url=api_server.url) as http:
            started = await http.post("/train", json={"epochs": 25})
            assert started.status_code == 202
            for body, status, needle, field in BAD_BODIES:
                response = await http.post(
                    "/train", content=body, headers={"content-type": "application/json"}
                )
                assert response.status_code == status, (body, response.text)
                error = response.json()
                assert needle in error["error"], (body, error)
                if field is not None:
                    assert field in error["fields"]
            for path in TRAVERSALS:
                code, reply = await asyncio.to_thread(raw_get, api_server, path)
                assert code == 404 and "error" in reply, (path, code, reply)
            foreign = await http.get("/", headers={"Origin": "http://evil.example"})
            assert foreign.status_code == 403 and "evil.example" in foreign.json()["error"]
            assert (await http.get("/runs/no-such-run")).status_code == 404
            unknown = await http.post("/runs/no-such-run/cancel")
            assert unknown.status_code == 404 and "no-such-run" in unknown.json()["error"]
            assert (await http.get("/queue")).json()["queue"] == []  # nothing refused was queued
            assert (await http.get("/runs/x/events", params={"since": -1})).json()["fields"] == ["since"]
            assert (await http.get("/nowhere")).json() == {"error": "Not Found"}
        return started.json()["run_id"], await client

    run_id, messages = asyncio.run(main())
    assert_legal_run(of_run(messages, run_id), folds=2, epochs=25)
    assert api_server.wait_done(run_id)["state"] == "completed"


def raw_get(server: ApiServer, path: str) -> tuple[int, dict[str, Any]]:
    """GET ``path`` exactly as written (httpx would normalize the dot segments away)."""
    connection = http.client.HTTPConnection(server.server.host, server.server.port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


TRAVERSALS = [
    "/reports/../pyproject.toml",
    "/reports/%2e%2e/pyproject.toml",
    "/reports/%2e%2e%2fpyproject.toml",
    "/reports/%252e%252e/pyproject.toml",
    "/reports//etc/passwd",
    "/reports/%2fetc%2fpasswd",
    "/reports/..%5c..%5cpyproject.toml",
    "/reports/escape/passwd",
    "/reports/no-such-file.csv",
]


@pytest.fixture(autouse=True, scope="module")
def escaping_symlink(api_server: ApiServer) -> None:
    api_server.reports_dir.mkdir(parents=True, exist_ok=True)
    link = api_server.reports_dir / "escape"
    if not link.exists():
        link.symlink_to("/etc", target_is_directory=True)


def test_file_under_refuses_everything_that_escapes(tmp_path: Path) -> None:
    root = tmp_path / "reports"
    (root / "run" / "predictions").mkdir(parents=True)
    (root / "run" / "predictions" / "p.csv").write_text("a\n")
    (tmp_path / "secret.txt").write_text("no")
    (root / "out").symlink_to(tmp_path)
    (root / "inner").symlink_to(root / "run")
    assert file_under(root, "run/predictions/p.csv") == (root / "run/predictions/p.csv").resolve()
    assert file_under(root, "inner/predictions/p.csv") is not None  # a link inside is fine
    for bad in (
        "../secret.txt",
        "run/../../secret.txt",
        "/etc/passwd",
        "out/secret.txt",
        "run\\..\\..\\secret.txt",
        "run//predictions/p.csv",
        "run",
        "",
        "run/\x00",
    ):
        assert file_under(root, bad) is None, bad


def test_token_is_required_on_rest_by_header_or_query(api_server: ApiServer) -> None:
    with api_server.another_server(token="s3cret") as server:
        assert httpx.get(f"{server.url}/").status_code == 401
        wrong = httpx.get(f"{server.url}/runs", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "invalid token" in wrong.json()["error"]
        assert wrong.headers["www-authenticate"].startswith("Bearer")
        assert httpx.post(f"{server.url}/train", json={}).status_code == 401
        assert httpx.get(f"{server.url}/runs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(f"{server.url}/runs", params={"token": "s3cret"}).status_code == 200
        assert httpx.get(f"{server.url}/openapi.json").status_code == 200  # docs stay public


def test_cors_preflight_from_a_loopback_dashboard(api_server: ApiServer) -> None:
    response = httpx.options(
        f"{api_server.url}/train",
        headers={"Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://localhost:5173"


def test_tokens_are_masked_in_log_lines() -> None:
    record = logging.LogRecord(
        "uvicorn.error",
        logging.INFO,
        "",
        0,
        '%s - "WebSocket %s" 401',
        ("127.0.0.1:5", "/ws?since=3&token=s3cret&types=all"),
        None,
    )
    assert RedactTokens().filter(record)
    assert record.getMessage() == '127.0.0.1:5 - "WebSocket /ws?since=3&token=***&types=all" 401'


def test_access_policy_and_bind_rules() -> None:
    policy = AccessPolicy.build(None, ["https://Dash.example/"])
    assert policy.origin_allowed(None)
    assert policy.origin_allowed("https://dash.example")
    assert policy.origin_allowed("http://localhost")
    assert not policy.origin_allowed("http://localhost.evil.example")
    assert not policy.origin_allowed("http://127.0.0.1.evil.example:80")
    assert is_loopback_host("127.0.0.2") and is_loopback_host("::1") and not is_loopback_host("0.0.0.0")
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "t")
    with pytest.raises(InsecureBindError, match="--token"):
        check_bind("0.0.0.0", None)
    with pytest.raises(ValueError, match="token"):
        AccessPolicy(token="  ")


def test_serve_refuses_a_public_bind_without_a_token() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ORCHESTRATOR_TOKEN"}
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "serve", "--host", "0.0.0.0", "--port", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "refusing to bind host='0.0.0.0' without a token" in done.stderr


def test_importing_the_api_never_imports_torch() -> None:
    code = (
        "import sys, api.app, api.server, api.ws.endpoint, api.ws.fanout, api.security, orchestrator.events.stream, "
        "api.routes.hpo, api.routes.data, orchestrator.console.watch; api.server.build_parser(); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_missing_columns_end_the_run_with_a_training_error(api_server: ApiServer) -> None:
    path = api_server.data_root / "no_volume.csv"  # a body names its data under a data root
    random_walk_ohlcv(800, seed=5).drop(columns="volume").to_csv(path, index=False)

    async def main() -> tuple[str, list[dict[str, Any]]]:
        before = connections_of(api_server.app)
        client = asyncio.create_task(collect(api_server.ws_url))
        await clients_connected(api_server.app, 1, before=before)
        async with httpx.AsyncClient(base_url=api_server.url) as http:
            response = await http.post("/train", json={"data": path.name})
        return response.json()["run_id"], await client

    run_id, messages = asyncio.run(main())
    assert messages[-1]["type"] == "training_error" and "volume" in messages[-1]["error"]
    assert api_server.wait_done(run_id)["state"] == "failed"


# Last in the module: a cancel takes the run's fold actors down with it (the next run starts cold).
def test_a_second_run_waits_in_the_queue_and_cancels_end_both(api_server: ApiServer) -> None:
    # the first run's two folds hold both CPUs of the test's Ray instance: the second one waits
    run_id = api_server.post_train(epochs=400)

    async def watch_until_cancelled() -> list[dict[str, Any]]:
        return await collect(api_server.ws_url, run_id=run_id)

    async def main() -> list[dict[str, Any]]:
        client = asyncio.create_task(watch_until_cancelled())
        async with httpx.AsyncClient(base_url=api_server.url) as http:
            second = await http.post("/train", json={"priority": 3})
            assert second.status_code == 202, second.text
            queued = second.json()
            assert (queued["status"], queued["queue_position"], queued["priority"]) == ("queued", 1, 3)
            waiting = (await http.get("/queue")).json()["queue"]
            assert [(w["run_id"], w["position"]) for w in waiting] == [(queued["run_id"], 1)]
            assert "CPU" in waiting[0]["reason"]
            dropped = await http.post(f"/runs/{queued['run_id']}/cancel")
            assert dropped.status_code == 202 and dropped.json()["status"] == "cancelled"
            again = await http.post(f"/runs/{queued['run_id']}/cancel")
            assert again.status_code == 409 and "cancelled" in again.json()["error"]
            assert (await http.get("/queue")).json()["queue"] == []
            for _ in range(200):  # until it trains
                if (await http.get(f"/runs/{run_id}")).json()["progress"]["epochs_done"] > 0:
                    break
                await asyncio.sleep(0.05)
            cancel = await http.post(f"/runs/{run_id}/cancel")
            assert cancel.status_code == 202 and cancel.json()["cancel_requested"] is True
            ended = (await http.get(f"/runs/{queued['run_id']}/events")).json()["events"]
        assert [e["type"] for e in ended] == ["training_error"]
        assert "cancelled while queued" in ended[0]["error"]
        return await client

    messages = asyncio.run(main())
    assert messages[-1]["type"] == "training_error" and "cancel" in messages[-1]["error"]
    assert api_server.wait_done(run_id)["state"] == "cancelled"
    missing = httpx.get(f"{api_server.url}/runs/{run_id}/summary")
    assert missing.status_code == 404 and "cancelled" in missing.json()["error"]
