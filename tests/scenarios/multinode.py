"""Multi-node behaviour on a simulated cluster (``ray.cluster_utils.Cluster``, fake GPUs).

Run as a script by ``tests/test_multinode.py`` (it needs its own Ray instance, apart from the
test session's). Prints one JSON object with what it observed.

Scenario ``pack``: a head without GPUs and two worker nodes with 2 CPUs and 1 (fake) GPU each;
4 folds asking 0.5 GPU run two per node; then one worker node is removed mid-run and its folds
must be retried on the remaining node; the run completes and the reports are on the driver side.
Scenario ``impossible``: a fold asking 2 GPUs on this cluster ends with a clear training_error.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from ray.util.state import list_actors  # noqa: E402

from orchestrator.config import config_from_mapping  # noqa: E402
from orchestrator.events.actor import get_or_create_hub  # noqa: E402
from orchestrator.events.publish import RaySink  # noqa: E402
from orchestrator.execution.ray import RayExecutor  # noqa: E402
from orchestrator.run.driver import execute_run, new_run  # noqa: E402
from tests.made_events import bodies  # noqa: E402
from tests.synthetic import ar1_ohlcv  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(scenario: str) -> None:
    # Its own dashboard port, and the state API asked at that address: with other Ray instances
    # on the machine (a second test suite, say), the defaults (port 8265, "the latest cluster")
    # would find someone else's.
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "num_gpus": 0, "dashboard_port": _free_port()},
    )
    workers = [cluster.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    context = ray.init(address=cluster.address, namespace="multinode", log_to_driver=False)
    state_api = f"http://{context.dashboard_url}"
    tmp = Path(tempfile.mkdtemp())
    data = tmp / "bars.csv"
    ar1_ohlcv(1500, seed=5).to_csv(data, index=False)
    common = {
        "data": str(data),
        "reports_dir": str(tmp / "reports"),
        "min_samples": 300,
        "lookback": 10,
        "folds": 4,
        "cpus_per_fold": 1,
        "prediction_deltas": False,
        "batch_size": 32,
        "max_retries": 2,
        "placement_timeout_s": 20,
    }
    out: dict[str, object] = {}
    hub = get_or_create_hub(namespace="multinode")
    if scenario == "pack":
        config = config_from_mapping({**common, "gpus_per_fold": 0.5, "epochs": 40, "patience": 100})
    else:
        config = config_from_mapping({**common, "gpus_per_fold": 2, "epochs": 2})
    run = new_run(config)
    executor = RayExecutor()
    started = time.time()
    thread = threading.Thread(target=execute_run, args=(run, RaySink(hub), executor), daemon=True)
    thread.start()

    if scenario == "pack":
        head_id = ray.get_runtime_context().get_node_id()
        placement: Counter[str] = Counter()
        deadline = time.time() + 120
        while time.time() < deadline:  # wait until all four folds have actors alive
            alive = list_actors(
                address=state_api,
                filters=[("class_name", "=", "FoldTrainer"), ("state", "=", "ALIVE")],
            )
            if len(alive) >= 4:
                placement = Counter(a["node_id"] for a in alive)
                break
            time.sleep(0.5)
        out["placement"] = sorted(placement.values())
        out["head_hosts_folds"] = head_id in placement
        # wait for epochs to flow, then remove a worker node mid-run
        deadline = time.time() + 120
        while time.time() < deadline:
            events: list[dict[str, Any]] = bodies(ray.get(hub.run_events.remote(run.run_id)))
            if sum(e["type"] == "epoch_metrics" for e in events) >= 4:
                break
            time.sleep(0.2)
        cluster.remove_node(workers[1])
        out["removed_at_epochs"] = sum(e["type"] == "epoch_metrics" for e in events)

    thread.join(timeout=300)
    events = bodies(ray.get(hub.run_events.remote(run.run_id)))
    out.update(
        {
            "state": run.state.value,
            "error": run.error,
            "seconds": time.time() - started,
            "types": Counter(e["type"] for e in events),
            "retries": [e["message"] for e in events if e.get("kind") == "fold_retry"],
            "folds_completed": sorted(e["fold_id"] for e in events if e["type"] == "fold_complete"),
            "summary_exists": bool(run.summary_path and Path(run.summary_path).is_file()),
            "hub_node_is_head": ray.get(hub.runtime_info.remote())["node_id"]
            == ray.get_runtime_context().get_node_id(),
            "duplicate_epochs": len([e for e in events if e["type"] == "epoch_metrics"])
            - len({(e["fold_id"], e["epoch"]) for e in events if e["type"] == "epoch_metrics"}),
        }
    )
    executor.shutdown()
    print(json.dumps(out), flush=True)
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
