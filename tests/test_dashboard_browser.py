"""The dashboard and the reports in headless Chromium, against a real server during a real run.

Skipped, with the reason, where no Chromium is installed (``apt-get install chromium``, or set
``$CHROMIUM``). ``make browser-check`` runs this module with ``DASHBOARD_SCREENSHOTS=docs/screenshots``,
which also writes the screenshots the README shows; otherwise they go to a temporary folder.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from api.app import ApiSettings, create_app
from api.serving import BackgroundServer
from orchestrator.events.stream import RayHubClient
from orchestrator.hpo.selection import selection_diagnostics
from orchestrator.hpo.selection import trial_rows as validation_rows
from orchestrator.hpo.selection_files import selection_view
from orchestrator.run.report_html import study_status_of_rows, write_study_report
from tests.browser.cdp import Tab
from tests.browser.check_seed_client import chromium, find_chromium

pytest.register_assert_rewrite("tests.api_fixtures")
from tests.api_fixtures import RUN_DEFAULTS, ApiServer  # noqa: E402

pytest_plugins = ["tests.api_fixtures"]
CHROMIUM = find_chromium()
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install chromium, or set $CHROMIUM"),
    pytest.mark.usefixtures("release_idle_actors"),
]
SHOTS = os.environ.get("DASHBOARD_SCREENSHOTS")
EPOCHS = 3
FOLDS = RUN_DEFAULTS["folds"]
TOKEN = "dashboard-test-token-7f3a"
STATE = "(document.querySelector('#run-facts [data-state]') || {dataset: {}}).dataset.state"
FOCUSABLE = """(() => {
  const all = Array.from(document.querySelectorAll('a[href], button, input, select, textarea, summary, [tabindex]'))
    .filter((e) => e.tabIndex >= 0 && !e.disabled && e.checkVisibility({ visibilityProperty: true }));
  all.forEach((e, i) => { e.dataset.tabId = String(i); });
  return all.length;
})()"""


RUNS_LIST = """(() => {
  const row = document.querySelector('#runs-table a[href="#/run/RUN_ID"]').closest('tr');
  return {heads: Array.from(document.querySelectorAll('#runs-table th')).map((th) => th.textContent),
          state: row.querySelector('[data-state]').dataset.state,
          cells: Array.from(row.children).map((td) => td.textContent)};
})()"""
# A runs payload as a server with a queue would send it: one run waiting at position 1.
WITH_A_QUEUE = """(() => {
  const fetchFromServer = window.fetch.bind(window);
  window.fetch = async (url, options) => {
    const response = await fetchFromServer(url, options);
    if (String(url) !== '/runs') return response;
    const body = await response.json();
    body.runs.forEach((run) => { run.queue_position = null; });
    body.runs.push({run_id: 'run_waiting', state: 'queued', queue_position: 1, created_at: Date.now() / 1000,
                    ended_at: null, progress: {epochs_done: 0, epochs_total: 6}, latest_metrics: {}});
    return new Response(JSON.stringify(body), {status: 200, headers: {'Content-Type': 'application/json'}});
  };
})()"""


@pytest.fixture(scope="module")
def devtools() -> Iterator[str]:
    assert CHROMIUM is not None
    with chromium(CHROMIUM) as url:
        yield url


@pytest.fixture
def tab(devtools: str) -> Iterator[Tab]:
    page = Tab(devtools)
    page.resize(1280, 800)
    try:
        yield page
    finally:
        page.close()


def screenshot(tab: Tab, folder: Path, name: str, width: int, height: int, full_page: bool = False) -> Path:
    """A PNG of the page at ``width`` (the charts follow the width first); checks its size."""
    tab.resize(width, height)
    tab.wait_for(
        f"Array.from(document.querySelectorAll('.plot canvas')).every((c) => c.getBoundingClientRect().width <= {width})",
        10,
    )
    time.sleep(0.3)
    path = tab.screenshot((Path(SHOTS) if SHOTS else folder) / name, full_page=full_page)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    png_width, png_height = struct.unpack(">II", data[16:24])
    assert png_width == width and (png_height == height or full_page)
    assert tab.evaluate("document.documentElement.scrollWidth") <= width, (
        f"{name}: the page is wider than {width} px"
    )
    return path


def tab_through(tab: Tab) -> None:
    """Tab from the top: every visible control gets the focus, in turn."""
    count = tab.evaluate(FOCUSABLE)
    assert count > 3
    tab.evaluate("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0)")
    reached = set()
    for _ in range(count + 5):
        tab.press_tab()
        reached.add(tab.evaluate("document.activeElement.dataset.tabId || null"))
    missing = set(map(str, range(count))) - reached
    names = tab.evaluate(
        f"Array.from(document.querySelectorAll('[data-tab-id]')).filter((e) => {sorted(missing)!r}.includes(e.dataset.tabId))"
        ".map((e) => e.outerHTML.slice(0, 80))"
    )
    assert not missing, f"not reachable by Tab: {names}"


@dataclass
class LiveRun:
    run_id: str
    trace: list[dict[str, Any]]
    errors: list[str]
    run_dir: Path
    runs_list: dict[str, Any]  # the runs page after the run: its column heads and the run's state
    vs_naive: int  # rows of the run page's table against the naive forecast


@pytest.fixture(scope="module")
def live_run(api_server: ApiServer, devtools: str, tmp_path_factory: pytest.TempPathFactory) -> LiveRun:
    """The dashboard open on a run from its start to its end; what the page drew on the way."""
    shots = tmp_path_factory.mktemp("shots")
    tab = Tab(devtools)
    try:
        tab.resize(1280, 800)
        tab.navigate(f"{api_server.url}/ui")
        tab.wait_for(
            "document.getElementById('live-status').dataset.state === 'live'", 30, "the runs page's /ws"
        )
        run_id = api_server.post_train(epochs=EPOCHS, seed=21)
        tab.evaluate(f"location.hash = '#/run/{run_id}'")
        tab.wait_for(f"{STATE} === 'completed'", 180, "the page to show the run completed")
        tab.wait_for(
            f"document.querySelectorAll('.diag-card').length === {FOLDS}", 60, "every fold's diagnostics"
        )
        screenshot(tab, shots, "dashboard-run-1280x800.png", 1280, 800)
        screenshot(tab, shots, "dashboard-run-1280-full.png", 1280, 800, full_page=True)
        screenshot(tab, shots, "dashboard-run-480.png", 480, 900, full_page=True)
        tab.wait_for("!!document.getElementById('run-vs-naive')", 30, "the run against the naive forecast")
        vs_naive = tab.evaluate("document.querySelectorAll('#naive tbody tr').length")
        tab.resize(1280, 800)
        tab.evaluate("document.getElementById('naive').scrollIntoView()")
        screenshot(tab, shots, "dashboard-run-naive-1280x800.png", 1280, 800)
        tab.resize(1280, 800)
        tab.evaluate("location.hash = '#/'")
        tab.wait_for(
            f"!!document.querySelector('#runs-table a[href=\"#/run/{run_id}\"]')", 30, "the runs list"
        )
        runs_list = tab.evaluate(RUNS_LIST.replace("RUN_ID", run_id))
        screenshot(tab, shots, "dashboard-runs-1280x800.png", 1280, 800)
        screenshot(tab, shots, "dashboard-runs-480.png", 480, 800)
        return LiveRun(
            run_id,
            tab.evaluate("window.__dashboardTrace"),
            tab.errors(),
            Path(api_server.manager.get(run_id).run_dir),
            runs_list,
            vs_naive,
        )
    finally:
        tab.close()


def test_each_fold_curve_gets_a_point_per_epoch_and_the_run_shows_completed(live_run: LiveRun) -> None:
    assert live_run.errors == []
    assert live_run.vs_naive == FOLDS + 1  # each fold against its naive forecast, then all folds
    for fold in range(FOLDS):
        counts = [t["points"] for t in live_run.trace if t["chart"] == "loss" and t["fold"] == fold]
        assert counts == list(range(1, EPOCHS + 1)), f"fold {fold} drew {counts}"


def test_the_runs_list_shows_the_run_and_a_queue_column_only_once_runs_carry_a_position(
    api_server: ApiServer, live_run: LiveRun, tab: Tab
) -> None:
    listed = live_run.runs_list
    assert listed["state"] == "completed" and "queue" not in listed["heads"]
    assert (
        listed["heads"][:3] == ["run", "state", "epochs"]
        and f"{EPOCHS * FOLDS}/{EPOCHS * FOLDS}" in listed["cells"][2]
    )
    tab.call("Page.addScriptToEvaluateOnNewDocument", {"source": WITH_A_QUEUE})
    tab.navigate(f"{api_server.url}/ui")
    tab.wait_for(
        "!!document.querySelector('#runs-table a[href=\"#/run/run_waiting\"]')", 30, "the queued run"
    )
    queued = tab.evaluate(RUNS_LIST.replace("RUN_ID", "run_waiting"))
    assert queued["heads"][2] == "queue" and queued["cells"][2] == "1" and queued["state"] == "queued"
    assert tab.evaluate(RUNS_LIST.replace("RUN_ID", live_run.run_id))["cells"][2] == "–"
    assert tab.errors() == []


def test_a_finished_run_page_replays_and_every_control_is_reachable_by_tab(
    api_server: ApiServer, live_run: LiveRun, tab: Tab
) -> None:
    tab.navigate(f"{api_server.url}/ui#/run/{live_run.run_id}")
    tab.wait_for(f"{STATE} === 'completed' && document.querySelectorAll('.diag-card').length === {FOLDS}", 60)
    points = tab.wait_for("document.getElementById('chart-loss').dataset.foldPoints", 30)
    assert points == "{" + ",".join(f'"{k}":{EPOCHS}' for k in range(FOLDS)) + "}"
    tab.wait_for("!!document.querySelector('#summary table')", 30, "the summary tables")
    time.sleep(1)  # the last snapshot refresh re-renders the header
    tab_through(tab)
    assert tab.errors() == []


def test_the_report_opens_from_a_file_and_makes_no_request(
    live_run: LiveRun, tab: Tab, tmp_path: Path
) -> None:
    report = live_run.run_dir / "report.html"
    tab.navigate(report.as_uri())
    tab.wait_for(f"{STATE} === 'completed' && document.querySelectorAll('.diag-card').length === {FOLDS}", 30)
    assert (
        tab.evaluate("document.getElementById('chart-loss').dataset.foldPoints").count(f":{EPOCHS}") == FOLDS
    )
    assert tab.evaluate("document.querySelectorAll('#summary table').length") >= 2
    assert tab.evaluate("document.querySelectorAll('#naive tbody tr').length") == FOLDS + 1
    assert tab.evaluate("!!document.getElementById('chart-vs-naive')")
    tab.resize(480, 900)
    tab.wait_for("document.documentElement.scrollWidth <= 480", 10, "the report to fit 480 px")
    assert tab.requests == [report.as_uri()]
    assert tab.errors() == []


def test_with_a_token_the_page_asks_for_it_and_keeps_it_out_of_the_url(
    api_server: ApiServer, live_run: LiveRun, tab: Tab
) -> None:
    with api_server.another_server(token=TOKEN) as server:
        tab.navigate(f"{server.url}/ui#/run/{live_run.run_id}")
        tab.wait_for("!!document.getElementById('token-form')", 30, "the token form")
        tab.evaluate(
            f"document.getElementById('token-input').value = '{TOKEN}';"
            "document.getElementById('token-form').requestSubmit()"
        )
        tab.wait_for(
            f"{STATE} === 'completed' && document.querySelectorAll('.diag-card').length === {FOLDS}", 60
        )
        tab.wait_for(
            "document.getElementById('live-status').dataset.state === 'live'", 30, "/ws with the token"
        )
        assert TOKEN not in tab.evaluate("location.href")
        assert tab.evaluate("sessionStorage.getItem('orchestrator.dashboard.token')") == TOKEN
        errors = tab.errors()
        assert all("401" in e for e in errors), errors  # only the first, refused, request
        assert not any(TOKEN in e for e in errors)


def trial_rows() -> list[dict[str, Any]]:
    states = ["complete", "complete", "pruned", "complete", "fail", "complete", "running"]
    rows = []
    for n, state in enumerate(states):
        value = {0: 0.61, 1: 0.58, 2: None, 3: 0.55, 5: 0.57}.get(n)
        rows.append(
            {
                "number": n,
                "state": state,
                "value": value,
                "duration_seconds": 30.0 + n,
                "datetime_start": f"2026-11-29T10:{2 * n:02d}:00",
                "datetime_complete": None if state == "running" else f"2026-11-29T10:{2 * n + 1:02d}:30",
                "last_epoch": 2,
                "last_intermediate_value": 0.66 if state == "pruned" else value,
                "run_id": f"hpo_demo_t{n:04d}",
                "run_state": "completed" if state == "complete" else "cancelled",
                "error": "RuntimeError: worker died" if state == "fail" else None,
                "params_lr": 10 ** (-4 + n * 0.4),
                "params_hidden": [16, 32, 64][n % 3],
                "params_window": ["expanding", "rolling"][n % 2],
            }
        )
    return rows


class FakeStudies:
    """An ``HpoService`` with one study of canned trials (the dashboard's study page needs no real study)."""

    def __init__(self, status: dict[str, Any]) -> None:
        self._status = status

    def start(self, spec: Any) -> Any:
        raise NotImplementedError

    def studies(self) -> list[dict[str, Any]]:
        return [
            {
                "study": "demo",
                "state": "running",
                "started_at": time.time() - 600,
                "ended_at": None,
                "error": None,
            }
        ]

    def status(self, study: str) -> dict[str, Any]:
        return self._status

    def cancel(self, study: str) -> Any:
        raise NotImplementedError


def canned_selection() -> dict[str, Any]:
    """The selection view of the canned study's completed trials (0, 1, 3, 5), computed by the
    product from simulated validation rows: 640 returns of scale 0.42 (so val_nll is near the
    canned values, about 0.55) and four forecasts that are equally useless noise."""
    rng = np.random.default_rng(6)
    n, scale = 640, 0.42
    times = np.datetime64("2024-01-01T00:00:00") + np.arange(n) * np.timedelta64(1, "D")
    y = rng.normal(0.0, scale, n)
    sigma = np.full(n, scale)
    trials = []
    for number in (0, 1, 3, 5):
        mu = rng.normal(0.0, 0.05 * scale, n)
        p_up = np.clip(0.5 + 2.0 * mu / scale, 0.01, 0.99)
        trials.append(
            validation_rows(number, times, y, mu, sigma, p_up, p_up, naive_mu=np.zeros(n), naive_sigma=sigma)
        )
    report = selection_diagnostics(trials, metric="val_nll", direction="minimize", best_trial=3).report
    assert report["selection"] == "luck" and report["verdict"] == "no evidence of skill"
    naive = {"nll_diff": 0.0009, "brier_skill": -0.004, "dm_stat": 0.19, "dm_p": report["best_dm_p"]}
    view = selection_view({**report, "best_vs_naive": naive})
    assert view is not None
    return view


def check_the_edge(tab: Tab, selection: dict[str, Any]) -> None:
    """The study page's (or report's) verdict, selection and both CSCV charts."""
    tab.wait_for("!!document.getElementById('chart-is-oos')", 30, "the in-sample/out-of-sample scatter")
    facts = tab.evaluate("document.getElementById('edge-facts').textContent")
    assert facts.startswith(f"Verdict{selection['verdict']}Selection{selection['selection']}")
    assert f"PBO{selection['pbo']:.3f} over 12870 CSCV splits" in facts
    legend = tab.evaluate("document.getElementById('chart-pbo').textContent")
    assert f"PBO {selection['pbo']:.3f}" in legend and "overfit" in legend


def test_study_page_and_report_mark_pruned_and_failed_trials(
    api_server: ApiServer, tab: Tab, tmp_path: Path
) -> None:
    rows = trial_rows()
    status = study_status_of_rows(
        tmp_path, rows, study="demo", metric="val_nll", direction="minimize", state="running", trials_total=8
    )
    status["selection"] = selection = canned_selection()
    settings = ApiSettings(reports_dir=str(api_server.reports_dir), base_config=api_server.base_config)
    app = create_app(RayHubClient(api_server.hub), api_server.manager, settings, hpo=FakeStudies(status))
    server = BackgroundServer(app).start()
    try:
        tab.navigate(f"{server.url}/ui")
        tab.wait_for("!!document.querySelector('a[href=\"#/study/demo\"]')", 30, "the studies list")
        tab.evaluate("location.hash = '#/study/demo'")
        tab.wait_for(
            f"document.getElementById('chart-objective') && document.getElementById('chart-objective').dataset.trials === '{len(rows)}'",
            30,
        )
        assert tab.evaluate("document.querySelectorAll('#params figure').length") == 3
        assert tab.evaluate("document.querySelectorAll('#trials tbody tr').length") == len(rows)
        legend = tab.evaluate("document.getElementById('chart-objective').textContent")
        assert "pruned" in legend and "failed" in legend and "best so far" in legend
        check_the_edge(tab, selection)
        tab.wait_for("document.getElementById('live-status').dataset.state === 'live'", 30)
        screenshot(tab, tmp_path, "dashboard-study-1280x800.png", 1280, 800)
        screenshot(tab, tmp_path, "dashboard-study-480.png", 480, 900, full_page=True)
        tab.resize(1280, 800)
        tab_through(tab)
        assert tab.errors() == []
    finally:
        server.stop()
    report = write_study_report(
        tmp_path / "study", rows, study="demo", metric="val_nll", direction="minimize", selection=selection
    )
    tab.requests.clear()
    tab.navigate(report.as_uri())
    tab.wait_for(
        f"document.getElementById('chart-objective') && document.getElementById('chart-objective').dataset.trials === '{len(rows)}'",
        30,
    )
    assert tab.evaluate("document.querySelectorAll('#params figure').length") == 3
    check_the_edge(tab, selection)
    screenshot(tab, tmp_path, "report-study-1280-full.png", 1280, 800, full_page=True)
    assert tab.requests == [report.as_uri()]
    assert tab.errors() == []
