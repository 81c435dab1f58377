"""A small DevTools-protocol client for the dashboard tests: one Chromium tab, calls that answer.

``Tab`` sends a command and waits for its answer (``call``), evaluates JavaScript
(``evaluate``, ``wait_for``), presses keys, takes screenshots, and keeps what a test judges:
console errors, uncaught exceptions, browser log errors and every request the page made.
Chromium itself is started by ``tests.browser.check_seed_client.chromium``.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import connect

__all__ = ["Tab", "DevToolsError"]


class DevToolsError(RuntimeError):
    """A DevTools command failed, or a page expression threw."""


class Tab:
    """A new tab of the Chromium whose DevTools HTTP endpoint is ``devtools``."""

    def __init__(self, devtools: str) -> None:
        target = httpx.put(f"{devtools}/json/new?about:blank", timeout=30).json()
        self._close_url = f"{devtools}/json/close/{target['id']}"
        self._ws = connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=30).__enter__()
        self._ids = itertools.count(1)
        self._answers: dict[int, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self.console_errors: list[str] = []
        self.exceptions: list[str] = []
        self.log_errors: list[str] = []
        self.requests: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        for domain in ("Runtime", "Network", "Log", "Page"):
            self.call(f"{domain}.enable")

    # -- protocol ----------------------------------------------------------------------------

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30) -> dict[str, Any]:
        ident = next(self._ids)
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        with self._cond:
            while ident not in self._answers:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no answer to {method} within {timeout} s")
                self._cond.wait(left)
            answer = self._answers.pop(ident)
        if "error" in answer:
            raise DevToolsError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    def _read(self) -> None:
        try:
            while True:
                message = json.loads(self._ws.recv())
                if "id" in message:
                    with self._cond:
                        self._answers[message["id"]] = message
                        self._cond.notify_all()
                else:
                    self._on_event(message.get("method", ""), message.get("params", {}))
        except Exception:  # the browser went away: what arrived is kept
            return

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.console_errors.append(
                " ".join(str(a.get("value", a.get("description"))) for a in params.get("args", []))
            )
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.exceptions.append(details.get("exception", {}).get("description") or details.get("text", ""))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.log_errors.append(f"{entry.get('text', '')} {entry.get('url', '')}".strip())
        elif method == "Network.requestWillBeSent":
            self.requests.append(params.get("request", {}).get("url", ""))

    def close(self) -> None:
        self._ws.close()
        self._reader.join(timeout=5)
        httpx.get(self._close_url, timeout=10)  # the tab itself

    # -- page --------------------------------------------------------------------------------

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})

    def evaluate(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}
        )
        if "exceptionDetails" in result:
            raise DevToolsError(f"{expression!r} threw: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60, what: str | None = None) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
            except DevToolsError:
                value = None  # the page is between documents
            if value:
                return value
            if time.monotonic() > deadline:
                shown = self.evaluate("document.body ? document.body.innerText.slice(0, 600) : ''")
                raise TimeoutError(
                    f"timed out after {timeout} s waiting for {what or expression}; "
                    f"errors: {self.errors()}; the page shows: {shown!r}"
                )
            time.sleep(0.1)

    def errors(self) -> list[str]:
        return (
            [f"console: {e}" for e in self.console_errors]
            + [f"exception: {e}" for e in self.exceptions]
            + [f"log: {e}" for e in self.log_errors]
        )

    def press_tab(self) -> None:
        key = {"key": "Tab", "code": "Tab", "windowsVirtualKeyCode": 9, "nativeVirtualKeyCode": 9}
        self.call("Input.dispatchKeyEvent", {"type": "keyDown", **key})
        self.call("Input.dispatchKeyEvent", {"type": "keyUp", **key})

    def resize(self, width: int, height: int) -> None:
        self.call("Emulation.setScrollbarsHidden", {"hidden": True})  # the page gets the whole width
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.call("Page.getLayoutMetrics")["cssContentSize"]
            params["captureBeyondViewport"] = True
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = self.call("Page.captureScreenshot", params, timeout=60)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
