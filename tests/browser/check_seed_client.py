"""Run the seed's JavaScript client example, unchanged, in headless Chromium against the real server.

The seed (websocket-message-schema.md, "Client Implementation Example (JavaScript)") is copied
verbatim into ``seed_client.js``; ``tests/test_browser_seed_client.py`` checks the copy against the
seed when the seed is there. This script:

1. starts ``python -m orchestrator serve --port 8000 --watch-data`` on a copy of the bundled S&P 500
   data (the example hard-codes ``ws://localhost:8000/ws``, so port 8000 must be free);
2. serves two pages from a loopback HTTP server: ``seed.html`` loads the example as written, and
   ``seed_all.html`` loads the same code with one change, the URL asking for every message type
   (``?types=...``), so the heavy types reach the example too;
3. drives Chromium over the DevTools protocol and records every WebSocket frame the pages
   receive, every console call and every uncaught exception;
4. makes the server send every kind of message: a 2-fold run, appended candles (and one malformed
   row), a 2-trial HPO study, and a cancelled run (``training_error``); the example's 30 s ping is
   answered with ``pong`` along the way;
5. prints a JSON report and exits 1 when the example showed an error for any message: an uncaught
   exception, a console error other than the example's own ``Training error: ...`` line for a
   ``training_error`` the server sent, a log line with ``undefined`` in it (a field the example
   reads was missing), or a frame that is not a valid message.

Usage: ``make browser-check`` (or ``python -m tests.browser.check_seed_client``); Chromium from
``$CHROMIUM`` or PATH (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import http.server
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import connect

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SEED_URL = "ws://localhost:8000/ws"
SERVER_PORT = 8000
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def no_chromium_reason() -> str:
    """Why there is no Chromium: what ``make setup`` wrote when it could not install one (not root,
    no apt-get, apt-get failed), else how to get one."""
    note = Path(sys.prefix) / "chromium-missing.txt"  # in the venv, beside the Makefile's stamp
    if note.is_file():
        return note.read_text().strip()
    return "no Chromium: make setup installs Debian's chromium (as root), or set $CHROMIUM"


def seed_source() -> str:
    return (HERE / "seed_client.js").read_text()


def seed_source_at(url: str) -> str:
    """The example with one change: it opens ``url`` instead of ``SEED_URL``."""
    code = seed_source()
    if code.count(f"'{SEED_URL}'") != 1:
        raise RuntimeError(f"the example no longer opens '{SEED_URL}' exactly once")
    return code.replace(f"'{SEED_URL}'", f"'{url}'")


def all_types_source(types: list[str]) -> str:
    return seed_source_at(f"{SEED_URL}?types={','.join(types)}")


# -- the pages ------------------------------------------------------------------------------------


@contextmanager
def page_server(files: dict[str, tuple[str, str]]) -> Iterator[str]:
    """Serve ``files`` (path -> (content type, text)) on a loopback port; yields the base URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            item = files.get(self.path)
            if item is None:
                self.send_error(404)
                return
            body = item[1].encode()
            self.send_response(200)
            self.send_header("Content-Type", item[0])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def html(script: str) -> str:
    return f'<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>seed client</title></head><body><script src="{script}"></script></body></html>'


# -- the browser ----------------------------------------------------------------------------------


@dataclass
class PageLog:
    """What one page saw: WebSocket frames, console calls, uncaught exceptions, browser log errors."""

    name: str
    frames: list[str] = field(default_factory=list)
    console: list[tuple[str, str]] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)
    closed: bool = False


