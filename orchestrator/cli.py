"""``python -m orchestrator`` / ``orchestrator``: train, serve, watch, hpo, submit, runs, cancel, schema."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from orchestrator.config import TrainConfig, config_from_mapping, load_config_file
from orchestrator.errors import OrchestratorError
from orchestrator.flags import add_model_flags, flag_specs, given_values

__all__ = ["main", "build_parser", "config_from_args", "given_config_values"]

# Ray >= 2.59 enables token auth by default; a local single-user instance runs without it
# unless the user configured otherwise.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# Today's spellings where a flag is not the field's name; every other field is --field-name.
_TRAIN_FLAG_SPELLING = {"use_cv": "cv"}
TRAIN_FLAGS = flag_specs(TrainConfig, spelling=_TRAIN_FLAG_SPELLING)


def add_train_flags(p: argparse.ArgumentParser) -> None:
    """One flag per scalar TrainConfig field, plus --config and --set FIELD=VALUE."""
    g = p.add_argument_group("run configuration (override --config, which overrides the defaults)")
    g.add_argument("--config", help="YAML or JSON file with TrainConfig fields")
    add_model_flags(g, TRAIN_FLAGS)
    g.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any config field, e.g. --set lr=3e-4 (repeatable; JSON values)",
    )


def add_command_flags(p: argparse.ArgumentParser, what: str, *, quiet: str) -> None:
    """The flags of a command that trains by itself (``train``, ``hpo``): where, which store, the
    events file, quiet."""
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local instance)")
    p.add_argument(
        "--db",
        help=f"the job store {what} is recorded in: a SQLAlchemy URL (default: "
        "$ORCHESTRATOR_DB, else orchestrator.db under --reports-dir); refused while "
        "a server writes it",
    )
    p.add_argument("--events-out", help=f"write every event of {what} as sent on /ws to this JSON-lines file")
    p.add_argument("--quiet", action="store_true", help=quiet)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults, then --config, then the flags given, then --set: later wins."""
    return config_from_mapping(given_config_values(args))


def given_config_values(args: argparse.Namespace) -> dict[str, Any]:
    """The run fields the user gave: --config, then the flags given, then --set (later wins).

    Unvalidated (``submit`` sends them to a server, whose own defaults fill the rest). Raises
    ``OrchestratorError`` for a ``--set`` without ``=`` and ``ConfigError`` for an unreadable
    config file.
    """
    values: dict[str, Any] = load_config_file(args.config) if args.config else {}
    values.update(given_values(args, TRAIN_FLAGS))
    for item in args.set:
        if "=" not in item:
            raise OrchestratorError(f"--set expects FIELD=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            values[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            values[key.strip()] = raw
    return values


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
    train.set_defaults(func=_cmd_train)

    schema = sub.add_parser("schema", help="print or write the JSON Schema of every /ws message")
    schema.add_argument("--out", help="write to this file instead of stdout")
    schema.add_argument(
        "--asyncapi", action="store_true", help="the AsyncAPI 3.0 document of /ws (YAML) instead"
    )
    schema.set_defaults(func=_cmd_schema)

    for name, help_text, module in _LATER_COMMANDS:
        cmd = sub.add_parser(name, help=help_text, add_help=False)
        cmd.set_defaults(func=_delegate(module))
    return parser


# Subcommands whose parsers live beside their implementation (imported only when used):
# "module" runs module.main(argv), "module:function" module.function(argv).
_LATER_COMMANDS: list[tuple[str, str, str]] = [
    ("serve", "serve the REST API and the /ws event stream", "api.server"),
    ("watch", "follow a run on a server's /ws in the terminal", "orchestrator.console.watch"),
    (
        "hpo",
        "Optuna hyperparameter search over whole CV runs (here, or on a server with --url)",
        "orchestrator.hpo.cli",
    ),
    (
        "submit",
        "submit a run to a server's queue (POST /train); --watch follows it",
        "orchestrator.console.jobs:submit_main",
    ),
    ("runs", "a server's runs and its queue, as tables", "orchestrator.console.jobs:runs_main"),
    ("cancel", "cancel a queued or running run on a server", "orchestrator.console.jobs:cancel_main"),
]


def _delegate(target: str) -> Callable[[argparse.Namespace, list[str]], int]:
    module, _, function = target.partition(":")

    def run(args: argparse.Namespace, rest: list[str]) -> int:
        import importlib

        mod = importlib.import_module(module)
        return int(getattr(mod, function or "main")(rest))

    return run


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


def _cmd_train(args: argparse.Namespace, rest: list[str]) -> int:
    from orchestrator.console.progress import EventFileWriter, ProgressView
    from orchestrator.messages import MESSAGE_TYPES
    from orchestrator.runner import run_training
    from orchestrator.store.engine import resolve_store_url

    config = config_from_args(args)
    view = ProgressView(enabled=not args.quiet)
    writer = EventFileWriter(args.events_out) if args.events_out else None
    listeners = [view] + ([writer] if writer else [])

    def fanout(events: list[dict[str, Any]]) -> None:
        for listener in listeners:
            listener(events)

    try:
        # the events file is the run's full record: it wants the live detail too
        interest = frozenset(MESSAGE_TYPES) if writer else frozenset()
        store_url = resolve_store_url(args.db, config.reports_dir)
        run = run_training(
            config, listener=fanout, address=args.address, interest=interest, store_url=store_url
        )
    finally:
        view.close()
        if writer:
            writer.close()
    if run.error:
        print(f"error: {run.error}", file=sys.stderr)
    else:
        print(f"summary: {run.summary_path}")
    code = 1 if run.error else 0
    if config.executor == "ray":
        from orchestrator.execution.cluster import exit_leaving_own_instance

        exit_leaving_own_instance(code)  # no wait for Ray's shutdown: the watchdog stops it
    return code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] in {name for name, _, _ in _LATER_COMMANDS}:
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
