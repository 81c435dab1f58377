"""The dashboard's routes on a real server: the page and its files, the token rule, fold diagnostics, reports."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import tomllib
from pathlib import Path

import httpx
import pytest

from api.routes.dashboard import WEB_ROOT
from orchestrator.run.files import diagnostics_of_fold

pytest.register_assert_rewrite("tests.api_fixtures")
from tests.api_fixtures import ApiServer  # noqa: E402

pytest_plugins = ["tests.api_fixtures"]
pytestmark = pytest.mark.usefixtures("release_idle_actors")

ROOT = Path(__file__).resolve().parents[1]
ASSETS = (
    "vendor/uPlot.iife.min.js",
    "vendor/uPlot.min.css",
    "charts.js",
    "edge.js",
    "views.js",
    "dashboard.js",
    "dashboard.css",
)


def test_the_page_is_at_ui_and_the_root_stays_json(api_server: ApiServer) -> None:
    page = httpx.get(f"{api_server.url}/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(s.startswith(("/ui/static/", "#", "data:")) for s in sources), sources
    assert 'data-features="hpo"' in page.text  # this server serves /hpo: the page lists studies
    for accept in ("*/*", "text/html,application/xhtml+xml,*/*;q=0.8"):  # curl, a browser
        root = httpx.get(f"{api_server.url}/", headers={"Accept": accept})
        assert root.headers["content-type"] == "application/json" and root.json()["status"] == "ok"


def test_scripts_and_styles_come_from_the_package(api_server: ApiServer) -> None:
    page = httpx.get(f"{api_server.url}/ui").text
    loaded = {s.removeprefix("/ui/static/") for s in re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', page)}
    assert loaded == set(ASSETS)  # the files checked here are the ones the page loads
    for name in ASSETS:
        response = httpx.get(f"{api_server.url}/ui/static/{name}")
        assert response.status_code == 200, name
        assert response.content == (WEB_ROOT / name).read_bytes()
        kind = "text/css" if name.endswith(".css") else "javascript"
        assert kind in response.headers["content-type"]
    for bad in (
        "../report_html.py",
        "..%2F..%2Fapi%2Fapp.py",
        "report.html",
        "vendor/uPlot.LICENSE",
        "none.js",
        "vendor",
    ):
        response = httpx.get(f"{api_server.url}/ui/static/{bad}")
        assert response.status_code == 404 and "error" in response.json(), bad


def test_the_vendored_library_is_the_pinned_npm_release() -> None:
    readme = (WEB_ROOT / "vendor" / "README.md").read_text()
    for name in ("uPlot.iife.min.js", "uPlot.min.css"):
        digest = hashlib.sha256((WEB_ROOT / "vendor" / name).read_bytes()).hexdigest()
        assert f"{name}  sha256 {digest}" in readme, name
    assert "MIT" in (WEB_ROOT / "vendor" / "uPlot.LICENSE").read_text()
    assert "v1.6.32" in (WEB_ROOT / "vendor" / "uPlot.iife.min.js").read_text()[:80]


def test_the_package_data_ships_every_web_file() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "orchestrator"
    ]
    web_files = [path for path in WEB_ROOT.rglob("*") if path.is_file() and path.name != "README.md"]
    names = {path.relative_to(WEB_ROOT).as_posix() for path in web_files}
    assert {*ASSETS, "dashboard.html", "report.html", "report.js"} <= names, sorted(names)
    for path in web_files:
        relative = path.relative_to(WEB_ROOT.parent).as_posix()
        assert any(fnmatch.fnmatch(relative, p) for p in patterns), f"{relative} is not package data"


def test_with_a_token_the_page_is_public_and_the_data_is_not(api_server: ApiServer) -> None:
    with api_server.another_server(token="t0k") as server:
        assert httpx.get(f"{server.url}/ui").status_code == 200
        assert httpx.get(f"{server.url}/ui/static/dashboard.js").status_code == 200
        for path in ("/runs", "/runs/x/folds/0/diagnostics", "/"):
            assert httpx.get(f"{server.url}{path}").status_code == 401, path
        answer = httpx.get(
            f"{server.url}/runs/x/folds/0/diagnostics", headers={"Authorization": "Bearer t0k"}
        )
        assert answer.status_code == 404 and "x" in answer.json()["error"]


def test_fold_diagnostics_and_the_report_of_a_finished_run(api_server: ApiServer) -> None:
    run_id = api_server.post_train(seed=5)
    snapshot = api_server.wait_done(run_id)
    assert snapshot["state"] == "completed"
    run_dir = Path(snapshot["run_dir"])
    base = f"{api_server.url}/runs/{run_id}/folds"
    for fold in (0, 1):
        body = httpx.get(f"{base}/{fold}/diagnostics").json()
        assert body == diagnostics_of_fold(run_dir, fold, alpha=snapshot["config"]["alpha"])
        assert body["fold_id"] == fold and body["rows"] > 0
        assert sum(body["reliability"]["calibrated"]["count"]) == body["rows"] == sum(body["pit"]["counts"])
        assert body["coverage"]["target"] == pytest.approx(1 - snapshot["config"]["alpha"])
    assert len(httpx.get(f"{base}/0/diagnostics", params={"bins": 5}).json()["pit"]["counts"]) == 5
    missing = httpx.get(f"{base}/2/diagnostics")
    assert missing.status_code == 404 and "no predictions yet" in missing.json()["error"]
    assert httpx.get(f"{api_server.url}/runs/nope/folds/0/diagnostics").status_code == 404
    for bad in (f"{base}/-1/diagnostics", f"{base}/0/diagnostics?bins=1", f"{base}/x/diagnostics"):
        assert httpx.get(bad).status_code == 422, bad

    report = httpx.get(f"{api_server.url}/reports/{run_id}/report.html")
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', report.text, re.S).group(1))  # type: ignore[union-attr]
    assert data["run_id"] == run_id and sorted(data["diagnostics"]) == ["0", "1"]
    epochs = [e for e in data["events"] if e["type"] == "epoch_metrics"]
    assert len(epochs) == snapshot["progress"]["epochs_total"]
    assert data["summary"] == httpx.get(f"{api_server.url}/runs/{run_id}/summary").json()
