"""Multi-node: fold packing on fake GPUs, losing a node mid-run, an impossible request.

Each scenario runs in its own process with a simulated cluster (tests/scenarios/multinode.py),
apart from the session's single-node Ray instance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _scenario(name: str, timeout: float) -> dict[str, Any]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "scenarios" / "multinode.py"), name],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_half_gpu_folds_pack_two_per_node_and_survive_node_loss() -> None:
    out = _scenario("pack", timeout=420)
    assert out["placement"] == [2, 2], out
    assert out["head_hosts_folds"] is False  # the head has no GPU
    assert out["hub_node_is_head"] is True
    assert out["state"] == "completed", out["error"]
    assert out["folds_completed"] == [0, 1, 2, 3]
    assert len(out["retries"]) >= 1, out  # the removed node's folds were retried
    assert out["duplicate_epochs"] == 0
    assert out["summary_exists"] is True  # reports written on the driver side


def test_impossible_request_fails_clearly() -> None:
    out = _scenario("impossible", timeout=180)
    assert out["state"] == "failed"
    assert "gpus_per_fold=2" in out["error"] or "GPU" in out["error"], out["error"]
    assert out["seconds"] < 60
