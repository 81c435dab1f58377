"""The seed's JavaScript client example, unchanged, against the real server in headless Chromium.

The full check (``make browser-check``) needs Chromium and port 8000, and takes about a minute: it
is marked slow. The verdict it applies and the verbatim copy of the example are checked here on
every run. Where Chromium is installed, the example (only its URL changed, to the test server's)
is also shown two runs training at once: it must print one whole run, then the other.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from orchestrator.messages import EPOCH_METRIC_FIELDS, EpochMetrics
from tests.browser.check_seed_client import (
    ROOT,
    SEED_URL,
    PageLog,
    all_types_source,
    chromium,
    find_chromium,
    html,
    judge,
    no_chromium_reason,
    open_page,
    page_server,
    port_free,
    seed_source,
    seed_source_at,
    wait_for,
)

pytest.register_assert_rewrite("tests.api_fixtures")
from tests.api_fixtures import (  # noqa: E402
    FIRST_OF_TWO,
    SECOND_OF_TWO,
    ApiServer,
    assert_legal_run,
    recorded,
    start_two_runs,
    two_runs_done,
)

pytest_plugins = ["tests.api_fixtures"]

SEED_DOC = ROOT.parent / "shared" / "seed" / "websocket-message-schema.md"


def test_copy_is_the_seed_example_verbatim() -> None:
    if not SEED_DOC.exists():
        pytest.skip(f"the seed document is not beside this checkout ({SEED_DOC})")
    match = re.search(r"```javascript\n(.*?)```", SEED_DOC.read_text(), re.S)
    assert match is not None
    assert seed_source() == match.group(1)


def test_all_types_variant_changes_only_the_url() -> None:
    variant = all_types_source(["epoch_metrics", "chart_update"])
    assert variant.replace(f"{SEED_URL}?types=epoch_metrics,chart_update", SEED_URL) == seed_source()


def _frame(message: dict[str, object]) -> str:
    return json.dumps(message)


EPOCH = EpochMetrics(
    fold_id=0,
    epoch=0,
    elapsed_seconds=1.0,
    val_auc=0.51,
    DirAcc=0.5,
    **{
        name: None
        for name in EPOCH_METRIC_FIELDS
        if name not in ("fold_id", "epoch", "elapsed_seconds", "val_auc", "DirAcc")
    },
).model_dump(exclude_none=False)


def test_verdict_accepts_a_clean_page_and_names_each_problem() -> None:
    clean = PageLog(
        "ok", frames=[_frame(EPOCH), '{"type":"pong"}'], console=[("log", "Epoch 0: AUC=0.51, DirAcc=0.5")]
    )
    assert judge(clean, {"epoch_metrics", "pong"}, {"chart_update"})["problems"] == []

    bad = PageLog(
        "bad",
        frames=[
            _frame({**EPOCH, "val_auc": "high"}),
            _frame({"type": "surprise"}),
            "not json",
            _frame({"type": "chart_update", "candles": []}),
        ],
        console=[("log", "Epoch 0: AUC=undefined, DirAcc=0.5"), ("error", "WebSocket error: [object Event]")],
        exceptions=["TypeError: x is undefined"],
    )
    problems = "\n".join(judge(bad, {"epoch_metrics", "training_complete"}, {"chart_update"})["problems"])
    for expected in (
        "invalid epoch_metrics",
        "unknown type 'surprise'",
        "not JSON",
        "uncaught exception: TypeError",
        "console error not caused by a training_error: WebSocket error",
        "log line with undefined",
        "never received training_complete",
        "received chart_update, which it did not ask for",
    ):
        assert expected in problems, problems


def test_example_error_line_is_allowed_only_for_a_training_error_sent() -> None:
    error: dict[str, object] = {"type": "training_error", "error": "run r1 was cancelled"}
    line = ("error", "Training error: run r1 was cancelled")
    assert judge(PageLog("p", frames=[_frame(error)], console=[line]), set(), set())["problems"] == []
    assert judge(PageLog("p", frames=[], console=[line]), set(), set())["problems"] != []


@pytest.mark.slow
def test_seed_example_in_chromium_shows_no_error(tmp_path: Path) -> None:
    if find_chromium() is None:
        pytest.skip(no_chromium_reason())
    if not port_free(8000):
        pytest.skip("port 8000 is busy; the seed example connects to ws://localhost:8000/ws")
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.browser.check_seed_client", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["ok"] and report["seed.html (unchanged)"]["exceptions"] == 0


def js_text(value: Any) -> str:
    """``${value}`` in JavaScript, for a JSON value the example prints (numbers, strings, null)."""
    if value is None:
        return "null"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value).lower() if isinstance(value, bool) else str(value)
    number = float(value)
    if number.is_integer() and abs(number) < 1e21:
        return str(int(number))
    text = repr(number)  # the shortest round trip, as JavaScript's; only the exponent rule differs
    return format(Decimal(text), "f") if "e" in text and 1e-7 <= abs(number) < 1e21 else text


def seed_js_console(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """What the seed's JavaScript example logs for these events: (console level, text)."""
    lines = []
    for e in events:
        if e["type"] == "training_start":
            lines.append(
                (
                    "log",
                    f"Training started: {js_text(e['total_folds'])} folds, {js_text(e['total_epochs'])} epochs",
                )
            )
        elif e["type"] == "epoch_metrics":
            lines.append(
                (
                    "log",
                    f"Epoch {js_text(e['epoch'])}: AUC={js_text(e['val_auc'])}, DirAcc={js_text(e['DirAcc'])}",
                )
            )
        elif e["type"] == "training_complete":
            lines.append(("log", "Training complete"))
        elif e["type"] == "training_error":
            lines.append(("error", f"Training error: {js_text(e['error'])}"))
    return lines


