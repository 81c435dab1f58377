"""The hpo command's console lines and its options."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.console.hpo import _spec_from_args, build_parser, main
from orchestrator.console.progress import selection_lines, trial_line
from orchestrator.errors import ConfigError
from orchestrator.messages import parse_message
from tests.made_events import error
from tests.synthetic import random_walk_ohlcv

# hpo_hub: the default namespace's hub, held for the session (a hub dies with its last handle)
pytest_plugins = ["tests.hpo_fixtures"]


def test_one_line_per_trial_start_and_end_and_one_for_the_study() -> None:
    base = {
        "type": "hpo_trial",
        "study": "s",
        "trial": 3,
        "params": {"lr": 0.01},
        "best_value": 0.5,
        "trials_done": 4,
        "trials_total": 10,
    }
    assert trial_line(parse_message({**base, "state": "running"})) == 'trial 3 started {"lr": 0.01}'
    assert trial_line(parse_message({**base, "state": "pruned", "value": 0.9, "duration_seconds": 2.25})) == (
        "trial 3 pruned value 0.9 in 2.2s [4/10] best 0.5"
    )
    assert trial_line(
        parse_message({**base, "state": "failed", "value": None, "duration_seconds": None})
    ) == ("trial 3 failed value None in 0.0s [4/10] best 0.5")
    assert trial_line(parse_message({**base, "state": "study_complete"})) == (
        "study s complete: best trial 3 value 0.5"
    )
    assert trial_line(parse_message(error("x"))) is None


def test_the_closing_lines_say_the_edge_and_the_selection() -> None:
    report = {
        "verdict": "no evidence of skill",
        "best_trial": 2,
        "best_dm_p": 0.98583,
        "best_vs_naive": {"nll_diff": 0.0116, "brier_skill": -0.0015},
        "dsr": 0.0034,
        "sr0": 0.0402,
        "dsr_inputs": {"sr": 0.0121},
        "n_trials": 4,
        "pbo": 0.0283,
        "selection": "informative",
        "blocks": 16,
        "rows": 794,
        "pbo_trials": [0, 1, 2, 3],
    }
    assert selection_lines(report) == [
        "edge: no evidence of skill: best trial 2 vs naive: nll_diff +0.0116, Brier skill -0.0015, "
        "DM p 0.9858; deflated Sharpe 0.003 (SR 0.0121 per row vs 0.0402 expected of the best of 4 "
        "trials without skill)",
        "selection: informative: PBO 0.028 over 12870 CSCV splits (16 blocks of 794 shared rows, 4 trials)",
    ]
    few = {
        **report,
        "pbo": None,
        "blocks": 0,
        "notes": ["pbo: 30 shared rows make fewer than 2 blocks of 20"],
    }
    assert (
        selection_lines(few)[1]
        == "selection: not judged (pbo: 30 shared rows make fewer than 2 blocks of 20)"
    )
    assert selection_lines(None) == ["edge: no completed trial to judge"]
    assert selection_lines({"error": "trials 0 and 1 have different y"}) == [
        "edge: no selection diagnostics: trials 0 and 1 have different y"
    ]


def test_flags_make_the_spec() -> None:
    args = build_parser().parse_args(
        [
            "--study",
            "s2",
            "--trials",
            "3",
            "--parallel",
            "2",
            "--pruner",
            "none",
            "--epochs",
            "4",
            "--enqueue",
            '{"lr": 0.001}',
            "--metric",
            "val_auc",
        ]
    )
    spec = _spec_from_args(args)
    assert (spec.study, spec.trials, spec.parallel, spec.pruner) == ("s2", 3, 2, "none")
    assert spec.enqueue == [{"lr": 0.001}] and spec.config.epochs == 4
    assert spec.direction == "maximize"
    with pytest.raises(ConfigError, match="--enqueue expects a JSON object"):
        _spec_from_args(build_parser().parse_args(["--enqueue", "{lr"]))
    with pytest.raises(ConfigError, match="invalid HPO options"):
        _spec_from_args(build_parser().parse_args(["--parallel", "0"]))


def test_a_failed_trial_line_says_why() -> None:
    event = {
        "type": "hpo_trial",
        "study": "s",
        "trial": 0,
        "params": {},
        "state": "failed",
        "value": None,
        "duration_seconds": 1.0,
        "best_value": None,
        "trials_done": 1,
        "trials_total": 2,
        "error": "val_auc is undefined (null) in fold 1",
    }
    assert trial_line(parse_message(event)) == (
        "trial 0 failed value None in 1.0s [1/2] best None: val_auc is undefined (null) in fold 1"
    )


def _stale_tail_csv(path: Path, n: int = 2200, stale: int = 460) -> Path:
    """A random walk whose last ``stale`` bars repeat the last price (a halted instrument)."""
    bars = random_walk_ohlcv(n, seed=5)
    last = bars.iloc[n - stale - 1]
    for column in ("open", "high", "low", "close"):
        bars.loc[bars.index[n - stale :], column] = last["close"]
    bars.loc[bars.index[n - stale :], "volume"] = 0.0
    bars.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        # a validation fold with one class: the objective is undefined in every trial
        (["--metric", "val_auc"], "val_auc is undefined (null) in fold 1"),
        # another member of the kind: every trial's run is refused before it trains
        (["--metric", "val_nll", "--set", "batch_size=4000"], "batch_size"),
    ],
)
def test_a_study_in_which_no_trial_completes_exits_1_with_each_reason(
    hpo_hub: object, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], reason: str
) -> None:
    data = _stale_tail_csv(tmp_path / "stale_tail.csv")
    code = main(
        [
            "--data",
            str(data),
            "--folds",
            "2",
            "--epochs",
            "2",
            "--trials",
            "2",
            "--parallel",
            "1",
            "--pruner",
            "none",
            "--sampler-seed",  # the same draws every time (some crash in the MZ regression: test_metrics)
            "0",
            "--reports-dir",
            str(tmp_path / "r"),
            "--study",
            f"none_complete_{len(extra)}",
            *extra,
        ]
    )
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if line.startswith("trial ") and " failed " in line]
    assert code == 1, err
    assert len(failed) == 2 and all(reason in line for line in failed), err
    assert "no trial of this session completed" in err


def test_hpo_executor_local_runs_every_trial_in_process_without_ray(tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    data = tmp_path / "bars.csv"
    random_walk_ohlcv(900, seed=2).to_csv(data, index=False)
    script = (
        "import sys\n"
        "from orchestrator.console.hpo import main\n"
        f"code = main(['--executor', 'local', '--data', {str(data)!r}, '--trials', '2', '--folds', '2',"
        " '--epochs', '2', '--set', 'min_samples=300', '--set', 'lookback=10', '--study', 'inproc',"
        f" '--reports-dir', {str(tmp_path / 'r')!r}, '--pruner', 'none', '--sampler', 'random'])\n"
        "print('RAY_IMPORTED', 'ray' in sys.modules)\n"
        "sys.exit(code)\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RAY_IMPORTED False" in proc.stdout  # no Ray module, so no Ray process either
    summaries = sorted((tmp_path / "r" / "hpo" / "inproc" / "runs").glob("*/summary.json"))
    assert len(summaries) == 2
    assert {json.loads(p.read_text())["executor"] for p in summaries} == {"local"}
    report = json.loads((tmp_path / "r" / "hpo" / "inproc" / "selection.json").read_text())
    closing = proc.stdout.splitlines()
    edge = next(i for i, line in enumerate(closing) if line.startswith("edge: "))
    assert closing[edge].startswith(f"edge: {report['verdict']}: best trial {report['best_trial']} vs naive")
    assert closing[edge + 1].startswith("selection: ")
    assert closing[edge + 2].endswith("inproc/selection.json (docs/edge.md)")


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_local_batch_of_trials_trains_as_one_stack_with_the_values_of_one_at_a_time(
    tmp_path: Path, sampler: str
) -> None:
    import json

    from orchestrator.hpo import run_study
    from tests.hpo_fixtures import make_spec

    data = tmp_path / "bars.csv"
    random_walk_ohlcv(900, seed=2).to_csv(data, index=False)
    space = {
        "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "dropout": {"type": "float", "low": 0.0, "high": 0.3},
    }
    outcomes = {}
    for parallel in (1, 2):
        spec = make_spec(
            str(data),
            tmp_path / f"p{parallel}",
            {
                "data": str(data),
                "reports_dir": str(tmp_path / f"p{parallel}"),
                "executor": "local",
                "min_samples": 300,
                "folds": 2,
                "epochs": 3,
                "lookback": 10,
                "hidden": 16,
            },
            study="stacked",
            trials=4,
            parallel=parallel,
            sampler=sampler,
            sampler_seed=5,
            pruner="none",
            search_space=space,
        )
        result = run_study(spec)
        assert result.trials_done == 4
        summaries = sorted((tmp_path / f"p{parallel}" / "hpo" / "stacked" / "runs").glob("*/summary.json"))
        assert len(summaries) == 4
        outcomes[parallel] = {
            s["hpo"]["trial"]: (
                s["hpo"]["params"],
                s["aggregate"]["val_nll"]["mean"],
                [f["pack_size"] for f in s["folds"]],
            )
            for s in (json.loads(path.read_text()) for path in summaries)
        }
    assert {trial: packs for trial, (_, _, packs) in outcomes[2].items()} == dict.fromkeys(range(4), [4, 4])
    assert {trial: packs for trial, (_, _, packs) in outcomes[1].items()} == dict.fromkeys(range(4), [2, 2])
    if sampler == "random":  # the same draws, trial by trial, whatever the batches
        for trial in range(4):
            assert outcomes[2][trial][0] == outcomes[1][trial][0]
            assert outcomes[2][trial][1] == pytest.approx(outcomes[1][trial][1], rel=1e-4)
    else:  # TPE's constant liar keeps a batch's members apart
        assert outcomes[2][0][0] != outcomes[2][1][0] and outcomes[2][2][0] != outcomes[2][3][0]
