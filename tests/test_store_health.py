"""The job store's health while serving (issue 20, faults): made read-only, then writable again;
its folder removed. ``GET /`` shows it (error, since when, retrying), the serve log says it once
and again when it recovers, nothing is lost, and a vanished file stops the writer instead of a
silent fresh start. A real uvicorn server over an in-process hub and a SQLite store (no Ray)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from api.app import ApiSettings, create_app
from api.serving import BackgroundServer
from orchestrator.events.hub import EventHub
from orchestrator.events.publish import InProcessSink
from orchestrator.events.recorder import StoreRecorder, open_recorder
from orchestrator.events.stream import LocalHubClient
from orchestrator.jobs.manager import RunManager
from orchestrator.store import JobStore
from tests.made_events import epoch, note

pytest.register_assert_rewrite("tests.api_fixtures")
from tests.api_fixtures import bars_and_store  # noqa: E402

RUN = {"min_samples": 500, "lookback": 10, "folds": 2, "epochs": 2, "patience": 10_000, "executor": "local"}


class ReadOnly:
    """SQLite's own read-only switch (``PRAGMA query_only``) on every connection the recorder
    takes: its writes fail with "attempt to write a readonly database" while it is on (what a
    read-only mount does; this machine's tests run as root, whom file modes do not stop)."""

    def __init__(self, recorder: StoreRecorder) -> None:
        self.on = False
        event.listen(recorder.store.engine, "checkout", self._checkout)

    def _checkout(self, dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA query_only={int(self.on)}")
        cursor.close()


class Served:
    def __init__(self, tmp: Path, poll_timeout_s: float = 0.5) -> None:
        base, url = bars_and_store(tmp, RUN, seed=3)
        self.reports = Path(base.reports_dir)
        self.recorder = open_recorder(url)
        self.hub = EventHub(recorder=self.recorder)
        self.manager = RunManager(InProcessSink(self.hub), record=self.hub.record_run)
        settings = ApiSettings(
            reports_dir=str(self.reports),
            base_config=base,
            close_timeout_s=3.0,
            poll_timeout_s=poll_timeout_s,
        )
        app = create_app(LocalHubClient(self.hub), self.manager, settings, store=JobStore.open(url))
        self.server = BackgroundServer(app).start()
        self._pseq = 0

    def health(self) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(self.server.url + "/", timeout=10).json()
        return answer

    def publish(self, count: int) -> None:
        for _ in range(count):
            self.hub.publish("r", "driver", self._pseq, epoch(0, self._pseq) if self._pseq else note("go"))
            self._pseq += 1

    def stop(self) -> None:
        self.server.stop()
        self.manager.shutdown()
        self.recorder.close(timeout=2.0)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    served = Served(tmp_path)
    try:
        yield served
    finally:
        served.stop()


def _until(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"not {what} within {timeout} s"
        time.sleep(0.05)
    return found


def test_a_read_only_store_shows_in_get_and_the_log_once_and_nothing_is_lost(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    readonly = ReadOnly(served.recorder)
    served.publish(3)
    assert served.recorder.flush()
    assert served.health()["store"]["ok"] is True and served.health()["status"] == "ok"
    with caplog.at_level(logging.WARNING, logger="api.ws.fanout"):
        readonly.on = True
        served.publish(20)
        failing = _until(lambda: (h := served.health())["store"]["ok"] is False and h, "failing")
        store = failing["store"]
        assert failing["status"] == "degraded" and store["retrying"] is True
        assert "readonly" in store["error"] and store["since"] <= time.time() and store["pending"] >= 20
        served.publish(5)  # still failing: the log says it once, not per retry
        time.sleep(1.5)
        readonly.on = False
        _until(lambda: served.health()["store"]["ok"], "healthy again")
        _until(lambda: any("healthy again" in r.getMessage() for r in caplog.records), "logged")
    assert served.recorder.flush()
    assert served.recorder.store.last_seq() == 28  # nothing lost: every event is written
    failures = [r for r in caplog.records if "is failing since" in r.getMessage()]
    assert len(failures) == 1 and "readonly" in failures[0].getMessage()
    assert len([r for r in caplog.records if "healthy again" in r.getMessage()]) == 1


def test_a_removed_store_folder_is_an_error_not_a_silent_fresh_start(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    served.publish(3)
    assert served.recorder.flush()
    with caplog.at_level(logging.WARNING, logger="api.ws.fanout"):
        shutil.rmtree(served.reports)
        served.publish(2)
        failing = _until(lambda: (h := served.health())["store"]["ok"] is False and h, "failing")
        _until(lambda: any("is failing since" in r.getMessage() for r in caplog.records), "logged")
    store = failing["store"]
    assert store["retrying"] is False and "was removed while this server wrote it" in store["error"]
    assert not (served.reports / "orchestrator.db").exists()  # not started anew in a new file
    served.reports.mkdir(parents=True)  # the folder back (empty): still the same error
    served.publish(1)
    time.sleep(0.5)
    assert served.health()["store"]["retrying"] is False
    assert not (served.reports / "orchestrator.db").exists()


def test_durable_waits_for_the_write_and_returns_at_once_while_the_store_fails(served: Served) -> None:
    readonly = ReadOnly(served.recorder)

    async def ack(count: int) -> tuple[bool, float]:
        served.publish(count)
        started = time.monotonic()
        done = await served.recorder.durable(served.recorder.queued, 10.0)
        return done, time.monotonic() - started

    written, _ = asyncio.run(ack(2))
    assert written and served.recorder.stats()["pending"] == 0
    readonly.on = True
    _until(
        lambda: (served.publish(1), served.recorder.flush(0.2), not served.recorder.health()["ok"])[-1],
        "failing",
    )
    not_written, waited = asyncio.run(ack(1))
    assert not not_written and waited < 5.0  # a producer is not held up by a failing store
    readonly.on = False
    assert served.recorder.flush(15)