class DevToolsPage:
    """One Chromium tab driven over the DevTools protocol; events collected on a thread."""

    def __init__(self, ws_url: str, log: PageLog) -> None:
        self.log = log
        # entered as a context manager: websockets deprecates iterating a bare connection
        self._ws = connect(ws_url, max_size=None, open_timeout=30).__enter__()
        self._ids = itertools.count(1)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def send(self, method: str, params: dict[str, Any] | None = None) -> None:
        self._ws.send(json.dumps({"id": next(self._ids), "method": method, "params": params or {}}))

    def close(self) -> None:
        self._ws.close()
        self._thread.join(timeout=5)

    def _read(self) -> None:
        try:
            for raw in self._ws:
                self._on(json.loads(raw))
        except Exception:  # the browser went away: the log keeps what arrived
            return

    def _on(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Network.webSocketFrameReceived":
            self.log.frames.append(params["response"]["payloadData"])
        elif method == "Network.webSocketClosed":
            self.log.closed = True
        elif method == "Runtime.consoleAPICalled":
            text = " ".join(_remote_text(arg) for arg in params.get("args", []))
            self.log.console.append((params.get("type", "log"), text))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exc = details.get("exception", {})
            self.log.exceptions.append(exc.get("description") or details.get("text", "exception"))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            self.log.log_errors.append(params["entry"].get("text", ""))


def _remote_text(arg: dict[str, Any]) -> str:
    if "value" in arg:
        return str(arg["value"])
    return str(arg.get("description") or arg.get("unserializableValue") or arg.get("type"))


@contextmanager
def chromium(binary: str) -> Iterator[str]:
    """A headless Chromium with remote debugging; yields its DevTools HTTP base URL."""
    profile = tempfile.mkdtemp(prefix="seed-chromium-")
    args = [
        binary,
        "--headless",
        "--no-sandbox",  # root in containers
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        # Nothing but the pages under test goes to the network (a machine may reach no more than
        # loopback): no QUIC, no update, sync or other background requests.
        "--disable-quic",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "about:blank",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{binary} did not open its DevTools port")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port_file.read_text().split()[0]}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


def open_page(devtools: str, url: str, log: PageLog) -> DevToolsPage:
    target = httpx.put(f"{devtools}/json/new?about:blank", timeout=30).json()
    page = DevToolsPage(target["webSocketDebuggerUrl"], log)
    for domain in ("Runtime", "Network", "Log", "Page"):
        page.send(f"{domain}.enable")
    page.send("Page.navigate", {"url": url})
    return page


# -- the server and the work it streams -----------------------------------------------------------


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def write_data(path: Path) -> None:
    from workers.data import load_ohlcv

    load_ohlcv("sp500").to_csv(path, index=False, date_format="%Y-%m-%d")


@contextmanager
def server(data: Path, reports: Path, log_path: Path) -> Iterator[str]:
    base = f"http://127.0.0.1:{SERVER_PORT}"
    cmd = [
        sys.executable,
        "-m",
        "orchestrator",
        "serve",
        "--port",
        str(SERVER_PORT),
        "--data",
        str(data),
        "--watch-data",
        "--reports-dir",
        str(reports),
        "--folds",
        "2",
        "--epochs",
        "3",
        "--log-level",
        "warning",
    ]
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    with log_path.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: _healthy(base) or proc.poll() is not None, 120, "the server to listen")
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited ({proc.returncode}); see {log_path}")
            yield base
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.25)


def run_state(base: str, run_id: str) -> dict[str, Any]:
    return dict(httpx.get(f"{base}/runs/{run_id}", timeout=10).json())


def finished_run(base: str, body: dict[str, Any]) -> str:
    started = httpx.post(f"{base}/train", json=body, timeout=30)
    started.raise_for_status()
    run_id = str(started.json()["run_id"])
    terminal = ("completed", "failed", "cancelled")
    wait_for(lambda: run_state(base, run_id)["state"] in terminal, 300, f"run {run_id}")
    return run_id


def append_candles(path: Path, n: int) -> None:
    import pandas as pd

    last = pd.read_csv(path).iloc[-1]
    day = pd.Timestamp(last["timestamp"])
    lines = []
    for i in range(1, n + 1):
        day += pd.offsets.BDay(1)
        close = float(last["close"]) * (1 + 0.001 * i)
        lines.append(f"{day:%Y-%m-%d},{close:.4f},{close * 1.01:.4f},{close * 0.99:.4f},{close:.4f},1000000")
    lines.insert(1, "not-a-date,1,2,3")  # malformed: a warning notification, the rest still lands
    with path.open("a") as handle:
        handle.write("\n".join(lines) + "\n")


def drive(base: str, data: Path, pages: list[PageLog]) -> dict[str, Any]:
    """Make the server send every kind of message; return what was started."""
    wait_for(lambda: all(p.console for p in pages), 60, "the pages to connect")
    done: dict[str, Any] = {"run": finished_run(base, {"folds": 2, "epochs": 3})}
    append_candles(data, 3)
    study = httpx.post(
        f"{base}/hpo",
        json={"study": "browser-check", "trials": 2, "parallel": 1, "folds": 2, "epochs": 2},
        timeout=30,
    )
    study.raise_for_status()
    wait_for(
        lambda: (
            httpx.get(f"{base}/hpo/browser-check", timeout=10).json()["state"]
            in ("completed", "failed", "cancelled")
        ),
        300,
        "the HPO study",
    )
    done["study"] = httpx.get(f"{base}/hpo/browser-check", timeout=10).json()["state"]
    started = httpx.post(f"{base}/train", json={"folds": 2, "epochs": 200}, timeout=30)
    started.raise_for_status()
    run_id = started.json()["run_id"]
    wait_for(lambda: run_state(base, run_id).get("state") == "running", 120, f"run {run_id} to start")
    time.sleep(2)
    httpx.post(f"{base}/runs/{run_id}/cancel", timeout=30).raise_for_status()
    wait_for(lambda: run_state(base, run_id)["state"] == "cancelled", 120, f"run {run_id} to cancel")
    done["cancelled_run"] = run_id
    # the example pings every 30 s: stay until each page has had its pong
    wait_for(lambda: all('"pong"' in "".join(p.frames) for p in pages), 45, "a pong on every page")
    time.sleep(1)
    return done


