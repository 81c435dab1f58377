"""The ``submit``, ``runs`` and ``cancel`` commands: a server's runs and job queue from the terminal.

``submit`` posts the run fields the user gave (the server's defaults fill the rest) to
``POST /train`` and prints the run id alone on stdout's first line; ``--watch`` then follows the
run on ``/ws?run_id=ID`` with ``orchestrator.console.watch`` and exits as ``watch`` does (0
completed, 1 failed, 2 refused). ``runs`` prints ``GET /runs`` and ``GET /queue`` as tables;
``cancel`` posts ``/runs/{id}/cancel``. A refusal (4xx) or an unreachable server raises
``ServerError``, which ``orchestrator.console.main.main`` prints before exiting 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from orchestrator.console.remote import Server, ServerError, add_server_flags, check_remote_data
from orchestrator.errors import ConfigError
from orchestrator.jobs.admission import check_priority
from orchestrator.jobs.policy import PRIORITY_MAX, PRIORITY_MIN

__all__ = [
    "cancel_main",
    "queue_table",
    "runs_main",
    "runs_table",
    "submit_main",
]

# ---- submit ------------------------------------------------------------------------------------


def build_submit_parser() -> argparse.ArgumentParser:
    from orchestrator.console.run_flags import add_train_flags

    parser = argparse.ArgumentParser(
        prog="orchestrator submit",
        description="Submit a run to a server (POST /train): only the run fields given here are "
        "sent, the server's own defaults fill the rest. Prints the run id on stdout (alone on the "
        "first line) and its status and queue position on stderr.",
    )
    add_train_flags(parser)
    parser.add_argument(  # checked before posting too, so a typo is named at once
        "--priority",
        type=int,
        default=None,
        metavar="N",
        help=f"queue priority, {PRIORITY_MIN}..{PRIORITY_MAX}, higher first (default: the server's, 0)",
    )
    add_server_flags(parser)
    w = parser.add_argument_group("follow")
    w.add_argument(
        "--watch",
        action="store_true",
        help="then follow the run on /ws to its end; exit 0 completed, 1 failed, 2 refused",
    )
    w.add_argument("--quiet", action="store_true", help="with --watch: no progress bars")
    w.add_argument("--events-out", help="with --watch: write every event of the run to this JSON-lines file")
    return parser


def submit_body(args: argparse.Namespace) -> dict[str, Any]:
    """The POST /train body: the fields given (--config, flags, --set) and ``priority`` if given.
    Raises ``ConfigError`` for a priority that is not an integer in [-100, 100] and for a
    ``data`` that is a path here rather than a name under the server's data roots."""
    from orchestrator.console.run_flags import given_config_values

    body = given_config_values(args)
    check_remote_data(body)
    if getattr(args, "priority", None) is not None:
        body["priority"] = args.priority
    if "priority" in body:
        check_priority(body["priority"])
    return body


def admission_line(answer: dict[str, Any]) -> str:
    """The stderr line for a POST /train answer: its status, queue position and priority."""
    status = answer.get("status", "?")
    position = answer.get("queue_position")
    where = f"{status} at queue position {position}" if position is not None else str(status)
    priority = answer.get("priority")
    return f"run {answer['run_id']}: {where}" + (f" (priority {priority})" if priority is not None else "")


def submit_main(argv: Sequence[str] | None = None) -> int:
    args = build_submit_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    server = Server.from_args(args)
    if (args.quiet or args.events_out) and not args.watch:
        raise ConfigError("--quiet and --events-out go with --watch")
    answer = server.post("/train", submit_body(args))
    run_id = str(answer["run_id"])
    print(run_id, flush=True)
    print(admission_line(answer), file=sys.stderr, flush=True)
    if not args.watch:
        return 0
    from orchestrator.console.watch import watch

    return asyncio.run(
        watch(server.ws_url, token=server.token, run_id=run_id, quiet=args.quiet, events_out=args.events_out)
    )


# ---- runs --------------------------------------------------------------------------------------


def _clock(ts: Any, now: float) -> str:
    """A timestamp (s since the epoch) as local HH:MM:SS today, else MM-DD HH:MM; '-' for none."""
    if not isinstance(ts, (int, float)):
        return "-"
    same_day = time.localtime(ts)[:3] == time.localtime(now)[:3]
    return time.strftime("%H:%M:%S" if same_day else "%m-%d %H:%M", time.localtime(ts))


