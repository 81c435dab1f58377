"""HPO sessions side by side: the plain loop, in-process packed, Ray packed one and two trials at a time. Prints JSON.

The method of issues 16 and 22: ``orchestrator hpo`` sessions of ``--trials`` trials, each trial the
default job (sp500, 5 folds, 25 epochs) with a search space that pins ``lr`` and ``hidden`` to
their defaults, ``--sampler random --sampler-seed 1 --pruner none``, an SQLite Optuna storage:

- ``plain``: ``--executor local --parallel 1 --pack 1``: one fold after the other in this process,
  one model at a time (the plain in-process loop, the baseline);
- ``local_packed``: ``--executor local --parallel 1``: a trial's folds as one stacked model;
- ``ray_p1``: Ray ``--parallel 1``: one trial at a time, its folds packed on the two workers;
- ``ray_p2``: Ray ``--parallel 2``: two trials at a time, their folds packed on the two workers.

Each session is a fresh ``python -m orchestrator hpo`` process, as a user starts it. Trial start
and end times are read from Optuna's own storage. "Steady" is the trials after the first wave
(the first ``parallel`` trials, which pay actor start and first fits): ``steady_trial_seconds`` is
their median duration and ``steady_trials_per_minute`` their count over the span from the end of
the first wave to the last trial's end. ``session_seconds`` runs from the process launch to the
last trial's end (Ray's start included). Sessions run in a rotated order in each repeat, and the
medians over repeats are reported with every repeat's figures, so a change of load on the
machine hits all alike. Every trial must complete.

Usage: python bench/hpo_sessions.py [--trials 16] [--repeats 1] [--folds 5] [--epochs 25]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODES: dict[str, list[str]] = {
    "plain": ["--executor", "local", "--parallel", "1", "--pack", "1"],
    "local_packed": ["--executor", "local", "--parallel", "1"],
    "ray_p1": ["--executor", "ray", "--parallel", "1"],
    "ray_p2": ["--executor", "ray", "--parallel", "2"],
}
# issue 22's goals: ratio name -> (numerator mode and figure, denominator mode and figure, goal)
GOALS: dict[str, tuple[str, str, str, str, str]] = {
    "packing_alone_plain_over_local_packed": (
        "plain",
        "steady_trial_seconds",
        "local_packed",
        "steady_trial_seconds",
        ">= 1.5",
    ),
    "single_run_plain_over_ray_p1": (
        "plain",
        "steady_trial_seconds",
        "ray_p1",
        "steady_trial_seconds",
        ">= 2.5",
    ),
    "steady_throughput_ray_p2_over_plain": (
        "ray_p2",
        "steady_trials_per_minute",
        "plain",
        "steady_trials_per_minute",
        ">= 3.0",
    ),
    "session_plain_over_ray_p2": ("plain", "session_seconds", "ray_p2", "session_seconds", ">= 2.0"),
}
PINNED_SPACE = "lr: {type: categorical, choices: [0.001]}\nhidden: {type: categorical, choices: [64]}\n"


def run_session(mode: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    folder = work / f"{mode}_{int(time.time() * 1000)}"
    command, env = session_command(ROOT, MODES[mode], args, folder)
    launched = time.time()
    proc = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} session failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return session_figures(mode, folder, launched, args.trials, parallel=2 if mode == "ray_p2" else 1)


def add_session_arguments(parser: argparse.ArgumentParser, *, trials: int) -> None:
    """The job of each session (``session_command`` reads them): trials, folds, epochs, data."""
    parser.add_argument("--trials", type=int, default=trials)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--data", default="sp500")


def session_command(
    root: Path, flags: list[str], args: argparse.Namespace, folder: Path
) -> tuple[list[str], dict[str, str]]:
    """The ``orchestrator hpo`` command of one session of the code at ``root`` (its folder made,
    with the pinned search space), and its environment."""
    folder.mkdir(parents=True)
    space = folder / "space.yaml"
    space.write_text(PINNED_SPACE)
    env = {**os.environ, "PYTHONPATH": str(root), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    command = [
        sys.executable,
        "-m",
        "orchestrator",
        "hpo",
        "--study",
        "bench",
        "--trials",
        str(args.trials),
        "--data",
        args.data,
        "--folds",
        str(args.folds),
        "--epochs",
        str(args.epochs),
        "--search-space",
        str(space),
        "--sampler",
        "random",
        "--sampler-seed",
        "1",
        "--pruner",
        "none",
        "--storage",
        f"sqlite:///{folder / 'study.db'}",
        "--reports-dir",
        str(folder / "reports"),
        "--quiet",
        *flags,
    ]
    return command, env


def session_figures(mode: str, folder: Path, launched: float, trials: int, parallel: int) -> dict[str, Any]:
    """A finished session's figures from its Optuna storage (module doc); every trial must complete."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{folder / 'study.db'}"
    found = optuna.load_study(study_name="bench", storage=storage).get_trials(deepcopy=False)
    states = {t.state.name for t in found}
    if states != {"COMPLETE"} or len(found) != trials:
        raise RuntimeError(f"{mode}: every trial must complete, got {states} of {len(found)}")
    spans = sorted(
        (t.datetime_start.timestamp(), t.datetime_complete.timestamp())  # type: ignore[union-attr]
        for t in found
    )
    first_wave_end = max(end for _, end in spans[:parallel])
    steady = spans[parallel:]
    last_end = max(end for _, end in spans)
    return {
        "mode": mode,
        "trials": len(found),
        "session_seconds": round(last_end - launched, 2),
        "first_trial_start_seconds": round(spans[0][0] - launched, 2),
        "steady_trial_seconds": round(statistics.median(e - s for s, e in steady), 3),
        "steady_trials_per_minute": round(60 * len(steady) / (last_end - first_wave_end), 2),
        "process_seconds": round(time.time() - launched, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_session_arguments(parser, trials=16)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    modes = args.modes.split(",")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="bench_hpo_sessions_") as tmp:
        for repeat in range(args.repeats):
            order = modes[repeat % len(modes) :] + modes[: repeat % len(modes)]
            for mode in order:
                runs[mode].append(run_session(mode, args, Path(tmp)))
                print(json.dumps(runs[mode][-1]), file=sys.stderr, flush=True)
    median = {
        m: {k: statistics.median(r[k] for r in rs) for k in rs[0] if k not in ("mode", "trials")}
        for m, rs in runs.items()
    }
    ratios = {
        name: round(median[top][top_key] / median[bottom][bottom_key], 3)
        for name, (top, top_key, bottom, bottom_key, _) in GOALS.items()
        if {top, bottom} <= set(median)
    }
    print(
        json.dumps(
            {
                "benchmark": "hpo_sessions",
                "machine": machine(("ray", "torch", "optuna")),
                "load_average": os.getloadavg(),
                "args": vars(args),
                "goals": {name: goal[4] for name, goal in GOALS.items()},
                "ratios": ratios,
                "median": median,
                "runs": runs,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
