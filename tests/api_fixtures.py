"""A real API server for the API tests: uvicorn on a free loopback port, the Ray EventHub actor,
a RunManager training small synthetic runs on Ray, and helpers to drive it with real clients.

Test modules load this with ``pytest_plugins = ["tests.api_fixtures"]`` so the session-scoped
server (and its warm fold actors) is shared by all of them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from api.app import ApiSettings, create_app
from api.serving import BackgroundServer
from orchestrator.config import TrainConfig, config_from_mapping
from orchestrator.events.stream import RayHubClient
from orchestrator.messages import CORE_TYPES
from tests.synthetic import ar1_ohlcv
from tests.wire import validate_wire

HUB_NAMESPACE = "test-api"
TERMINAL = ("training_complete", "training_error")
# Small and quick: 2 folds of a 1200-bar AR(1) series; patience so large no fold stops early.
RUN_DEFAULTS: dict[str, Any] = {
    "min_samples": 500,
    "lookback": 10,
    "folds": 2,
    "epochs": 3,
    "patience": 10_000,
    "executor": "ray",
}


@dataclass
class ApiServer:
    """The running server and what a test needs to drive it."""

    server: BackgroundServer
    app: Any
    hub: Any
    manager: Any
    reports_dir: Path
    data_csv: str
    base_config: TrainConfig
    data_root: Path  # the server's one data root (serve --data-root): bodies name files under it
    extra: list[BackgroundServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def ws_url(self) -> str:
        return self.server.ws_url

    def post_train(self, **body: Any) -> str:
        response = httpx.post(f"{self.url}/train", json=body, timeout=30)
        assert response.status_code == 202, response.text
        return str(response.json()["run_id"])

    def wait_done(self, run_id: str, timeout: float = 120) -> dict[str, Any]:
        run = self.manager.wait(run_id, timeout)
        assert run.done, f"run {run_id} still {run.state.value} after {timeout} s"
        return dict(run.snapshot())

    @contextmanager
    def another_server(self, **settings: Any) -> Iterator[BackgroundServer]:
        """A second app on the same hub and runs, with other settings (token, limits)."""
        values: dict[str, Any] = {
            "reports_dir": str(self.reports_dir),
            "base_config": self.base_config,
            "data_roots": (str(self.data_root),),
        }
        values.update(settings)
        app = create_app(RayHubClient(self.hub), self.manager, ApiSettings(**values))
        server = BackgroundServer(app).start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def api_server(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    import ray

    from orchestrator.events.actor import get_or_create_hub
    from orchestrator.events.publish import RaySink
    from orchestrator.execution.pool import WorkerPool
    from orchestrator.hpo import HpoService
    from orchestrator.jobs.manager import RunManager

    tmp = tmp_path_factory.mktemp("api")
    data_csv = tmp / "bars.csv"
    ar1_ohlcv(1200, seed=11).to_csv(data_csv, index=False)
    reports = tmp / "reports"
    data_root = tmp / "data-root"
    data_root.mkdir()
    base = config_from_mapping({**RUN_DEFAULTS, "data": str(data_csv), "reports_dir": str(reports)})
    hub = get_or_create_hub(namespace=HUB_NAMESPACE)
    manager = RunManager(RaySink(hub), pool=WorkerPool())
    # studies' trials wait in the manager's queue next to plain runs, on its warm workers
    hpo = HpoService(hub, pool=manager.pool, reports_dir=str(reports), gate=manager)
    settings = ApiSettings(
        reports_dir=str(reports), base_config=base, data_roots=(str(data_root),), close_timeout_s=3.0
    )
    app = create_app(RayHubClient(hub), manager, settings, hpo=hpo)
    server = BackgroundServer(app).start()
    _RUNNING.append(ApiServer(server, app, hub, manager, reports, str(data_csv), base, data_root))
    try:
        yield _RUNNING[0]
    finally:
        _RUNNING.clear()
        server.stop()
        hpo.shutdown()
        manager.shutdown()
        ray.kill(hub)


def bars_and_store(tmp: Path, run: dict[str, Any], seed: int) -> tuple[TrainConfig, str]:
    """For a server without Ray: 1200 synthetic bars in ``tmp``, a reports folder, the base
    config of its runs (``run``'s fields on those bars) and its job store's URL (SQLite)."""
    data = tmp / "bars.csv"
    ar1_ohlcv(1200, seed=seed).to_csv(data, index=False)
    reports = tmp / "reports"
    reports.mkdir()
    base = config_from_mapping({**run, "data": str(data), "reports_dir": str(reports)})
    return base, f"sqlite:///{reports / 'orchestrator.db'}"


_RUNNING: list[ApiServer] = []  # the session's server, once a test asked for it
API_TEST_MODULES = frozenset(
    {
        "test_api.py",
        "test_api_extras.py",
        "test_watch.py",
        "test_ws.py",
        "test_ws_follow.py",
        "test_ws_qt.py",
        "test_browser_seed_client.py",
    }
)


@pytest.fixture(scope="module")
def release_idle_actors(request: pytest.FixtureRequest) -> Iterator[None]:
    """At the end of an API test module, stop the server's idle fold actors unless the next
    module is an API module too: they hold Ray CPUs that other modules' runs need to place folds
    (the session's Ray instance has 2). Keeping them between API modules saves a cold start."""
    yield
    if not _RUNNING:
        return
    paths = [item.path for item in request.session.items]
    here = request.node.path
    last = max(i for i, path in enumerate(paths) if path == here)
    following = paths[last + 1] if last + 1 < len(paths) else None
    if following is None or following.name not in API_TEST_MODULES:
        _RUNNING[0].manager.pool.shutdown()


# ---- clients and runs ----------------------------------------------------------------------


async def clients_connected(
    app: Any, count: int, *, before: frozenset[Any] = frozenset(), timeout: float = 180
) -> None:
    """Wait until at least ``count`` clients, not counting those in ``before`` (a snapshot taken
    with ``connections_of``), are past their accept on the app's /ws. Clients of earlier tests
    that are still closing come and go meanwhile: they are in ``before``, so they never count."""
    connections = app.state.stream.connections
    deadline = time.monotonic() + timeout
    while len(set(connections) - before) < count:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(set(connections) - before)} of {count} clients connected after {timeout} s"
            )
        await asyncio.sleep(0.01)


