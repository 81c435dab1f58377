"""The trust model over real HTTP (DESIGN 10, docs/operations.md "Trust model"): a body names no
server path, storage or file the operator did not allow, no answer tells whether a path exists or
quotes a file, the job store is never served, and every error answer is JSON, bodies limited.

The server is the real app on uvicorn on a loopback port, with a token, a job store under its
reports root, two data roots and an HPO service; runs train in-process (executor local, no Ray),
so the module is cheap. Files outside the roots hold the marker ``s3cret``, which no answer may
carry.
"""

from __future__ import annotations

import http.client
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.app import ApiSettings, create_app
from api.files import ReportFiles
from api.serving import BackgroundServer
from orchestrator.events.hub import EventHub
from orchestrator.events.publish import InProcessSink
from orchestrator.events.recorder import open_recorder
from orchestrator.events.stream import LocalHubClient
from orchestrator.hpo import HpoService
from orchestrator.jobs.manager import RunManager

pytest.register_assert_rewrite("tests.api_fixtures")
from tests.api_fixtures import bars_and_store  # noqa: E402

TOKEN = "trust-s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "s3cret"
RUN = {"min_samples": 500, "lookback": 10, "folds": 2, "epochs": 1, "patience": 10_000, "executor": "local"}


@dataclass
class Trusted:
    url: str
    app: FastAPI
    tmp: Path
    reports: Path
    outside: Path
    own_data: str
    manager: RunManager

    def post(self, path: str, body: Any) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, headers=AUTH, timeout=30)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers=AUTH, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def trusted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trusted]:
    from orchestrator.store import JobStore

    tmp = tmp_path_factory.mktemp("trust")
    base, url = bars_and_store(tmp, RUN, seed=3)
    bars = Path(base.data).read_text()
    outside = tmp / "outside"
    outside.mkdir()
    (outside / "secret.csv").write_text(f"timestamp,{SECRET}\n2020-01-01,{SECRET}\n")
    (outside / "space.yaml").write_text(f"lr: {{type: float, low: 1, high: {SECRET}}}\n")
    root_a, root_b = tmp / "root-a", tmp / "root-b"
    (root_a / "sub").mkdir(parents=True)
    root_b.mkdir()
    (root_a / "bars.csv").write_text(bars)
    (root_a / "sub" / "b.csv").write_text(bars)
    (root_b / "only-b.csv").write_text(bars)
    (root_a / "link-out.csv").symlink_to(outside / "secret.csv")  # a file that escapes its root
    (root_a / "up").symlink_to(outside, target_is_directory=True)  # a folder that does
    (root_a / "inner.csv").symlink_to(root_a / "bars.csv")  # a link inside the root is fine

    recorder = open_recorder(url)
    hub = EventHub(recorder=recorder)
    manager = RunManager(InProcessSink(hub), record=hub.record_run)
    hpo = HpoService(hub, reports_dir=base.reports_dir, default_storage=url)
    settings = ApiSettings(
        reports_dir=base.reports_dir,
        base_config=base,
        token=TOKEN,
        data_roots=(str(root_a), str(root_b)),
        close_timeout_s=3.0,
    )
    app = create_app(LocalHubClient(hub), manager, settings, hpo=hpo, store=JobStore.open(url))

    async def boom() -> None:
        raise RuntimeError(f"an unexpected failure quoting {SECRET}")

    app.add_api_route("/boom", boom)  # a route that fails as no route should: the catch-all's case
    server = BackgroundServer(app).start()
    try:
        yield Trusted(server.url, app, tmp, Path(base.reports_dir), outside, base.data, manager)
    finally:
        server.stop()
        hpo.shutdown()
        manager.shutdown()
        recorder.close()


def cancel_and_wait(trusted: Trusted, run_id: str) -> None:
    trusted.post(f"/runs/{run_id}/cancel", {})
    trusted.manager.wait(run_id, 120)


def refusal(response: httpx.Response, field: str) -> str:
    """The error text of a 422 that names ``field``, checked to quote no file."""
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["fields"] == [field], body
    assert SECRET not in response.text and "root:" not in response.text
    return str(body["error"])


# ---- data: names under the roots, nothing else ------------------------------------------------