def test_js_text_writes_numbers_as_javascript_does() -> None:
    assert [js_text(v) for v in (None, 3, 1.0, 0.5, 0.123456789, 5e-05, 1e-08, "x")] == [
        "null",
        "3",
        "1",
        "0.5",
        "0.123456789",
        "0.00005",
        "1e-08",
        "x",
    ]


@pytest.mark.usefixtures("release_idle_actors")
def test_seed_example_prints_one_whole_run_then_the_next_while_two_train(
    two_warm_workers: ApiServer,
) -> None:
    binary = find_chromium()
    if binary is None:
        pytest.skip(no_chromium_reason())
    server = two_warm_workers
    files = {
        "/seed.html": ("text/html", html("seed_client.js")),
        "/seed_client.js": ("text/javascript", seed_source_at(server.ws_url)),
    }
    log = PageLog("seed.html")
    with page_server(files) as pages, chromium(binary) as devtools:
        tab = open_page(devtools, f"{pages}/seed.html", log)
        try:
            wait_for(lambda: ("log", "WebSocket connected") in log.console, 60, "the page to connect")
            a, b = start_two_runs(server)
            two_runs_done(server, a, b)
            wait_for(lambda: log.console.count(("log", "Training complete")) >= 2, 60, "both runs' ends")
        finally:
            tab.close()
    run_a, run_b = recorded(server, a), recorded(server, b)
    assert_legal_run(run_a, folds=2, epochs=FIRST_OF_TWO["epochs"])
    assert_legal_run(run_b, folds=2, epochs=SECOND_OF_TWO["epochs"])
    # what it printed: the first run whole (its epochs in order, its end), then the second
    assert log.console == [("log", "WebSocket connected")] + seed_js_console(run_a) + seed_js_console(run_b)
    assert log.exceptions == [] and log.log_errors == []
    # what it received: the first run's messages, then the second's, each once
    frames = [json.loads(frame) for frame in log.frames]
    assert [f for f in frames if f["type"] != "pong"] == run_a + run_b
