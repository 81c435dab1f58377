"""The ``orchestrator hpo`` command: its flags, one stderr line per trial, the closing summary."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import yaml
from pydantic import ValidationError

from orchestrator.config import format_validation_error
from orchestrator.errors import ConfigError
from orchestrator.hpo.space import load_search_space
from orchestrator.hpo.spec import HpoSpec
from orchestrator.hpo.state import StudyState
from orchestrator.hpo.study import run_study

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from orchestrator.cli import add_train_flags

    parser = argparse.ArgumentParser(
        prog="orchestrator hpo",
        description="Optuna hyperparameter search over whole walk-forward CV runs, trials in "
        "parallel on Ray. The train flags set the base config of every trial.",
    )
    add_train_flags(parser)
    g = parser.add_argument_group("search")
    g.add_argument("--study", default="default", help="study name; the same name continues it")
    g.add_argument("--trials", type=int, default=20, help="trials to run now (default 20)")
    g.add_argument("--parallel", type=int, default=1, help="trials at once (default 1)")
    g.add_argument("--storage", help="Optuna RDB URL or journal file (default "
                   "<reports>/hpo/<study>/study.journal)")
    g.add_argument("--metric", default="val_nll", help="epoch_metrics field, mean over folds")
    g.add_argument("--direction", choices=["minimize", "maximize"],
                   help="default: minimize for nll/bce/brier/loss/ECE, maximize for auc/DirAcc")
    g.add_argument("--search-space", help="YAML file: field -> {type, low, high, log | choices}")
    g.add_argument("--pruner", choices=["median", "hyperband", "successive_halving", "none"],
                   default="median")
    g.add_argument("--pruner-startup-trials", type=int, default=4,
                   help="completed trials before the median pruner prunes (default 4)")
    g.add_argument("--pruner-warmup-epochs", type=int, default=1,
                   help="epochs before a trial can be pruned (default 1)")
    g.add_argument("--sampler", choices=["tpe", "random"], default="tpe")
    g.add_argument("--sampler-seed", type=int)
    g.add_argument("--enqueue", action="append", default=[], metavar="JSON",
                   help="parameters to try first, e.g. '{\"lr\": 0.001}' (repeatable)")
    g.add_argument("--timeout", type=float, help="start no new trial after this many seconds")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    parser.add_argument("--events-out", help="write every event of the study as JSON lines")
    parser.add_argument("--quiet", action="store_true", help="no per-trial lines")
    return parser


def trial_line(event: dict[str, Any]) -> str | None:
    """The console line of an ``hpo_trial`` event (None for any other event)."""
    if event.get("type") != "hpo_trial":
        return None
    state, best = event["state"], event.get("best_value")
    if state == "running":
        return f"trial {event['trial']} started {json.dumps(event['params'])}"
    if state == "study_complete":
        return f"study {event['study']} complete: best trial {event['trial']} value {best}"
    return (
        f"trial {event['trial']} {state} value {event.get('value')} in "
        f"{event.get('duration_seconds') or 0:.1f}s "
        f"[{event['trials_done']}/{event['trials_total']}] best {best}"
    )


def _spec_from_args(args: argparse.Namespace) -> HpoSpec:
    from orchestrator.cli import config_from_args

    config = config_from_args(args)
    values: dict[str, Any] = {
        "study": args.study, "trials": args.trials, "parallel": args.parallel,
        "storage": args.storage, "metric": args.metric, "direction": args.direction,
        "pruner": args.pruner, "pruner_startup_trials": args.pruner_startup_trials,
        "pruner_warmup_epochs": args.pruner_warmup_epochs, "sampler": args.sampler,
        "sampler_seed": args.sampler_seed, "enqueue": [], "timeout_s": args.timeout,
    }
    if args.search_space:
        load_search_space(args.search_space, config)  # a clear error before Ray starts
        values["search_space"] = yaml.safe_load(Path(args.search_space).read_text())
    for text in args.enqueue:
        try:
            values["enqueue"].append(json.loads(text))
        except json.JSONDecodeError as err:
            raise ConfigError(f"--enqueue expects a JSON object, got {text!r}: {err}") from err
    try:
        return HpoSpec.model_validate({**values, "config": config})
    except ValidationError as err:
        raise ConfigError(f"invalid HPO options: {format_validation_error(err)}") from err


def main(argv: Sequence[str] | None = None) -> int:
    from orchestrator.events.actor import get_or_create_hub
    from orchestrator.console.progress import EventFileWriter
    from orchestrator.execution.cluster import ensure_ray

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    spec = _spec_from_args(args)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ensure_ray(args.address)
    hub = get_or_create_hub()
    writer = EventFileWriter(args.events_out) if args.events_out else None

    def fanout(events: list[dict[str, Any]]) -> None:
        if not args.quiet:
            for line in filter(None, map(trial_line, events)):
                print(line, file=sys.stderr, flush=True)
        if writer is not None:
            writer(events)

    try:
        result = run_study(spec, hub=hub, listener=fanout)
    finally:
        if writer is not None:
            writer.close()
    print(f"study {result.study}: {result.state.value}, {result.trials_done} trials done "
          f"({json.dumps(result.counts)})")
    if result.best_trial is not None:
        print(f"best trial {result.best_trial}: {spec.metric} = {result.best_value} "
              f"{json.dumps(result.best_params)}")
        print(f"best config: {result.best_config}")
    print(f"trials: {result.trials_csv}")
    return 130 if result.state is StudyState.CANCELLED else 0
