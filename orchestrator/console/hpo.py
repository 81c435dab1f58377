"""The ``orchestrator hpo`` command: its flags, one stderr line per trial, the closing summary.

With ``--url`` the study runs on that server instead (``orchestrator.console.hpo_server``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from pydantic import ValidationError

from orchestrator.config import format_validation_error, parse_json, parse_yaml
from orchestrator.console.flags import add_model_flags, flag_specs, given_values
from orchestrator.console.remote import add_server_flags
from orchestrator.errors import ConfigError
from orchestrator.hpo.space import load_search_space
from orchestrator.hpo.spec import HpoSpec
from orchestrator.hpo.state import StudyState
from orchestrator.hpo.study import run_study
from orchestrator.store.engine import resolve_store_url

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from orchestrator.console.run_flags import add_command_flags, add_train_flags

    parser = argparse.ArgumentParser(
        prog="orchestrator hpo",
        description="Optuna hyperparameter search over whole walk-forward CV runs, trials in "
        "parallel on Ray. The train flags set the base config of every trial.",
    )
    add_train_flags(parser)
    g = parser.add_argument_group("search")
    add_model_flags(g, SEARCH_FLAGS)
    g.add_argument("--search-space", help="YAML file: field -> {type, low, high, log | choices}")
    g.add_argument(
        "--enqueue",
        action="append",
        default=[],
        metavar="JSON",
        help="parameters to try first, e.g. '{\"lr\": 0.001}' (repeatable)",
    )
    # the study's events, and its Optuna storage unless --storage says otherwise, go to --db
    add_command_flags(parser, "the study", quiet="no per-trial lines")
    add_server_flags(
        parser,
        url_default=None,
        url_help="run the study on this server (POST /hpo) "
        "instead of here: the flags given are sent, the server's defaults fill the rest",
    )
    parser.add_argument(
        "--detach",
        action="store_true",
        help="with --url: print the study's name and exit, without following it",
    )
    return parser


# One flag per scalar HpoSpec field (today's spelling --timeout for timeout_s); the search space
# and enqueued parameters have flags of their own, the base config has the train flags.
SEARCH_FLAGS = flag_specs(HpoSpec, spelling={"timeout_s": "timeout"})


def search_values(args: argparse.Namespace) -> dict[str, Any]:
    """The HPO fields the user gave: the search flags, ``--search-space``'s mapping (read here,
    checked by ``HpoSpec``), ``--enqueue``'s objects. Raises ``ConfigError`` for a missing or
    non-YAML space file and for an ``--enqueue`` that is not JSON."""
    values: dict[str, Any] = given_values(args, SEARCH_FLAGS)
    if args.search_space:
        path = Path(args.search_space)
        if not path.is_file():
            raise ConfigError(f"search space file not found: {path}")
        values["search_space"] = parse_yaml(path.read_text(), f"search space file {path}")
    if args.enqueue:
        values["enqueue"] = []
    for text in args.enqueue:
        try:
            json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--enqueue expects a JSON object, got {text!r}: {err}") from err
        values["enqueue"].append(parse_json(text, f"--enqueue {text!r}"))  # no key twice
    return values


def _spec_from_args(args: argparse.Namespace) -> HpoSpec:
    from orchestrator.console.run_flags import config_from_args

    config = config_from_args(args)
    if args.search_space:
        load_search_space(args.search_space, config)  # a clear error before Ray starts
    values = search_values(args)
    try:
        return HpoSpec.model_validate({**values, "config": config})
    except ValidationError as err:
        raise ConfigError(f"invalid HPO options: {format_validation_error(err)}") from err


def main(argv: Sequence[str] | None = None) -> int:
    from orchestrator.console.progress import EventFileWriter, selection_lines, trial_line
    from orchestrator.hpo.selection_files import SELECTION_FILE, read_selection

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.url is not None:
        from orchestrator.console.hpo_server import run_on_server

        return run_on_server(args, search_values(args))
    if args.detach:
        raise ConfigError("--detach goes with --url (a study run here ends with the command)")
    spec = _spec_from_args(args)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store_url = resolve_store_url(args.db, spec.config.reports_dir)
    if spec.storage is None:  # one database holds the runs and the studies
        spec = spec.model_copy(update={"storage": store_url})
    hub: Any  # executor=local: an in-process hub, and no Ray at all
    if spec.config.executor == "ray":
        import ray

        from orchestrator.events.actor import hub_for_store
        from orchestrator.execution.cluster import ensure_ray
        from orchestrator.execution.connect import CONNECT_DEADLINE_S

        ensure_ray(args.address, connect_deadline_s=CONNECT_DEADLINE_S)
        hub = hub_for_store(store_url, detached=False, reattach=False)
        close_store: Callable[[], object] = lambda: ray.get(hub.close_store.remote())  # noqa: E731
    else:
        from orchestrator.events.durable import hub_on_store

        hub, recorder = hub_on_store(store_url)
        close_store = recorder.close
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
        close_store()
    print(
        f"study {result.study}: {result.state.value}, {result.trials_done} trials done "
        f"({json.dumps(result.counts)})"
    )
    if result.best_trial is not None:
        print(
            f"best trial {result.best_trial}: {spec.metric} = {result.best_value} "
            f"{json.dumps(result.best_params)}"
        )
        print(f"best config: {result.best_config}")
    print(f"trials: {result.trials_csv}")
    for line in selection_lines(read_selection(spec.study_dir)):
        print(line)
    print(f"selection diagnostics: {spec.study_dir / SELECTION_FILE} (docs/edge.md)")
    code = 0
    if result.state is StudyState.CANCELLED:
        code = 130
    elif result.session_completed == 0:
        print(
            f"error: no trial of this session completed ({len(result.session_trials)} run); "
            f"each trial's reason is on its line above and in {result.trials_csv}",
            file=sys.stderr,
        )
        code = 1
    if spec.config.executor == "ray":
        from orchestrator.execution.cluster import exit_leaving_own_instance

        exit_leaving_own_instance(code)  # no wait for Ray's shutdown: the watchdog stops it
    return code
