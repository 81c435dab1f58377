"""Qt's own QWebSocket (PySide6, offscreen) receives the same run as a ``websockets`` client, and
the seed's Qt example, ported to PySide6, shows one whole run, then the next, while two train."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.register_assert_rewrite("tests.api_fixtures")
from tests.api_fixtures import (  # noqa: E402
    SECOND_OF_TWO,
    ApiServer,
    assert_legal_run,
    assert_schema_valid,
    clients_connected,
    collect,
    connections_of,
    recorded,
    start_two_runs,
    two_runs_done,
)

pytest_plugins = ["tests.api_fixtures"]
pytestmark = pytest.mark.usefixtures("release_idle_actors")

pytest.importorskip("PySide6.QtWebSockets")

QT_CLIENT = r"""
import json, sys
from PySide6.QtCore import QCoreApplication, QTimer, QUrl
from PySide6.QtWebSockets import QWebSocket

url, out_path, timeout_ms = sys.argv[1], sys.argv[2], int(sys.argv[3])
app = QCoreApplication(sys.argv)
ws = QWebSocket()
messages, result = [], {"close_code": None, "errors": []}

def on_connected():
    ws.sendTextMessage("ping")
    print("connected", flush=True)

def on_text(text):
    message = json.loads(text)
    messages.append(message)
    if message.get("type") in ("training_complete", "training_error"):
        ws.close()

def on_disconnected():
    result["close_code"] = int(ws.closeCode().value)
    result["messages"] = messages
    with open(out_path, "w") as handle:
        json.dump(result, handle)
    app.quit()

def on_error(error):
    result["errors"].append(ws.errorString())

ws.connected.connect(on_connected)
ws.textMessageReceived.connect(on_text)
ws.disconnected.connect(on_disconnected)
ws.errorOccurred.connect(on_error)
QTimer.singleShot(timeout_ms, lambda: (result["errors"].append("timeout"), ws.close()))
ws.open(QUrl(url))
sys.exit(app.exec())
"""


def test_qwebsocket_receives_the_same_run_as_a_websockets_client(
    api_server: ApiServer, tmp_path: Path
) -> None:
    script = tmp_path / "qt_client.py"
    script.write_text(QT_CLIENT)
    out = tmp_path / "qt_messages.json"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    qt = subprocess.Popen(
        [sys.executable, str(script), api_server.ws_url, str(out), "90000"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert qt.stdout is not None
        assert qt.stdout.readline().strip() == "connected"

        async def main() -> tuple[str, list[dict[str, Any]]]:
            before = connections_of(api_server.app)  # Qt's among them
            client = asyncio.create_task(collect(api_server.ws_url))
            await clients_connected(api_server.app, 1, before=before)
            async with httpx.AsyncClient(base_url=api_server.url) as http:
                response = await http.post("/train", json={})
            return response.json()["run_id"], await client

        run_id, reference = asyncio.run(main())
        qt.wait(timeout=120)
        assert qt.returncode == 0, qt.stderr.read() if qt.stderr else ""
    finally:
        if qt.poll() is None:
            qt.kill()
    result = json.loads(out.read_text())
    assert result["errors"] == []
    received = result["messages"]
    assert received[0] == {"type": "pong"}
    run = received[1:]
    assert run == reference  # same messages, same order, field for field
    assert run[0]["run_id"] == run_id
    assert_schema_valid(run)
    assert_legal_run(run, folds=2, epochs=3)


def test_qwebsocket_sees_an_application_close_code_not_a_protocol_error(
    api_server: ApiServer, tmp_path: Path
) -> None:
    script = tmp_path / "qt_client.py"
    script.write_text(QT_CLIENT)
    out = tmp_path / "qt_close.json"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    done = subprocess.run(
        [sys.executable, str(script), f"{api_server.ws_url}?types=bogus", str(out), "20000"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["close_code"] == 4400
    assert result["errors"] == []


# The seed's "Client Implementation Example (Qt C++)" (websocket-message-schema.md), line for line
# in PySide6 between the two markers: QJsonValue::toDouble() of null or a missing key is 0, and
# qDebug() << "AUC=" << auc prints a double with 6 significant digits (%g). Around it, only what
# a test needs: the URL from argv (the seed has ws://localhost:8000/ws), "connected" on stdout,
# and quitting after the given number of terminal events.
QT_SEED_PORT = r"""
import json, sys
from PySide6.QtCore import QByteArray, QCoreApplication, QJsonDocument, QTimer, QUrl, qDebug, qWarning
from PySide6.QtWebSockets import QWebSocket

