"""``python -m orchestrator watch [URL]``: follow a run on a server's ``/ws`` in the terminal.

Per-fold progress bars with the key metrics (``orchestrator.console.progress.ProgressView``). After a
disconnect it reconnects with ``?since=<seq of the last event received>``, so no event is missed
or shown twice. Without ``--run-id`` it connects without ``run_id``, so the server picks the run
by the /ws rule (docs/api.md): the oldest running run, or the next one to start; with
``--keep-going``, after each the next oldest (whose history comes again: seqs go back at a
switch). It exits when the run it follows ends: 0 on ``training_complete``, 1 on
``training_error``, 2 when the server refuses it (bad token, Origin, query) or stays
unreachable for ``--reconnect-timeout`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections.abc import Sequence
from typing import IO, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ValidationError

from orchestrator.console.flags import TOKEN_ENV, token_or_env
from orchestrator.messages import RUN_TYPES, TERMINAL_TYPES, HistoryGap, TrainingComplete, parse_message

__all__ = ["main", "build_parser", "RunFollower", "watch", "ws_url_with"]

DEFAULT_URL = "ws://127.0.0.1:8000/ws"
# Close codes after which reconnecting cannot help (the request itself is wrong).
FATAL_CLOSE_CODES = frozenset({4400})
# The server's event hub restarted: resume from the since= its reason names.
HUB_RESTARTED = 4012
EXIT_COMPLETE, EXIT_ERROR, EXIT_REFUSED = 0, 1, 2


class RunFollower:
    """Which run to follow, the resume point, and when to stop. Pure: no I/O.

    The server sends one run at a time (its lifecycle events, ``messages.RUN_TYPES``); the first
    of them names the run followed. Notifications, candles and study trials are shown as they
    come. Seqs increase within each run's stream, not across a switch to the next run."""

    def __init__(self, run_id: str | None = None, keep_going: bool = False) -> None:
        self.run_id = run_id
        self.keep_going = keep_going
        self.last_seq: int | None = None  # of the last event received: where to resume
        self.finished: list[tuple[str, str]] = []  # (run_id, terminal type)
        self._last_of_run: dict[str | None, int] = {}

    def accept(self, message: BaseModel) -> bool:
        """Record the message; True when it belongs to the followed run (or is a notice for all)."""
        seq, run_id = getattr(message, "seq", None), getattr(message, "run_id", None)
        if isinstance(seq, int):
            if seq <= self._last_of_run.get(run_id, 0):
                return False  # a duplicate cannot come from the server; never show one twice
            self._last_of_run[run_id] = seq
            self.last_seq = seq
        if getattr(message, "type", None) not in RUN_TYPES or run_id is None:
            return True
        if self.run_id is None:
            self.run_id = run_id
        return bool(run_id == self.run_id)

    def rewind(self, since: int) -> None:
        """The server's event hub restarted: everything after ``since`` comes again, possibly
        under other seqs (close code 4012), so seqs above it are no longer duplicates."""
        self.last_seq = since if self.last_seq is None else min(self.last_seq, since)
        self._last_of_run = {run: min(seq, since) for run, seq in self._last_of_run.items()}

    def exit_code(self, message: BaseModel) -> int | None:
        """The exit code when ``message`` ends the followed run, else None."""
        kind = getattr(message, "type", None)
        if kind not in TERMINAL_TYPES or getattr(message, "run_id", None) != self.run_id:
            return None
        self.finished.append((str(self.run_id), str(kind)))
        code = EXIT_COMPLETE if kind == "training_complete" else EXIT_ERROR
        if self.keep_going:
            self.run_id = None  # follow whichever run starts next
            return None
        return code


