"""The seed's JavaScript client example, unchanged, against the real server in headless Chromium.

The full check (``make browser-check``) needs Chromium and port 8000, and takes about a minute: it
is marked slow. The verdict it applies and the verbatim copy of the example are checked here on
every run.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.messages import EPOCH_METRIC_FIELDS, EpochMetrics

from tests.browser.check_seed_client import (
    ROOT,
    SEED_URL,
    PageLog,
    all_types_source,
    find_chromium,
    judge,
    port_free,
    seed_source,
)

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
    fold_id=0, epoch=0, elapsed_seconds=1.0, val_auc=0.51, DirAcc=0.5,
    **{name: None for name in EPOCH_METRIC_FIELDS if name not in ("fold_id", "epoch", "elapsed_seconds", "val_auc", "DirAcc")},
).model_dump(exclude_none=False)  # fmt: skip


def test_verdict_accepts_a_clean_page_and_names_each_problem() -> None:
    clean = PageLog("ok", frames=[_frame(EPOCH), '{"type":"pong"}'], console=[("log", "Epoch 0: AUC=0.51, DirAcc=0.5")])
    assert judge(clean, {"epoch_metrics", "pong"}, {"chart_update"})["problems"] == []

    bad = PageLog(
        "bad",
        frames=[_frame({**EPOCH, "val_auc": "high"}), _frame({"type": "surprise"}), "not json", _frame({"type": "chart_update", "candles": []})],
        console=[("log", "Epoch 0: AUC=undefined, DirAcc=0.5"), ("error", "WebSocket error: [object Event]")],
        exceptions=["TypeError: x is undefined"],
    )
    problems = "\n".join(judge(bad, {"epoch_metrics", "training_complete"}, {"chart_update"})["problems"])
    for expected in (
        "invalid epoch_metrics", "unknown type 'surprise'", "not JSON", "uncaught exception: TypeError",
        "console error not caused by a training_error: WebSocket error", "log line with undefined",
        "never received training_complete", "received chart_update, which it did not ask for",
    ):  # fmt: skip
        assert expected in problems, problems


def test_example_error_line_is_allowed_only_for_a_training_error_sent() -> None:
    error = {"type": "training_error", "error": "run r1 was cancelled"}
    line = ("error", "Training error: run r1 was cancelled")
    assert judge(PageLog("p", frames=[_frame(error)], console=[line]), set(), set())["problems"] == []
    assert judge(PageLog("p", frames=[], console=[line]), set(), set())["problems"] != []


@pytest.mark.slow
def test_seed_example_in_chromium_shows_no_error(tmp_path: Path) -> None:
    if find_chromium() is None:
        pytest.skip("no Chromium (apt-get install chromium, or set $CHROMIUM)")
    if not port_free(8000):
        pytest.skip("port 8000 is busy; the seed example connects to ws://localhost:8000/ws")
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.browser.check_seed_client", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["ok"] and report["seed.html (unchanged)"]["exceptions"] == 0