def connections_of(app: Any) -> frozenset[Any]:
    """The /ws connections the app holds now (for ``clients_connected(before=...)``)."""
    return frozenset(app.state.stream.connections)


def run_until_done(server: ApiServer, *clients: Any, **body: Any) -> tuple[str, list[Any]]:
    """Start the clients, POST /train once all are connected, gather their results."""

    async def main() -> tuple[str, list[Any]]:
        before = connections_of(server.app)
        tasks = [asyncio.create_task(c) for c in clients]
        await clients_connected(server.app, len(clients), before=before)
        async with httpx.AsyncClient(base_url=server.url) as http:
            response = await http.post("/train", json=body)
        assert response.status_code == 202, response.text
        return response.json()["run_id"], list(await asyncio.gather(*tasks))

    return asyncio.run(main())


async def collect(
    url: str,
    *,
    until: tuple[str, ...] = TERMINAL,
    run_id: str | None = None,
    count: int | None = None,
    timeout: float = 120,
    **connect: Any,
) -> list[dict[str, Any]]:
    """Messages from ``url`` until one of type ``until`` (of ``run_id`` if given) or ``count``."""
    messages: list[dict[str, Any]] = []
    async with websockets.connect(url, proxy=None, **connect) as ws:
        async with asyncio.timeout(timeout):
            async for text in ws:
                message = json.loads(text)
                messages.append(message)
                if count is not None and len(messages) >= count:
                    break
                if message["type"] in until and (run_id is None or message.get("run_id") == run_id):
                    break
    return messages


# Two runs that train side by side on the session's 2 CPUs: one fold at a time each, the second
# six times longer, so it is still training when the first ends (``two_runs_done`` checks it).
FIRST_OF_TWO: dict[str, Any] = {"epochs": 10, "max_concurrent_folds": 1, "cpus_per_fold": 1}
SECOND_OF_TWO: dict[str, Any] = {"epochs": 60, "max_concurrent_folds": 1, "cpus_per_fold": 1}


