"""``api.serving``'s ``RedactTokens`` over a real server: a ``?token=`` request's access line is
written, masked, by uvicorn's own ``AccessFormatter`` (before, the filter folded the record's
arguments into its message, the formatter could not unpack them, and each such request logged a
``--- Logging error ---`` traceback instead of its line)."""

from __future__ import annotations

import io
import logging

import httpx

from api.app import ApiSettings, create_app
from api.serving import BackgroundServer, RedactTokens
from orchestrator.events.hub import EventHub
from orchestrator.events.publish import InProcessSink
from orchestrator.events.stream import LocalHubClient
from orchestrator.jobs.manager import RunManager

TOKEN = "log-s3cret-token"


def test_a_query_token_is_masked_in_the_access_line() -> None:
    """uvicorn's AccessFormatter unpacks each record's five arguments: the masked record keeps
    them (before, the filter folded them into the message and every such line was a
    ``--- Logging error ---`` traceback instead)."""
    from uvicorn.logging import AccessFormatter

    hub = EventHub()
    manager = RunManager(InProcessSink(hub))
    app = create_app(LocalHubClient(hub), manager, ApiSettings(token=TOKEN))
    server = BackgroundServer(app, access_log=True, log_level="info")  # configures uvicorn's loggers
    lines, failures = io.StringIO(), []

    class Recording(logging.StreamHandler[io.StringIO]):
        def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
            failures.append(record)

    handler = Recording(lines)
    handler.setFormatter(
        AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False)
    )
    access = logging.getLogger("uvicorn.access")
    access.addHandler(handler)
    try:
        with server:
            for query in (f"token={TOKEN}", f"since=1&token={TOKEN}", f"%74oken={TOKEN}"):
                httpx.get(f"{server.url}/runs?{query}", timeout=10)
            httpx.get(f"{server.url}/runs", params={"token": "wrong"}, timeout=10)
    finally:
        access.removeHandler(handler)
        manager.shutdown()
    logged = lines.getvalue()
    assert not failures, [f.msg for f in failures]
    assert TOKEN not in logged and "wrong" not in logged, logged
    assert logged.count("token=***") == 3 and "since=1&token=***" in logged and "%74oken=***" in logged
    assert '"GET /runs?token=*** HTTP/1.1" 200' in logged and " 401" in logged, logged


def test_redact_tokens_keeps_a_records_arguments() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        "",
        0,
        '%s - "%s %s HTTP/%s" %d',
        ("1.2.3.4:5", "GET", "/ws?token=T&x=1", "1.1", 101),
        None,
    )
    assert RedactTokens().filter(record)
    assert record.args == ("1.2.3.4:5", "GET", "/ws?token=***&x=1", "1.1", 101)
    assert record.getMessage() == '1.2.3.4:5 - "GET /ws?token=***&x=1 HTTP/1.1" 101'
