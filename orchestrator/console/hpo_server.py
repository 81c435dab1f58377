"""``orchestrator hpo --url``: post a study to a server's ``POST /hpo`` and follow it to its end.

The body holds only what the user gave: the HPO fields at the top level, the run fields under
``config`` (the server's flags fill the rest, as for a run posted by ``submit``). The study's
name goes alone on stdout's first line; unless ``--detach``, ``GET /hpo/{study}`` is then polled
until the study ends, with the local command's line per trial on stderr and its closing summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from orchestrator.console.remote import Server, ServerError, check_remote_data
from orchestrator.errors import ConfigError
from orchestrator.hpo.state import TERMINAL_STUDY_STATES

__all__ = ["TrialLines", "run_on_server", "study_body"]

# Flags about where a study runs here: on a server, its own Ray cluster and job store hold it.
_LOCAL_ONLY = {"address": "--address", "db": "--db", "events_out": "--events-out"}
_ENDED = frozenset(state.value for state in TERMINAL_STUDY_STATES)
# Optuna's trial states as GET /hpo/{study} names them -> the state of an hpo_trial event.
_EVENT_STATE = {"complete": "completed", "pruned": "pruned", "fail": "failed", "running": "running"}
POLL_S = 1.0
UNREACHABLE_LIMIT_S = 60.0


def study_body(args: argparse.Namespace, search: dict[str, Any]) -> dict[str, Any]:
    """The POST /hpo body: ``search`` (the HPO fields given) plus the run fields given under
    ``config``. Raises ``ConfigError`` for a flag that only means something for a study run here
    (``--storage`` too: a server keeps its studies in its own store) and for a ``data`` that is
    a path here rather than a name under the server's data roots."""
    from orchestrator.console.run_flags import given_config_values

    local = [flag for field, flag in _LOCAL_ONLY.items() if getattr(args, field, None)]
    if search.get("storage") is not None:
        local.append("--storage")
    if local:
        raise ConfigError(
            f"{', '.join(local)} only apply to a study run here; with --url the server's cluster "
            "and job store hold it (its events: orchestrator watch --run-id hpo_<study>)"
        )
    body = dict(search)
    config = given_config_values(args)
    check_remote_data(config)
    if config:
        body["config"] = config
    return body


class TrialLines:
    """The console lines of the trials in successive ``GET /hpo/{study}`` answers, each once:
    one when a trial is first seen running, one when it has finished (``progress.trial_line``'s)."""

    def __init__(self) -> None:
        self.started: set[int] = set()
        self.finished: set[int] = set()
        self._best: float | None = None

    def new_lines(self, status: dict[str, Any]) -> list[str]:
        from orchestrator.console.progress import trial_line

        lines = []
        maximize = status.get("direction") == "maximize"
        for row in sorted(status.get("trials", []), key=lambda r: int(r["number"])):
            number, state = int(row["number"]), _EVENT_STATE.get(str(row.get("state")))
            if state is None or number in self.finished:
                continue
            event = {"type": "hpo_trial", "trial": number, "params": row.get("params", {}), "state": state}
            if state == "running":
                if number not in self.started:
                    self.started.add(number)
                    lines.append(trial_line(event))
                continue
            self.finished.add(number)
            value = row.get("value")
            if (
                state == "completed"
                and isinstance(value, (int, float))
                and (self._best is None or (value > self._best if maximize else value < self._best))
            ):
                self._best = value
            event.update(
                value=value,
                duration_seconds=row.get("duration_seconds"),
                error=row.get("error"),
                trials_done=len(self.finished),
                trials_total=status.get("trials_total", "?"),
                best_value=self._best,
            )
            lines.append(trial_line(event))
        return [line for line in lines if line is not None]


def _summary(status: dict[str, Any]) -> list[str]:
    from orchestrator.console.progress import selection_lines

    lines = [
        f"study {status.get('study')}: {status.get('state')}, {status.get('trials_done', 0)} trials done"
    ]
    best = status.get("best")
    if best:
        lines.append(
            f"best trial {best['trial']}: {status.get('metric')} = {best['value']} "
            f"{json.dumps(best.get('params', {}))} (run {best.get('run_id')})"
        )
    paths = status.get("paths") or {}
    if paths.get("trials_csv"):
        lines.append(f"trials: {paths['trials_csv']} (on the server)")
    lines += selection_lines(status.get("selection"))
    if paths.get("selection"):
        lines.append(f"selection diagnostics: {paths['selection']} (on the server; docs/edge.md)")
    return lines


def follow_study(
    server: Server, study: str, *, say: Callable[[str], None], poll_s: float = POLL_S
) -> dict[str, Any]:
    """Poll ``GET /hpo/{study}`` until the study has ended, passing each new trial line to
    ``say``; returns the last status. Raises ``ServerError`` for a refusal, or when the server
    stays unreachable for ``UNREACHABLE_LIMIT_S`` seconds."""
    lines = TrialLines()
    path = f"/hpo/{quote(study, safe='')}"
    last_answer = time.monotonic()
    while True:
        try:
            status: dict[str, Any] = server.get(path)
        except ServerError as err:
            if err.status is not None or time.monotonic() - last_answer > UNREACHABLE_LIMIT_S:
                raise
            time.sleep(poll_s)
            continue
        last_answer = time.monotonic()
        for line in lines.new_lines(status):
            say(line)
        if status.get("state") in _ENDED:
            return status
        time.sleep(poll_s)


def run_on_server(args: argparse.Namespace, search: dict[str, Any]) -> int:
    """Post the study, print its name, follow it unless ``--detach``. Exit code: 0 when it
    completed with at least one completed trial, 1 when it failed, was cancelled or completed
    none, 130 on Ctrl-C (the study goes on on the server)."""
    server = Server.from_args(args)
    answer = server.post("/hpo", study_body(args, search))
    study = str(answer["study"])
    print(study, flush=True)
    print(f"study {study}: {answer.get('status')} on {server.url}", file=sys.stderr, flush=True)
    if args.detach:
        return 0

    def say(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    try:
        status = follow_study(server, study, say=say)
    except KeyboardInterrupt:
        print(
            f"stopped following; study {study} goes on on the server (cancel it: POST "
            f"{server.url}/hpo/{study}/cancel)",
            file=sys.stderr,
        )
        return 130
    for line in _summary(status):
        print(line)
    if status.get("error"):
        print(f"error: {status['error']}", file=sys.stderr)
    completed = any(row.get("state") == "complete" for row in status.get("trials", []))
    return 0 if status.get("state") == "completed" and completed else 1
