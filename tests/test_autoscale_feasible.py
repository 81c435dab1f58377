"""An autoscaling cluster on the session's Ray instance: node types count, not only live nodes.

A ``ClusterConfig`` written into the GCS internal KV where an autoscaler reports it makes a GPU
run on this GPU-less instance wait for a node instead of failing at once, and end with the
placement timeout naming the autoscaler. The pure arithmetic is tested in test_placement.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.config import config_from_mapping
from orchestrator.execution import cluster
from orchestrator.execution.placement import NodeGroup, reachable_resources
from tests.made_events import bodies
from tests.ray_helpers import cluster_config


@pytest.fixture
def reported_gpu_node_type(ray_session: None) -> Iterator[None]:
    """A GPU node type in the GCS, where an autoscaler reports its config; removed afterwards."""
    import ray._raylet
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put

    raylet: Any = ray._raylet  # a compiled module: mypy sees none of its names
    key = raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY
    namespace = raylet.GCS_AUTOSCALER_STATE_NAMESPACE
    config = cluster_config([("gpu.1x", {"CPU": 2, "GPU": 1}, 2)])
    _internal_kv_put(key, config.SerializeToString(), overwrite=True, namespace=namespace)
    try:
        yield
    finally:
        _internal_kv_del(key, namespace=namespace)


def test_the_cluster_view_reads_the_reported_config(reported_gpu_node_type: None) -> None:
    view = cluster.cluster_view()
    assert view.node_groups == (NodeGroup("gpu.1x", {"CPU": 2.0, "GPU": 1.0}, 2),)
    assert view.live_nodes and all(node.get("GPU", 0) == 0 for node in view.live_nodes)
    assert reachable_resources(view)["GPU"] == 2


def test_the_cluster_view_falls_back_to_the_launcher_config(
    ray_session: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "none.yaml"
    monkeypatch.setattr(cluster, "LAUNCHER_CONFIG_PATH", str(missing))
    assert cluster.cluster_view().node_groups is None  # a plain local instance
    launcher = tmp_path / "ray_bootstrap_config.yaml"
    launcher.write_text(
        yaml.safe_dump(
            {
                "max_workers": 2,
                "head_node_type": "head",
                "available_node_types": {
                    "head": {"resources": {"CPU": 2}, "max_workers": 0},
                    "gpu": {"resources": {"CPU": 1, "GPU": 1}, "min_workers": 0, "max_workers": 2},
                },
            }
        )
    )
    monkeypatch.setattr(cluster, "LAUNCHER_CONFIG_PATH", str(launcher))
    assert cluster.cluster_view().node_groups == (NodeGroup("gpu", {"CPU": 1, "GPU": 1}, 2),)


def test_a_gpu_run_waits_for_the_autoscaler_and_times_out_naming_it(
    reported_gpu_node_type: None, session_hub: Any, tmp_path: Path
) -> None:
    import ray

    from orchestrator.events.publish import RaySink
    from orchestrator.execution.pool import WorkerPool
    from orchestrator.execution.ray import RayExecutor
    from orchestrator.lifecycle import RunState
    from orchestrator.run.driver import execute_run, new_run
    from tests.synthetic import ar1_ohlcv

    data = tmp_path / "bars.csv"
    ar1_ohlcv(800, seed=3).to_csv(data, index=False)
    config = config_from_mapping(
        {
            "data": str(data),
            "reports_dir": str(tmp_path / "reports"),
            "executor": "ray",
            "min_samples": 300,
            "folds": 2,
            "lookback": 10,
            "epochs": 1,
            "cpus_per_fold": 1,
            "gpus_per_fold": 1,
            "placement_timeout_s": 1,
            "prediction_deltas": False,
        }
    )
    pool = WorkerPool()
    run = new_run(config)
    try:
        started = time.monotonic()
        execute_run(run, RaySink(session_hub), RayExecutor(pool))
        elapsed = time.monotonic() - started
    finally:
        pool.shutdown()
    assert run.state is RunState.FAILED
    assert run.error is not None
    assert "no node of the Ray cluster can host" not in run.error  # not rejected at once
    assert "was not up after" in run.error and "placement_timeout_s=1" in run.error, run.error
    assert "the autoscaler did not provide a node of type gpu.1x in time" in run.error, run.error
    assert elapsed < 15
    events = bodies(ray.get(session_hub.run_events.remote(run.run_id), timeout=30))
    notices = [e for e in events if e["type"] == "notification" and e["kind"] == "autoscaling"]
    assert len(notices) == 1 and "gpu.1x" in notices[0]["message"], notices
    assert events[-1]["type"] == "training_error" and events[-1]["error"] == run.error
    assert pool.idle_count() == 0  # the actors that never got a place were not kept


def test_the_job_queue_counts_the_node_types_an_autoscaler_may_still_add(
    reported_gpu_node_type: None,
) -> None:
    from orchestrator.errors import ConfigError
    from orchestrator.jobs.admission import ask_of, default_capacity
    from orchestrator.jobs.queue import JobQueue

    queue = JobQueue(default_capacity, aging_s=None)
    started: list[tuple[str, int]] = []
    gpu_run = config_from_mapping({"gpus_per_fold": 1, "folds": 5})
    queue.check(ask_of(gpu_run))  # no live node has a GPU; the reported node type has one
    queue.put("gpu-run", 0, ask_of(gpu_run), lambda slots: started.append(("gpu-run", slots)))
    assert started == [("gpu-run", 2)]  # two gpu.1x nodes may still be added, a GPU each
    queue.put("gpu-run-2", 0, ask_of(gpu_run), lambda slots: started.append(("gpu-run-2", slots)))
    assert started == [("gpu-run", 2)]
    assert (
        queue.describe()["queue"][0]["reason"] == "waiting for GPU: a fold needs gpus_per_fold=1, 0 GPU free"
    )
    with pytest.raises(
        ConfigError, match=r"the node with the most GPU \(node type gpu.1x\) has CPU 2, GPU 1"
    ):
        queue.check(ask_of(config_from_mapping({"gpus_per_fold": 2})))
    queue.close()