def _span(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: frozenset[int]) -> str:
    """Columns padded to their widest cell, two spaces apart; columns in ``right`` right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def runs_table(runs: Sequence[dict[str, Any]], now: float | None = None) -> str:
    """One line per ``GET /runs`` snapshot: id, state, queue position (``#N``), priority, epochs
    done/total, started (``created_at`` where the snapshot has no ``started_at``), ended; times
    local, HH:MM:SS today, else MM-DD HH:MM. ``now``: seconds since the epoch (default: now)."""
    now = time.time() if now is None else now
    rows = []
    for run in runs:
        progress = run.get("progress") or {}
        position = run.get("queue_position")
        queued = run.get("state") == "queued"
        started = (
            run.get("started_at") if "started_at" in run else (None if queued else run.get("created_at"))
        )
        rows.append(
            [
                str(run.get("run_id")),
                str(run.get("state")),
                f"#{position}" if position is not None else "-",
                str(run.get("priority", "-")),
                # the total is known once the run has split its data (0 before)
                f"{progress.get('epochs_done', 0)}/{progress['epochs_total']}"
                if progress.get("epochs_total")
                else "-",
                _clock(started, now),
                _clock(run.get("ended_at"), now),
            ]
        )
    header = ["RUN", "STATE", "QUEUE", "PRIORITY", "EPOCHS", "STARTED", "ENDED"]
    return _table(header, rows, right=frozenset({2, 3, 4}))


def queue_table(queue: Sequence[dict[str, Any]]) -> str:
    """One line per ``GET /queue`` entry in queue order: position, run, priority, what it is
    (``run`` or ``trial of STUDY``), how long it has waited, and why it waits."""
    rows = []
    for entry in queue:
        kind = str(entry.get("kind", "run"))
        if entry.get("study"):
            kind = f"{kind} of {entry['study']}"
        rows.append(
            [
                str(entry.get("position")),
                str(entry.get("run_id")),
                str(entry.get("priority")),
                kind,
                _span(entry.get("waited_s")),
                str(entry.get("reason", "")),
            ]
        )
    header = ["POS", "RUN", "PRIORITY", "KIND", "WAITED", "WAITS FOR"]
    return _table(header, rows, right=frozenset({0, 2, 4}))


def build_runs_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator runs",
        description="A server's runs (GET /runs, newest first) and its queue in order (GET /queue).",
    )
    add_server_flags(parser)
    parser.add_argument("--limit", type=int, default=20, metavar="N", help="at most N runs (default 20)")
    parser.add_argument("--json", action="store_true", help="print GET /runs's JSON as it came")
    return parser


def runs_main(argv: Sequence[str] | None = None) -> int:
    args = build_runs_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    server = Server.from_args(args)
    if args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    page = server.get("/runs", limit=args.limit)
    if args.json:
        print(json.dumps(page, indent=2))
        return 0
    runs = page.get("runs", [])
    print(runs_table(runs) if runs else "no runs")
    try:
        queue = server.get("/queue").get("queue", [])
    except ServerError as err:
        if err.status != 404:  # a server from before the queue has no GET /queue
            raise
        return 0
    print()
    print(f"queue: {len(queue)} waiting" + (", first to start on top" if queue else ""))
    if queue:
        print(queue_table(queue))
    return 0


# ---- cancel ------------------------------------------------------------------------------------


def build_cancel_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator cancel",
        description="Cancel a run (POST /runs/{id}/cancel): a queued run leaves the queue at once, "
        "a running one is asked to stop. Exits 2 for an unknown run or one that has ended.",
    )
    parser.add_argument("run_id", metavar="RUN_ID")
    add_server_flags(parser)
    return parser


def cancel_main(argv: Sequence[str] | None = None) -> int:
    args = build_cancel_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    answer = Server.from_args(args).post(f"/runs/{quote(args.run_id, safe='')}/cancel")
    print(f"run {answer.get('run_id', args.run_id)}: cancel requested (state now {answer.get('status')})")
    return 0