url, runs, timeout_ms = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
app = QCoreApplication(sys.argv)

def to_double(value):
    return float(value) if isinstance(value, (int, float)) else 0.0

# ---- the seed's example ----
webSocket = QWebSocket()

def on_text_message_received(message):
    doc = QJsonDocument.fromJson(QByteArray(message.encode()))
    if doc.isNull() or not doc.isObject():
        qWarning("Invalid WebSocket message JSON")
        return

    obj = doc.object()
    messageType = obj.get("type") if isinstance(obj.get("type"), str) else ""

    if messageType == "epoch_metrics":
        auc = to_double(obj.get("val_auc"))
        dirAcc = to_double(obj.get("DirAcc"))
        qDebug(f"Epoch metrics: AUC= {auc:g} DirAcc= {dirAcc:g}")
        # Update metrics panel
    elif messageType == "training_complete":
        qDebug("Training complete")
        # Update UI state

webSocket.textMessageReceived.connect(on_text_message_received)
webSocket.open(QUrl(url))
# ---- end of the seed's example ----

ended = []

def count_ends(message):
    if json.loads(message).get("type") in ("training_complete", "training_error"):
        ended.append(message)
        if len(ended) >= runs:
            app.quit()

webSocket.connected.connect(lambda: print("connected", flush=True))
webSocket.textMessageReceived.connect(count_ends)
QTimer.singleShot(timeout_ms, lambda: (qWarning("timeout"), app.exit(1)))
sys.exit(app.exec())
"""


def seed_qt_lines(events: list[dict[str, Any]]) -> list[str]:
    """What the seed's Qt example prints for these events."""

    def double(value: Any) -> float:
        return float(value) if isinstance(value, (int, float)) else 0.0

    lines = []
    for event in events:
        if event["type"] == "epoch_metrics":
            lines.append(
                f"Epoch metrics: AUC= {double(event.get('val_auc')):g} DirAcc= {double(event.get('DirAcc')):g}"
            )
        elif event["type"] == "training_complete":
            lines.append("Training complete")
    return lines


def test_the_seed_qt_example_shows_one_whole_run_then_the_next_while_two_train(
    two_warm_workers: ApiServer, tmp_path: Path
) -> None:
    server = two_warm_workers
    script = tmp_path / "qt_seed_port.py"
    script.write_text(QT_SEED_PORT)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    qt = subprocess.Popen(
        [sys.executable, str(script), server.ws_url, "2", "90000"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert qt.stdout is not None
        assert qt.stdout.readline().strip() == "connected"
        a, b = start_two_runs(server)
        two_runs_done(server, a, b)
        _, printed = qt.communicate(timeout=120)
    finally:
        if qt.poll() is None:
            qt.kill()
    assert qt.returncode == 0, printed
    shown = [line for line in printed.splitlines() if line.startswith(("Epoch", "Training", "Invalid"))]
    epochs = 2 * SECOND_OF_TWO["epochs"]
    assert shown.count("Training complete") == 2 and len(shown) > epochs, printed
    # all of the first run (its epochs in order, then its end), then all of the second
    assert shown == seed_qt_lines(recorded(server, a)) + seed_qt_lines(recorded(server, b))
