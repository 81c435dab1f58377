"""The study hook's cost: seconds to rewrite selection.json and selection_matrix.csv. Prints JSON.

A study of ``--trials`` completed trials is written to a temporary folder as the trials' runs
write it (each run 5 folds of 150 calibration and ``--rows``/5 validation rows in its predictions
CSVs, a summary with each fold's naive forecast; the bundled S&P 500 gives about 2000 validation
rows), in an in-memory Optuna study. Timed, best of ``--repeats``:

- ``cold_update``: a new ``StudySelection`` (a resumed session's first update): reads every
  trial's files, then the diagnostics (16 blocks, CSCV over 12870 splits, DSR, DM) and both files;
- ``warm_update``: the same session after one more trial completed (reads that trial only);
- ``write_study_files``: what the session does after each trial (trials.csv, the selection files,
  report.html), warm.

Usage: python bench/study_selection.py [--trials 30] [--rows 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna  # noqa: E402
import statsmodels.api  # noqa: E402, F401  (its import, about 1 s, is not what is measured)
from optuna.trial import create_trial  # noqa: E402

from bench.machine import machine  # noqa: E402
from orchestrator.config import config_from_mapping  # noqa: E402
from orchestrator.hpo.results import write_study_files  # noqa: E402
from orchestrator.hpo.selection_files import StudySelection  # noqa: E402
from orchestrator.hpo.spec import HpoSpec  # noqa: E402
from orchestrator.run.reports import PREDICTION_COLUMNS  # noqa: E402

FOLDS = 5
CAL = 150


def write_run(
    study_dir: Path, number: int, y: np.ndarray, times: np.ndarray, per_fold: int
) -> dict[str, str]:
    """One completed trial's run folder; its user attributes."""
    rng = np.random.default_rng(number)
    run_id = f"hpo_bench_t{number:04d}_000000"
    folder = study_dir / "runs" / run_id
    (folder / "predictions").mkdir(parents=True)
    folds = []
    for k in range(FOLDS):
        calibration = np.arange(k * CAL, (k + 1) * CAL)  # the validation rows come after all of them
        index = np.r_[calibration, FOLDS * CAL + np.arange(k * per_fold, (k + 1) * per_fold)]
        n = index.size
        mu = rng.normal(0.0, 0.001, n)
        p_up = np.clip(0.5 + 20.0 * mu, 0.01, 0.99)
        frame = pd.DataFrame(
            {
                "timestamp": pd.to_datetime(times[index]).strftime("%Y-%m-%dT%H:%M:%S"),
                "fold_id": k,
                "segment": ["calibration"] * CAL + ["validation"] * per_fold,
                "y": y[index],
                "mu": mu,
                "sigma": 0.01,
                "p_up_raw": p_up,
                "p_up_cal": p_up,
                "conformal_lo": mu - 0.016,
                "conformal_hi": mu + 0.016,
                "conformal_p": 0.5,
                "pit_z": (y[index] - mu) / 0.01,
            },
            columns=list(PREDICTION_COLUMNS),
        )
        name = f"predictions_fold_{k}_20260101_000000.csv"
        frame.to_csv(folder / "predictions" / name, index=False)
        naive = {"mu": 0.0, "sigma": 0.01, "p_up": 0.5, "n_train": 1000}
        folds.append({"fold_id": k, "predictions_path": str(folder / "predictions" / name), "naive": naive})
    summary = {"folds": folds, "config": {}, "aggregate": {"skill": {"nll_diff": 0.0, "dm_p": 0.5}}}
    (folder / "summary.json").write_text(json.dumps(summary))
    return {"run_id": run_id, "summary_path": str(folder / "summary.json")}


def best(action: Callable[[], object], repeats: int, before: Callable[[], object] = lambda: None) -> float:
    times = []
    for _ in range(repeats):
        before()
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    per_fold = args.rows // FOLDS
    n = FOLDS * (CAL + per_fold)
    times = np.datetime64("2000-01-03T00:00:00") + np.arange(n) * np.timedelta64(1, "D")
    y = np.random.default_rng(0).normal(0.0, 0.01, n)
    with tempfile.TemporaryDirectory() as tmp:
        config = config_from_mapping({"reports_dir": tmp})
        spec = HpoSpec.model_validate({"study": "bench", "config": config})
        study = optuna.create_study(study_name="bench", direction="minimize")
        rng = np.random.default_rng(1)
        for number in range(args.trials + args.repeats):
            attrs = write_run(spec.study_dir, number, y, times, per_fold)
            if number < args.trials:
                study.add_trial(create_trial(value=float(rng.normal(-3.2, 0.01)), user_attrs=attrs))
        cold = best(lambda: StudySelection().update(study, spec), args.repeats)
        session = StudySelection()
        session.update(study, spec)
        extra = iter(range(args.trials, args.trials + args.repeats))

        def one_more() -> None:
            number = next(extra)
            attrs = {"run_id": f"hpo_bench_t{number:04d}_000000"}
            attrs["summary_path"] = str(spec.study_dir / "runs" / attrs["run_id"] / "summary.json")
            study.add_trial(create_trial(value=-3.0, user_attrs=attrs))

        warm = best(lambda: session.update(study, spec), args.repeats, before=one_more)
        files = best(
            lambda: write_study_files(
                study,
                spec,
                cancelled=False,
                trials_total=len(study.trials),
                best_written=0,
                selection=session,
            ),
            args.repeats,
        )
    result = {
        "trials": args.trials,
        "validation_rows": FOLDS * per_fold,
        "cold_update_seconds": round(cold, 3),
        "warm_update_seconds": round(warm, 3),
        "write_study_files_seconds": round(files, 3),
    }
    print(
        json.dumps(
            {
                "benchmark": "study_selection",
                "machine": machine(("numpy", "pandas", "optuna")),
                "results": result,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
