"""The run flags of ``train``, ``hpo``, ``submit`` and ``serve``: one per ``TrainConfig`` field, plus
``--config`` and ``--set FIELD=VALUE``, and the flags of a command that trains by itself."""

from __future__ import annotations

import argparse
import json
from typing import Any

from orchestrator.config import TrainConfig, config_from_mapping, load_config_file
from orchestrator.console.flags import add_model_flags, flag_specs, given_values
from orchestrator.errors import OrchestratorError

__all__ = ["TRAIN_FLAGS", "add_train_flags", "add_command_flags", "config_from_args", "given_config_values"]

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
