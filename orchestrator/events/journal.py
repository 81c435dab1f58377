"""One run's ``events.jsonl``: its released events as JSON lines, exactly as they go out on ``/ws``.

An I/O error never stops publishing: it is logged once (the run's file is then left alone) and
reported to ``on_failure`` so the hub can count it. The file opens on the first write and is
closed at the run's end; a late event after the end reopens it just for itself.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any, TextIO

from orchestrator.messages import sanitize

__all__ = ["EVENTS_FILE", "RunJournal", "json_line"]

logger = logging.getLogger(__name__)

EVENTS_FILE = "events.jsonl"

Event = dict[str, Any]


def _plain(value: Any) -> Any:
    """NumPy scalars and arrays (anything with ``tolist``) as plain Python, recursively."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def json_line(event: Event) -> tuple[Event, str]:
    """The event as it goes out (on ``/ws`` and in the file) and its JSON text.

    NaN and Infinity become null and NumPy values plain Python, but only when ``json.dumps``
    refuses the event: a pure-Python walk of every event (a prediction_delta has ~1000 rows)
    would cost each publish milliseconds. Raises TypeError/ValueError if it still is not JSON.
    """
    try:
        return event, json.dumps(event, allow_nan=False)
    except (TypeError, ValueError):
        event = sanitize(_plain(event))
        return event, json.dumps(event, allow_nan=False)


class RunJournal:
    """Appends lines to ``<run_dir>/events.jsonl``; without a ``run_dir`` every call does nothing."""

    def __init__(self, run_id: str, run_dir: str | None, on_failure: Callable[[], None]) -> None:
        self.run_id = run_id
        self.run_dir = run_dir
        self._on_failure = on_failure
        self._writer: TextIO | None = None
        self._failed = False

    @property
    def path(self) -> str | None:
        return None if self.run_dir is None else os.path.join(self.run_dir, EVENTS_FILE)

    def open(self) -> bool:
        """Open the file for appending unless it is open; False if there is none or it failed."""
        if self._writer is not None:
            return True
        if self.run_dir is None or self._failed:
            return False
        try:
            os.makedirs(self.run_dir, exist_ok=True)
            self._writer = open(os.path.join(self.run_dir, EVENTS_FILE), "a", encoding="utf-8")
        except OSError as err:
            self._fail(err)
            return False
        return True

    def write(self, lines: list[str]) -> None:
        """Append ``lines`` (JSON texts without newlines); buffered until ``flush`` or ``close``."""
        if not lines or not self.open():
            return
        assert self._writer is not None
        try:
            self._writer.write("\n".join(lines) + "\n")
        except OSError as err:
            self._fail(err)

    def flush(self) -> None:
        if self._writer is None:
            return
        try:
            self._writer.flush()
        except OSError as err:
            self._fail(err)

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        try:
            writer.close()
        except OSError as err:
            self._fail(err)

    def _fail(self, err: OSError) -> None:
        # one line per run (a full disk is not a bug: no traceback), then the file is left alone
        # but for its torn last line: publishing must go on
        self._on_failure()
        self._failed = True
        logger.error(
            "run %r: cannot write %s (%s); no more events go to it",
            self.run_id,
            self.path,
            err.strerror or err,
        )
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except OSError:
                pass
        if self.path is not None:
            _trim_torn_line(self.path)


def _trim_torn_line(path: str) -> None:
    """Cut a last line that a failed write left half-written: every line left is a whole event."""
    try:
        with open(path, "r+b") as handle:
            size = handle.seek(0, os.SEEK_END)
            start = max(0, size - (1 << 20))  # events are far shorter than 1 MiB
            handle.seek(start)
            tail = handle.read()
            cut = tail.rfind(b"\n")
            if tail and not tail.endswith(b"\n") and (cut >= 0 or start == 0):
                handle.truncate(start + cut + 1)
    except OSError:
        pass