@pytest.fixture
def two_warm_workers(api_server: ApiServer) -> ApiServer:
    """The server, with two fold actors warm in its pool, so that two runs started together
    train together (a cold actor takes longer to start than these short runs take to train)."""
    api_server.wait_done(api_server.post_train(epochs=1, max_concurrent_folds=2, cpus_per_fold=1))
    return api_server


def start_two_runs(
    server: ApiServer,
    first: dict[str, Any] = FIRST_OF_TWO,
    second: dict[str, Any] = SECOND_OF_TWO,
    timeout: float = 120,
) -> tuple[str, str]:
    """Start two runs that train at the same time (one CPU each: the job queue admits both on the
    session's two): the second is posted once the first is running (``GET /`` lists it), so the
    first is the oldest."""
    manager = server.manager
    first_id = server.post_train(**first)
    deadline = time.monotonic() + timeout
    while first_id not in httpx.get(f"{server.url}/", timeout=10).json()["running"]:
        assert not manager.get(first_id).done, f"run {first_id} ended before it ran"
        assert time.monotonic() < deadline, f"run {first_id} not running after {timeout} s"
        time.sleep(0.05)
    second_id = server.post_train(**second)
    assert manager.get(second_id).state.value != "queued", "the second run was queued, not started"
    return first_id, second_id


def recorded(server: ApiServer, run_id: str) -> list[dict[str, Any]]:
    """The run's events as the server recorded them, of the types a client gets by default."""
    reply = httpx.get(f"{server.url}/runs/{run_id}/events", params={"limit": 10_000}, timeout=30)
    return [e for e in reply.json()["events"] if e["type"] in CORE_TYPES]


def two_runs_done(server: ApiServer, first: str, second: str) -> None:
    """Wait for both runs to end; fail unless they trained at once, the first ending first
    (the second started before the first ended, and ended after it)."""
    server.wait_done(first), server.wait_done(second)
    seqs = {}
    for run_id in (first, second):
        events = httpx.get(f"{server.url}/runs/{run_id}/events", timeout=30).json()["events"]
        seqs[run_id] = (events[0]["seq"], events[-1]["seq"])
    assert seqs[second][0] < seqs[first][1] < seqs[second][1], (
        f"the two runs did not overlap with the first ending first (first, last seq: {seqs}); "
        "the machine may be too loaded for this scenario"
    )


async def collect_until_ended(url: str, runs: int = 2, timeout: float = 120) -> list[dict[str, Any]]:
    """Messages from ``url`` until ``runs`` terminal events (of different runs) have come."""
    messages: list[dict[str, Any]] = []
    ended: set[str] = set()
    async with websockets.connect(url, proxy=None) as ws:
        async with asyncio.timeout(timeout):
            async for text in ws:
                messages.append(json.loads(text))
                if messages[-1]["type"] in TERMINAL:
                    ended.add(messages[-1]["run_id"])
                    if len(ended) >= runs:
                        break
    return messages


def of_run(messages: list[dict[str, Any]], run_id: str) -> list[dict[str, Any]]:
    return [m for m in messages if m.get("run_id") == run_id]


def assert_schema_valid(messages: list[dict[str, Any]]) -> None:
    for message in messages:
        validate_wire(message)


def assert_legal_run(messages: list[dict[str, Any]], folds: int, epochs: int) -> None:
    """One whole run, in a legal order (DESIGN 3), every seq once and increasing."""
    types = [m["type"] for m in messages]
    assert types[0] == "dataset_ready" and types[1] == "training_start", types[:3]
    assert types[-1] == "training_complete", types[-3:]
    seqs = [m["seq"] for m in messages]
    assert seqs == sorted(set(seqs)), "seqs must strictly increase"
    for fold in range(folds):
        at = [i for i, m in enumerate(messages) if m.get("fold_id") == fold and m["type"] == "epoch_metrics"]
        assert [messages[i]["epoch"] for i in at] == list(range(epochs))
        complete = [
            i for i, m in enumerate(messages) if m["type"] == "fold_complete" and m["fold_id"] == fold
        ]
        assert len(complete) == 1 and complete[0] > at[-1]
