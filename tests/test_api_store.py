"""The API over the job store (no Ray): runs and events of an earlier server process, paged, replayed
on REST and /ws without gap or repeat; and serve's start-up refusals of a bad store."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import ApiSettings, create_app
from api.serving import BackgroundServer
from orchestrator.events.hub import EventHub
from orchestrator.events.publish import InProcessSink
from orchestrator.events.recorder import StoreRecorder, open_recorder
from orchestrator.events.stream import LocalHubClient
from orchestrator.jobs.manager import RunManager

pytest.register_assert_rewrite("tests.api_fixtures")
from tests.api_fixtures import bars_and_store, collect  # noqa: E402
from tests.made_events import bodies  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUN = {"min_samples": 500, "lookback": 10, "folds": 2, "epochs": 2, "patience": 10_000, "executor": "local"}


@dataclass
class Served:
    server: BackgroundServer
    manager: RunManager
    recorder: StoreRecorder

    def stop(self) -> None:
        self.server.stop()
        self.manager.shutdown()
        self.recorder.close()


def _serve(url: str, reports: Path, base: Any) -> Served:
    from orchestrator.store import JobStore

    recorder = open_recorder(url)
    hub = EventHub(recorder=recorder, max_events=5)  # little memory: replay comes from the store
    manager = RunManager(InProcessSink(hub), record=hub.record_run)
    settings = ApiSettings(reports_dir=str(reports), base_config=base, close_timeout_s=3.0)
    app = create_app(LocalHubClient(hub), manager, settings, store=JobStore.open(url))
    return Served(BackgroundServer(app).start(), manager, recorder)


@pytest.fixture(scope="module")
def restarted(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Served, list[str], list[dict[str, Any]]]]:
    """Two runs trained by a first server process, then a second one on the same store."""
    base, url = bars_and_store(tmp_path_factory.mktemp("store-api"), RUN, seed=5)
    reports = Path(base.reports_dir)
    first = _serve(url, reports, base)
    run_ids = []
    for _ in range(2):
        response = httpx.post(f"{first.server.url}/train", json={}, timeout=30)
        assert response.status_code == 202, response.text
        run_ids.append(response.json()["run_id"])
        first.manager.wait(run_ids[-1], 120)
    first.stop()
    second = _serve(url, reports, base)
    try:
        yield second, run_ids, bodies(second.recorder.store.events_since(0))
    finally:
        second.stop()


def test_runs_of_an_earlier_process_are_listed_newest_first_in_pages(restarted: Any) -> None:
    served, run_ids, _ = restarted
    url = served.server.url
    body = httpx.get(f"{url}/runs").json()
    assert [r["run_id"] for r in body["runs"]] == run_ids[::-1]
    assert body["next_before"] is None
    first = httpx.get(f"{url}/runs", params={"limit": 1}).json()
    assert [r["run_id"] for r in first["runs"]] == [run_ids[1]] and first["next_before"] == run_ids[1]
    second = httpx.get(f"{url}/runs", params={"limit": 1, "before": first["next_before"]}).json()
    assert [r["run_id"] for r in second["runs"]] == [run_ids[0]]
    assert httpx.get(f"{url}/runs", params={"before": "nope"}).status_code == 404
    assert httpx.get(f"{url}/runs", params={"limit": 1001}).status_code == 422
    run = httpx.get(f"{url}/runs/{run_ids[0]}").json()
    assert run["state"] == "completed"
    assert run["progress"] == {"folds_total": 2, "folds_done": 2, "epochs_total": 4, "epochs_done": 4}
    assert set(run["latest_metrics"]) == {"0", "1"} and run["config"]["epochs"] == 2
    assert run["files"]["summary"] is not None
    assert httpx.get(f"{url}/runs/{run_ids[0]}/summary").json()["run_id"] == run_ids[0]
    assert httpx.post(f"{url}/runs/{run_ids[0]}/cancel").status_code == 409


def test_events_after_any_seq_come_from_the_store_without_gap_or_repeat(restarted: Any) -> None:
    served, run_ids, stored = restarted
    url = served.server.url
    of_run = [e for e in stored if e["run_id"] == run_ids[0]]
    assert of_run[0]["type"] == "dataset_ready" and of_run[-1]["type"] == "training_complete"
    for since in [0] + [e["seq"] for e in of_run]:
        body = httpx.get(f"{url}/runs/{run_ids[0]}/events", params={"since": since}).json()
        assert body["gap"] is None
        assert body["events"] == [e for e in of_run if e["seq"] > since], since


def test_ws_resumes_from_the_store_with_every_event_once(restarted: Any) -> None:
    served, run_ids, stored = restarted
    ws = served.server.ws_url
    middle = stored[len(stored) // 2]["seq"]
    messages = asyncio.run(collect(f"{ws}?since={middle}", run_id=run_ids[1]))
    assert all(m["type"] != "history_gap" for m in messages)
    assert messages == [e for e in stored if e["seq"] > middle]
    of_first = asyncio.run(collect(f"{ws}?since=0&run_id={run_ids[0]}", run_id=run_ids[0]))
    assert of_first == [e for e in stored if e["run_id"] == run_ids[0]]


def test_seq_continues_in_the_new_process(restarted: Any) -> None:
    served, _, stored = restarted
    assert asyncio.run(LocalHubClient(_hub_of(served)).last_seq()) == stored[-1]["seq"]


def _hub_of(served: Served) -> EventHub:
    sink = served.manager.sink
    assert isinstance(sink, InProcessSink)
    return sink.hub


# ---- serve refuses a bad store at start-up ----------------------------------------------------


def _serve_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}
    env.pop("ORCHESTRATOR_DB", None)
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "serve", "--port", "0", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "db, named",
    [
        ("not a url", "'not a url' is not a database URL"),
        ("postgresql+psycopg://u:pw@127.0.0.1:1/db", "u:***@127.0.0.1:1/db"),
    ],
)
def test_serve_refuses_a_bad_db_url_with_exit_2_and_no_traceback(tmp_path: Path, db: str, named: str) -> None:
    done = _serve_cli("--db", db, "--reports-dir", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert named in done.stderr and "Traceback" not in done.stderr
    assert "pw@" not in done.stderr


def test_serve_refuses_a_corrupt_store_file_and_leaves_it_alone(tmp_path: Path) -> None:
    junk = b"not sqlite at all" * 100
    (tmp_path / "orchestrator.db").write_bytes(junk)
    done = _serve_cli("--reports-dir", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert str(tmp_path / "orchestrator.db") in done.stderr
    assert (tmp_path / "orchestrator.db").read_bytes() == junk
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orchestrator.db"]
