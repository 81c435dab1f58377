"""The hpo command's console lines and its options."""

from __future__ import annotations

import pytest

from orchestrator.errors import ConfigError
from orchestrator.hpo.cli import _spec_from_args, build_parser, trial_line


def test_one_line_per_trial_start_and_end_and_one_for_the_study() -> None:
    base = {"type": "hpo_trial", "study": "s", "trial": 3, "params": {"lr": 0.01},
            "best_value": 0.5, "trials_done": 4, "trials_total": 10}
    assert trial_line({**base, "state": "running"}) == 'trial 3 started {"lr": 0.01}'
    assert trial_line({**base, "state": "pruned", "value": 0.9, "duration_seconds": 2.25}) == (
        "trial 3 pruned value 0.9 in 2.2s [4/10] best 0.5"
    )
    assert trial_line({**base, "state": "failed", "value": None, "duration_seconds": None}) == (
        "trial 3 failed value None in 0.0s [4/10] best 0.5"
    )
    assert trial_line({**base, "state": "study_complete"}) == (
        "study s complete: best trial 3 value 0.5"
    )
    assert trial_line({"type": "epoch_metrics"}) is None


def test_flags_make_the_spec() -> None:
    args = build_parser().parse_args([
        "--study", "s2", "--trials", "3", "--parallel", "2", "--pruner", "none", "--epochs", "4",
        "--enqueue", '{"lr": 0.001}', "--metric", "val_auc",
    ])
    spec = _spec_from_args(args)
    assert (spec.study, spec.trials, spec.parallel, spec.pruner) == ("s2", 3, 2, "none")
    assert spec.enqueue == [{"lr": 0.001}] and spec.config.epochs == 4
    assert spec.direction == "maximize"
    with pytest.raises(ConfigError, match="--enqueue expects a JSON object"):
        _spec_from_args(build_parser().parse_args(["--enqueue", "{lr"]))
    with pytest.raises(ConfigError, match="invalid HPO options"):
        _spec_from_args(build_parser().parse_args(["--parallel", "0"]))