def ws_url_with(url: str, **params: Any) -> str:
    """``url`` with the query parameters set (None values left out)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update({k: str(v) for k, v in params.items() if v is not None})
    return urlunsplit(parts._replace(query=urlencode(query)))


def _outcome(message: BaseModel) -> str:
    if isinstance(message, TrainingComplete):
        return f"training complete: {message.folds_completed} folds, summary {message.summary_path}"
    return f"training error: {getattr(message, 'error', None)}"


def _say(text: str, stream: IO[str]) -> None:
    from tqdm import tqdm

    tqdm.write(text, file=stream)


async def watch(
    url: str,
    *,
    token: str | None = None,
    run_id: str | None = None,
    types: str | None = None,
    keep_going: bool = False,
    events_out: str | None = None,
    quiet: bool = False,
    reconnect_timeout: float = 60.0,
    stream: IO[str] | None = None,
) -> int:
    """Follow a run until it ends; returns the exit code."""
    import websockets
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    from orchestrator.console.progress import EventFileWriter, ProgressView

    out = stream or sys.stderr
    follower = RunFollower(run_id, keep_going)
    view = ProgressView(stream=out, enabled=not quiet)
    writer = EventFileWriter(events_out) if events_out else None
    headers = {"Authorization": f"Bearer {token}"} if token else None
    backoff = 0.5
    last_reachable = time.monotonic()
    try:
        while True:
            target = ws_url_with(url, since=follower.last_seq, run_id=run_id, types=types)
            reason = "connection ended"
            try:
                async with websockets.connect(
                    target, additional_headers=headers, proxy=None, max_size=2**22, open_timeout=10
                ) as ws:
                    backoff = 0.5
                    last_reachable = time.monotonic()
                    if follower.last_seq is not None:
                        _say(f"reconnected; resuming after seq {follower.last_seq}", out)
                    elif follower.run_id is None:
                        _say(f"connected to {url}", out)
                    async for frame in ws:
                        text = frame if isinstance(frame, str) else frame.decode()
                        try:
                            message = parse_message(text)
                        except ValidationError as err:  # a newer server's type: shown, not fatal
                            _say(
                                f"warning: a message this client does not know: {err.error_count()} error(s)",
                                out,
                            )
                            continue
                        if isinstance(message, HistoryGap):
                            _say(f"warning: {message.message}", out)
                            continue
                        if not follower.accept(message):
                            continue
                        if writer is not None:
                            writer.write_texts([text])  # the frame as received, byte for byte
                        if message.type == "training_start" and follower.finished:
                            view.close()
                            view = ProgressView(stream=out, enabled=not quiet)
                        view.handle(message)
                        code = follower.exit_code(message)
                        if code is not None:
                            if quiet:  # the view said it otherwise
                                print(_outcome(message), file=out)
                            return code
            except InvalidStatus as err:
                status = err.response.status_code
                body = err.response.body.decode(errors="replace") if err.response.body else ""
                if status in (401, 403):
                    print(f"error: the server refused the connection ({status}): {body}", file=sys.stderr)
                    return EXIT_REFUSED
                reason = f"HTTP {status} {body}"
            except ConnectionClosed as err:
                code = err.rcvd.code if err.rcvd is not None else 1006
                text = err.rcvd.reason if err.rcvd is not None else "no close frame"
                if code in FATAL_CLOSE_CODES:
                    print(f"error: the server closed the connection ({code}): {text}", file=sys.stderr)
                    return EXIT_REFUSED
                resume = re.search(r"since=(\d+)", text) if code == HUB_RESTARTED else None
                if resume is not None:
                    follower.rewind(int(resume.group(1)))
                reason = f"closed ({code}{': ' + text if text else ''})"
                last_reachable = time.monotonic()
            except (TimeoutError, OSError) as err:
                reason = f"{type(err).__name__}: {err}"
            if time.monotonic() - last_reachable > reconnect_timeout:
                print(
                    f"error: {url} unreachable for {reconnect_timeout:.0f} s ({reason}); giving up",
                    file=sys.stderr,
                )
                return EXIT_REFUSED
            _say(f"disconnected: {reason}; reconnecting in {backoff:.1f} s", out)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
    finally:
        view.close()
        if writer is not None:
            writer.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator watch",
        description="Follow a run on a server's /ws: per-fold progress bars with key metrics. "
        "Exits 0 when the run completes, 1 when it fails, 2 when refused or unreachable.",
    )
    parser.add_argument("url", nargs="?", default=DEFAULT_URL, help=f"default {DEFAULT_URL}")
    parser.add_argument("--token", help=f"bearer token (default: ${TOKEN_ENV})")
    parser.add_argument(
        "--run-id", help="follow this run (default: the oldest running run, or the next to start)"
    )
    parser.add_argument("--types", help="message types to receive, comma-separated (default: the server's)")
    parser.add_argument("--keep-going", action="store_true", help="do not exit when a run ends")
    parser.add_argument("--events-out", help="also write every event received to this JSON-lines file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--reconnect-timeout",
        type=float,
        default=60.0,
        help="give up after this many seconds without a connection (default 60)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if not args.url.startswith(("ws://", "wss://")):
        print(f"error: the URL must start with ws:// or wss://, got {args.url!r}", file=sys.stderr)
        return EXIT_REFUSED
    token = token_or_env(args.token)
    try:
        return asyncio.run(
            watch(
                args.url,
                token=token,
                run_id=args.run_id,
                types=args.types,
                keep_going=args.keep_going,
                events_out=args.events_out,
                quiet=args.quiet,
                reconnect_timeout=args.reconnect_timeout,
            )
        )
    except KeyboardInterrupt:
        return 130