# -- the verdict ----------------------------------------------------------------------------------


def judge(log: PageLog, expected: set[str], forbidden: set[str]) -> dict[str, Any]:
    from orchestrator.messages import MESSAGE_TYPES
    from tests.wire import wire_error

    problems: list[str] = []
    types: Counter[str] = Counter()
    errors_sent: list[str] = []
    for raw in log.frames:
        try:
            message = json.loads(raw)
        except json.JSONDecodeError:
            problems.append(f"a frame that is not JSON: {raw[:120]!r}")
            continue
        kind = message.get("type") if isinstance(message, dict) else None
        types[str(kind)] += 1
        if kind == "pong":
            continue
        if kind not in MESSAGE_TYPES:
            problems.append(f"a frame of unknown type {kind!r}")
            continue
        invalid = wire_error(message)
        if invalid is not None:
            problems.append(f"invalid {kind}: {invalid}")
        if kind == "training_error":
            errors_sent.append(f"Training error: {message['error']}")
    problems += [f"uncaught exception: {text}" for text in log.exceptions]
    problems += [f"browser error: {text}" for text in log.log_errors]
    console_errors = [text for level, text in log.console if level == "error"]
    unexplained = list(console_errors)
    for line in errors_sent:
        if line in unexplained:
            unexplained.remove(line)
    problems += [f"console error not caused by a training_error: {text}" for text in unexplained]
    problems += [f"log line with undefined: {text}" for _, text in log.console if "undefined" in text]
    missing = sorted(expected - set(types))
    problems += [f"never received {kind}" for kind in missing]
    problems += [f"received {kind}, which it did not ask for" for kind in sorted(forbidden & set(types))]
    return {
        "frames": len(log.frames),
        "types": dict(sorted(types.items())),
        "console": Counter(level for level, _ in log.console),
        "console_sample": [f"{level}: {text}" for level, text in log.console[:4]]
        + [f"{level}: {text}" for level, text in log.console if level == "error"][:3],
        "exceptions": len(log.exceptions),
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the JSON report here")
    args = parser.parse_args(argv)
    binary = find_chromium()
    if binary is None:
        print(no_chromium_reason(), file=sys.stderr)
        return 2
    if not port_free(SERVER_PORT):
        print(f"port {SERVER_PORT} is busy; the seed example connects to {SEED_URL}", file=sys.stderr)
        return 2
    from orchestrator.messages import HEAVY_TYPES, MESSAGE_TYPES

    every = sorted(MESSAGE_TYPES)
    files = {
        "/seed.html": ("text/html", html("seed_client.js")),
        "/seed_client.js": ("text/javascript", seed_source()),
        "/seed_all.html": ("text/html", html("seed_all.js")),
        "/seed_all.js": ("text/javascript", all_types_source(every)),
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="seed-check-") as tmp:
        work = Path(tmp)
        data = work / "bars.csv"
        write_data(data)
        logs = [PageLog("seed.html"), PageLog("seed_all.html")]
        with server(data, work / "reports", work / "server.log") as base, page_server(files) as pages_url:
            with chromium(binary) as devtools:
                tabs = [open_page(devtools, f"{pages_url}/{log.name}", log) for log in logs]
                try:
                    done = drive(base, data, logs)
                finally:
                    for tab in tabs:
                        tab.close()
        gap_only = {"history_gap"}  # sent only when a client's resume point fell out of the buffer
        core_expected = set(MESSAGE_TYPES) - HEAVY_TYPES - gap_only | {"pong"}
        report: dict[str, Any] = {
            "browser": subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip(),
            "seconds": round(time.monotonic() - started, 1),
            "driven": done,
            "seed.html (unchanged)": judge(logs[0], core_expected, set(HEAVY_TYPES)),
            "seed_all.html (?types=all)": judge(logs[1], set(MESSAGE_TYPES) - gap_only | {"pong"}, set()),
        }
    report["ok"] = not any(report[k]["problems"] for k in report if k.startswith("seed"))
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