def test_data_is_sp500_the_servers_own_or_a_name_under_a_data_root(trusted: Trusted) -> None:
    root_a = trusted.tmp / "root-a"
    accepted = {
        "bars.csv": root_a / "bars.csv",
        "sub/b.csv": root_a / "sub" / "b.csv",
        "only-b.csv": trusted.tmp / "root-b" / "only-b.csv",  # the second root, searched in order
        "inner.csv": root_a / "bars.csv",  # a link that stays inside its root
        trusted.own_data: Path(trusted.own_data),  # the server's own --data, as the operator gave it
    }
    for name, file in accepted.items():
        started = trusted.post("/train", {"data": name, "epochs": 1})
        assert started.status_code == 202, (name, started.text)
        run_id = started.json()["run_id"]
        assert trusted.get(f"/runs/{run_id}").json()["config"]["data"] == str(file.resolve())
        cancel_and_wait(trusted, run_id)


@pytest.mark.parametrize(
    "data",
    [
        "/etc/passwd",
        "/etc/hostname.csv",
        "../outside/secret.csv",
        "sub/../bars.csv",
        "./bars.csv",
        "sub//b.csv",
        "~/bars.csv",
        "file:///etc/passwd",
        "C:\\bars.csv",
        "bars.csv\x00",
        "",
        "a" * 300,
        7,
    ],
)
def test_a_path_or_url_as_data_is_refused_before_the_disk_is_read(trusted: Trusted, data: Any) -> None:
    error = refusal(trusted.post("/train", {"data": data}), "data")
    assert error.startswith("data: ") and len(error) < 600, error
    for where, body in (("data", {"data": data}), ("config.data", {"config": {"data": data}})):
        refusal(trusted.post("/hpo", {"study": "refused", "trials": 1, **body}), where)


def test_a_path_that_exists_and_one_that_does_not_get_the_same_answer(trusted: Trusted) -> None:
    """Outside the roots (an absolute path) and inside them (a name that escapes by a symlink, a
    missing name): the answer depends on the name's text only, never on the disk."""
    pairs = [
        (str(trusted.outside / "secret.csv"), str(trusted.outside / "nothing.csv")),
        ("/etc/passwd", "/etc/no-such-file"),
        ("link-out.csv", "no-such.csv"),
        ("up/secret.csv", "up/nothing.csv"),
        ("up/space.yaml", "down/space.yaml"),
    ]
    for exists, missing in pairs:
        first = refusal(trusted.post("/train", {"data": exists}), "data")
        second = refusal(trusted.post("/train", {"data": missing}), "data")
        assert first.replace(repr(exists), "X") == second.replace(repr(missing), "X"), (first, second)


# ---- studies: the server's own store, a search space in the body -------------------------------


def test_a_study_body_names_no_storage_and_no_search_space_file(trusted: Trusted) -> None:
    journal = trusted.tmp / "made-by-a-client" / "x.journal"
    for storage in (
        str(journal),
        f"sqlite:///{trusted.tmp / 'made-by-a-client' / 'x.db'}",
        "postgresql://user:pw@203.0.113.9:5432/db",
        "",
    ):
        error = refusal(trusted.post("/hpo", {"study": "s", "trials": 1, "storage": storage}), "storage")
        assert "server's own store" in error
    assert not (trusted.tmp / "made-by-a-client").exists()
    answers = []
    for space in ("/etc/passwd", str(trusted.outside / "space.yaml"), str(trusted.outside / "nothing.yaml")):
        body = {"study": "s", "trials": 1, "search_space": space}
        answers.append(refusal(trusted.post("/hpo", body), "search_space"))
    assert len(set(answers)) == 1 and "must be a mapping" in answers[0], answers
    assert trusted.get("/hpo/s").status_code == 404  # nothing was started


def test_an_unknown_study_is_a_404_that_names_no_storage(trusted: Trusted) -> None:
    missing = trusted.get("/hpo/no-such-study")
    assert missing.status_code == 404 and missing.json() == {"error": "no study named 'no-such-study'"}


# ---- the job store is never served -------------------------------------------------------------


def test_the_job_store_and_its_companions_are_never_served(trusted: Trusted) -> None:
    trusted.get("/runs")  # the store has been read and written: its -wal and -shm exist
    store_files = ["orchestrator.db", "orchestrator.db-wal", "orchestrator.db-shm"]
    assert all((trusted.reports / name).is_file() for name in store_files)
    (trusted.reports / "notes.csv").write_text("a report file\n")
    assert trusted.get("/reports/notes.csv").text == "a report file\n"
    for name in [*store_files, "orchestrator.db-journal", "../bars.csv", "hpo/x/study.journal"]:
        for path in (f"/reports/{name}", f"/reports/./{name}", "/reports/" + name.replace(".", "%2e")):
            connection = http.client.HTTPConnection(
                "127.0.0.1", int(trusted.url.rsplit(":", 1)[1]), timeout=10
            )
            connection.request("GET", path, headers=AUTH)  # exactly as written: no normalizing
            response = connection.getresponse()
            body = response.read()
            assert response.status == 404 and body.startswith(b'{"error":"no report file'), (path, body[:80])
            assert b"SQLite" not in body


