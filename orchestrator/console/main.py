"""``python -m orchestrator`` / ``orchestrator``: train, serve, watch, hpo, submit, runs, cancel, schema."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from orchestrator.console.run_flags import add_command_flags, add_train_flags
from orchestrator.errors import OrchestratorError

__all__ = ["main", "build_parser"]

# Ray >= 2.59 enables token auth by default; a local single-user instance runs without it
# unless the user configured otherwise.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator",
        description="Walk-forward CV training of a probabilistic return forecaster on Ray, "
        "with live events over WebSocket.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="run one CV training headless, with progress bars")
    add_train_flags(train)
    add_command_flags(train, "the run", quiet="no progress bars")
    train.set_defaults(func=_train)

    schema = sub.add_parser("schema", help="print or write the JSON Schema of every /ws message")
    schema.add_argument("--out", help="write to this file instead of stdout")
    schema.add_argument(
        "--asyncapi", action="store_true", help="the AsyncAPI 3.0 document of /ws (YAML) instead"
    )
    schema.set_defaults(func=_cmd_schema)

    for command in _later_commands():
        cmd = sub.add_parser(command.name, help=command.help, add_help=False)
        cmd.set_defaults(func=command.run)
    return parser


@dataclass(frozen=True)
class LaterCommand:
    """A subcommand whose parser lives beside its implementation, imported only when it runs."""

    name: str
    help: str
    target: str  # "module" runs module.main(argv); "module:function" runs module.function(argv)

    def run(self, args: argparse.Namespace, rest: list[str]) -> int:
        module, _, function = self.target.partition(":")
        return int(getattr(importlib.import_module(module), function or "main")(rest))


_LATER_COMMANDS = (
    LaterCommand("watch", "follow a run on a server's /ws in the terminal", "orchestrator.console.watch"),
    LaterCommand(
        "hpo",
        "Optuna hyperparameter search over whole CV runs (here, or on a server with --url)",
        "orchestrator.console.hpo",
    ),
    LaterCommand(
        "submit",
        "submit a run to a server's queue (POST /train); --watch follows it",
        "orchestrator.console.jobs:submit_main",
    ),
    LaterCommand("runs", "a server's runs and its queue, as tables", "orchestrator.console.jobs:runs_main"),
    LaterCommand(
        "cancel", "cancel a queued or running run on a server", "orchestrator.console.jobs:cancel_main"
    ),
)

# Commands other installed packages add (``serve``: the ``api`` package registers it in
# pyproject.toml), so this package never names them: the import direction stays api -> orchestrator.
PLUGIN_GROUP = "orchestrator.commands"


def _plugin_commands() -> list[LaterCommand]:
    """The subcommands registered under ``PLUGIN_GROUP``; an entry point's help is its target's
    module docstring's first line (a tiny module: listing commands must not import a server)."""
    found = []
    for entry in metadata.entry_points(group=PLUGIN_GROUP):
        doc = importlib.import_module(entry.module).__doc__ or entry.name
        first = doc.strip().splitlines()[0].rstrip(".")
        found.append(LaterCommand(entry.name, first[:1].lower() + first[1:], entry.value))
    return found


def _later_commands() -> list[LaterCommand]:
    return sorted([*_plugin_commands(), *_LATER_COMMANDS], key=lambda c: c.name)


def _train(args: argparse.Namespace, rest: list[str]) -> int:
    from orchestrator.console.train import train_command

    return train_command(args)


def _cmd_schema(args: argparse.Namespace, rest: list[str]) -> int:
    from orchestrator.asyncapi import asyncapi_yaml
    from orchestrator.messages import message_json_schema

    if args.asyncapi:
        text = asyncapi_yaml()
    else:
        text = json.dumps(message_json_schema(), indent=2, sort_keys=True) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] in {command.name for command in _later_commands()}:
        args, rest = parser.parse_known_args(argv[:1])
        rest = argv[1:]
    else:
        args = parser.parse_args(argv)
        rest = []
    try:
        return int(args.func(args, rest))
    except OrchestratorError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
