"""Config validation at the edge, and the train CLI as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.config import config_from_mapping
from orchestrator.console.main import build_parser, main
from orchestrator.console.run_flags import config_from_args
from orchestrator.errors import ConfigError
from tests.synthetic import ar1_ohlcv
from tests.wire import validate_wire

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"epochs": -1}, "epochs"),
        ({"epochs": "many"}, "epochs"),
        ({"folds": 1}, "folds must be >= 2 when use_cv is true, got folds=1"),
        ({"learning_rate": 0.1}, "learning_rate: unknown field"),
        ({"window": "sliding"}, "window"),
        ({"gpus_per_fold": -0.5}, "gpus_per_fold"),
    ],
)
def test_bad_config_names_the_field(values: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        config_from_mapping(values)


def test_flags_override_config_file(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("epochs: 7\nfolds: 3\nlr: 0.01\n")
    args = build_parser().parse_args(["train", "--config", str(tmp_path / "c.yaml"), "--folds", "4"])
    config = config_from_args(args)
    assert (config.epochs, config.folds, config.lr) == (7, 4, 0.01)
    (tmp_path / "c.json").write_text(json.dumps({"epochs": 0}))
    with pytest.raises(ConfigError, match="epochs"):
        config_from_args(build_parser().parse_args(["train", "--config", str(tmp_path / "c.json")]))


def test_no_cv_flag() -> None:
    args = build_parser().parse_args(["train", "--no-cv", "--folds", "1"])
    config = config_from_args(args)
    assert config.use_cv is False and config.total_folds == 1


def test_cli_bad_value_exits_nonzero_with_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--epochs", "-3", "--executor", "local"]) == 2
    assert "epochs" in capsys.readouterr().err


def test_train_cli_local_end_to_end(tmp_path: Path) -> None:
    data = tmp_path / "bars.parquet"
    ar1_ohlcv(900, seed=11).to_parquet(data)
    events_out = tmp_path / "ev.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "train",
            "--executor",
            "local",
            "--data",
            str(data),
            "--folds",
            "2",
            "--epochs",
            "2",
            "--set",
            "min_samples=300",
            "--set",
            "lookback=10",
            "--reports-dir",
            str(tmp_path / "r"),
            "--events-out",
            str(events_out),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    assert "fold 1" in proc.stderr  # progress bars are drawn on stderr
    events = [json.loads(line) for line in events_out.read_text().splitlines()]
    assert [e["type"] for e in events].count("epoch_metrics") == 4
    for event in events:
        validate_wire(event)


def test_train_cli_missing_file_fails_readably(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "train",
            "--executor",
            "local",
            "--quiet",
            "--data",
            str(tmp_path / "nope.csv"),
            "--reports-dir",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 1
    assert "nope.csv" in proc.stderr and "Traceback" not in proc.stderr