def test_a_store_named_like_a_report_is_hidden_too(tmp_path: Path) -> None:
    """``serve --db sqlite:///<reports>/jobs.json``: the store is hidden by its real path."""
    (tmp_path / "jobs.json").write_text("{}")
    (tmp_path / "jobs.json-wal").write_text("")
    (tmp_path / "summary.json").write_text("{}")
    files = ReportFiles.of(tmp_path, [f"sqlite:///{tmp_path / 'jobs.json'}", None, "postgresql://h/db"])
    assert files.resolve("jobs.json") is None and files.resolve("jobs.json-wal") is None
    assert files.resolve("summary.json") == (tmp_path / "summary.json").resolve()


# ---- every error answer is JSON; bodies are limited ---------------------------------------------


def test_long_names_and_values_get_a_short_json_422_naming_the_field(trusted: Trusted) -> None:
    long = "a" * 10_240
    answers = {
        "study": trusted.post("/hpo", {"study": long, "trials": 1}),
        "study ": trusted.get(f"/hpo/{long}"),
        "study  ": trusted.post(f"/hpo/{long}/cancel", {}),
        "run_id": trusted.get(f"/runs/{long}"),
        "run_id ": trusted.get(f"/runs/{long}/events"),
        "run_id  ": trusted.post(f"/runs/{long}/cancel", {}),
        "before": trusted.get("/runs", params={"before": long}),
        "since": trusted.get("/data/candles", params={"since": long}),
        "data": trusted.post("/train", {"data": "x" * 500_000}),
        "date_format": trusted.post("/train", {"date_format": 7, "epochs": "e" * 500_000}),
    }
    for field, response in answers.items():
        assert response.status_code == 422, (field, response.text[:200])
        assert response.headers["content-type"] == "application/json", field
        assert field.strip() in response.json()["error"] and len(response.text) < 1000, response.text[:300]


def test_a_body_over_the_limit_is_a_json_413_declared_or_streamed(trusted: Trusted) -> None:
    big = b'{"data": "' + b"a" * (10 * 2**20) + b'"}'
    declared = httpx.post(f"{trusted.url}/train", content=big, headers=AUTH, timeout=60)
    assert declared.status_code == 413 and "at most 1048576 bytes" in declared.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"data": "'
        for _ in range(3):
            yield b"a" * 2**19
        yield b'"}'

    streamed = httpx.post(f"{trusted.url}/hpo", content=chunks(), headers=AUTH, timeout=60)
    assert streamed.status_code == 413 and "1 MiB" in streamed.json()["error"]
    # the token is checked first: no body is read for a request without it
    anonymous = httpx.post(f"{trusted.url}/train", content=big, timeout=60)
    assert anonymous.status_code == 401


def test_deep_nesting_is_a_json_422(trusted: Trusted) -> None:
    for depth in (40, 1000, 100_000):
        for path in ("/train", "/hpo"):
            body = b'{"a": ' + b"[" * depth + b"]" * depth + b"}"
            response = httpx.post(f"{trusted.url}{path}", content=body, headers=AUTH, timeout=30)
            assert response.status_code == 422, (depth, path, response.text[:200])
            assert "nests deeper than 32 levels" in response.json()["error"]


def test_an_unexpected_error_is_a_json_500_logged_once(trusted: Trusted) -> None:
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = Keep(logging.ERROR)
    loggers = [logging.getLogger(name) for name in ("api.errors", "uvicorn.error", "uvicorn")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        response = trusted.get("/boom")
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    assert response.status_code == 500
    assert response.json() == {
        "error": "internal server error (RuntimeError); the server's log has the details"
    }
    assert [r.name for r in seen] == ["api.errors"], [r.getMessage() for r in seen]
    assert seen[0].exc_info is not None and "GET /boom" in seen[0].getMessage()
    for path, status in (("/nowhere", 404), ("/train", 405)):
        answer = trusted.get(path)
        assert answer.status_code == status and "error" in answer.json()
