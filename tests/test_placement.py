"""Where a fold can run and how many at a time: pure functions of plain resource dicts.

No Ray instance is needed. On an autoscaling cluster the node types an autoscaler may add count,
not only the live nodes.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from ray._private.state import GlobalState

from orchestrator.errors import ConfigError
from orchestrator.execution.placement import (
    ClusterView,
    NodeGroup,
    Placement,
    ResourceShape,
    combined_fold_cap,
    concurrency_limit,
    fold_placement,
    node_groups_from_cluster_config,
    node_groups_from_launcher_config,
    placement_timeout_message,
    reachable_resources,
    scale_up_types,
)
from tests.ray_helpers import cluster_config

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30

HEAD = {"CPU": 4.0, "GPU": 0.0, "memory": 16.0 * GIB}
ONE_GPU = NodeGroup("gpu.1x", {"CPU": 4.0, "GPU": 1.0, "memory": 12.0 * GIB}, max_count=4)
FOUR_GPU = NodeGroup("gpu.4x", {"CPU": 48.0, "GPU": 4.0, "memory": 150.0 * GIB}, max_count=2)
AUTOSCALING = ClusterView(live_nodes=(HEAD,), node_groups=(ONE_GPU, FOUR_GPU))


def shape(cpus: float = 1, gpus: float = 0, memory_mb: int | None = None) -> ResourceShape:
    return ResourceShape(cpus, gpus, memory_mb * 2**20 if memory_mb else None)


# ---- where one fold can run ------------------------------------------------------------------


def test_a_live_node_that_fits_needs_no_scale_up() -> None:
    assert fold_placement(shape(cpus=2), AUTOSCALING) is Placement.LIVE_NODE
    gpu_up = ClusterView(live_nodes=(HEAD, ONE_GPU.resources), node_groups=(ONE_GPU,))
    assert fold_placement(shape(gpus=0.5), gpu_up) is Placement.LIVE_NODE


def test_a_gpu_fold_with_no_gpu_node_up_waits_for_a_node_type_that_fits() -> None:
    assert fold_placement(shape(gpus=0.5), AUTOSCALING) is Placement.AFTER_SCALE_UP
    assert scale_up_types(shape(gpus=0.5), AUTOSCALING) == ["gpu.1x", "gpu.4x"]
    # Two GPUs per fold: only the four-GPU type can host one.
    assert fold_placement(shape(gpus=2), AUTOSCALING) is Placement.AFTER_SCALE_UP
    assert scale_up_types(shape(gpus=2), AUTOSCALING) == ["gpu.4x"]
    unlimited = ClusterView((HEAD,), (NodeGroup("gpu", {"CPU": 8, "GPU": 1}, max_count=-1),))
    assert fold_placement(shape(gpus=1), unlimited) is Placement.AFTER_SCALE_UP
    with pytest.raises(ConfigError, match=r"gpu \(no limit\): \{'CPU': 8, 'GPU': 1\}"):
        fold_placement(shape(gpus=2), unlimited)


def test_a_request_no_node_type_fits_fails_naming_the_request_the_nodes_and_the_types() -> None:
    with pytest.raises(ConfigError) as caught:
        fold_placement(shape(gpus=8), AUTOSCALING)
    message = str(caught.value)
    assert message.startswith(
        "no node of the Ray cluster can host a fold with cpus_per_fold=1, gpus_per_fold=8"
    ), message
    assert "its live nodes have [{'CPU': 4, 'GPU': 0}]" in message, message
    assert "gpu.1x (up to 4 nodes): {'CPU': 4, 'GPU': 1}" in message, message
    assert "gpu.4x (up to 2 nodes): {'CPU': 48, 'GPU': 4}" in message, message


def test_every_resource_of_the_fold_must_fit_on_one_node_type() -> None:
    # 20 GiB per fold: the one-GPU type has the GPU but not the memory; the four-GPU type has both.
    assert scale_up_types(shape(gpus=1, memory_mb=20 * 1024), AUTOSCALING) == ["gpu.4x"]
    with pytest.raises(ConfigError, match=r"memory_per_fold_mb=204800.*'memory_mb': 12288"):
        fold_placement(shape(gpus=1, memory_mb=200 * 1024), AUTOSCALING)
    with pytest.raises(ConfigError, match=r"gpu\.4x \(up to 2 nodes\): \{'CPU': 48, 'GPU': 4\}"):
        fold_placement(shape(cpus=64, gpus=1), AUTOSCALING)


def test_a_node_type_the_autoscaler_may_not_add_does_not_count() -> None:
    frozen = ClusterView((HEAD,), (NodeGroup("gpu.1x", {"CPU": 4, "GPU": 1}, max_count=0),))
    with pytest.raises(ConfigError, match=r"gpu\.1x \(up to 0 nodes\)"):
        fold_placement(shape(gpus=1), frozen)
    with pytest.raises(ConfigError, match="the autoscaler has no node types to add"):
        fold_placement(shape(gpus=1), ClusterView((HEAD,), ()))


def test_without_node_types_only_the_live_nodes_count() -> None:
    with pytest.raises(ConfigError) as caught:
        fold_placement(shape(gpus=1), ClusterView((HEAD, HEAD)))
    message = str(caught.value)
    assert "live nodes have [{'CPU': 4, 'GPU': 0}, {'CPU': 4, 'GPU': 0}]" in message, message
    assert "no autoscaler node types are known" in message, message
    assert "ray_bootstrap_config.yaml" in message, message


# ---- how many folds at a time ----------------------------------------------------------------


def test_reachable_resources_are_what_the_node_types_scale_to() -> None:
    reach = reachable_resources(AUTOSCALING)
    assert reach["GPU"] == 4 * 1 + 2 * 4
    assert reach["CPU"] == 4 * 4 + 2 * 48  # more than the head's 4
    capped = ClusterView((HEAD,), (ONE_GPU, FOUR_GPU), max_resources={"GPU": 6})
    assert reachable_resources(capped)["GPU"] == 6
    unlimited = ClusterView((HEAD,), (NodeGroup("gpu", {"GPU": 1}, max_count=-1),))
    assert reachable_resources(unlimited)["GPU"] == math.inf
    # More live than the node types could add (a bigger head): the live count stands.
    assert reachable_resources(ClusterView(({"CPU": 64},), (ONE_GPU,)))["CPU"] == 64


def test_reachable_resources_without_node_types_are_the_live_totals() -> None:
    view = ClusterView(({"CPU": 2.0}, {"CPU": 2.0, "GPU": 1.0}))
    assert reachable_resources(view) == {"CPU": 4.0, "GPU": 1.0}


def test_reachable_resources_agree_with_rays_own_computation() -> None:
    config = cluster_config(
        [
            ("gpu.1x", {"CPU": 4, "GPU": 1}, 4),
            ("gpu.4x", {"CPU": 48, "GPU": 4}, 2),
            ("cpu", {"CPU": 16}, 0),
        ]
    )
    config.max_resources["CPU"] = 100
    groups, caps = node_groups_from_cluster_config(config)
    reach = reachable_resources(ClusterView((), groups, caps))
    assert reach["CPU"] == 100 and reach["GPU"] > 0  # the CPU cap applies; GPUs are reachable
    for key in ("CPU", "GPU"):
        # A static method of Ray's GlobalState: pure, no Ray instance needed.
        assert reach[key] == GlobalState._calculate_max_resource_from_cluster_config(config, key)


def test_concurrency_counts_the_gpus_the_cluster_can_scale_to() -> None:
    live_only = reachable_resources(ClusterView((HEAD,)))
    assert concurrency_limit(shape(gpus=0.5), live_only, n_folds=8, max_concurrent=None) == 1
    reach = reachable_resources(AUTOSCALING)
    assert concurrency_limit(shape(gpus=0.5), reach, n_folds=8, max_concurrent=None) == 8
    assert concurrency_limit(shape(gpus=0.5), reach, n_folds=40, max_concurrent=None) == 24
    assert concurrency_limit(shape(gpus=0.5), reach, n_folds=8, max_concurrent=3) == 3
    unlimited = {"CPU": math.inf, "GPU": math.inf}
    assert concurrency_limit(shape(gpus=1), unlimited, n_folds=5, max_concurrent=None) == 5


def test_concurrency_packs_fractional_gpus_exactly() -> None:
    # 1.0 // 0.1 == 9.0 in floating point; ten folds of 0.1 GPU fit on one GPU.
    totals = {"CPU": 16.0, "GPU": 1.0}
    assert concurrency_limit(shape(gpus=0.1), totals, n_folds=12, max_concurrent=None) == 10
    assert concurrency_limit(shape(cpus=32), totals, n_folds=4, max_concurrent=None) == 1


# ---- where the node types come from ----------------------------------------------------------


def test_node_groups_from_the_cluster_config_an_autoscaler_reports() -> None:
    config = cluster_config([("gpu.1x", {"CPU": 4, "GPU": 1}, 4), ("any", {"CPU": 2}, -1)])
    config.max_resources["GPU"] = 3
    groups, caps = node_groups_from_cluster_config(config)
    assert groups == (
        NodeGroup("gpu.1x", {"CPU": 4.0, "GPU": 1.0}, 4),
        NodeGroup("any", {"CPU": 2.0}, -1),
    )
    assert caps == {"GPU": 3.0}


def test_node_groups_from_the_projects_cluster_yaml() -> None:
    launcher = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    groups = node_groups_from_launcher_config(launcher)
    head = launcher["head_node_type"]
    assert head not in {g.name for g in groups}  # never added: it is the head
    by_name = {g.name: g for g in groups}
    for name, spec in launcher["available_node_types"].items():
        if name != head:
            assert by_name[name].max_count == spec["max_workers"]
            assert by_name[name].resources == {k: float(v) for k, v in spec["resources"].items()}
    view = ClusterView((launcher["available_node_types"][head]["resources"],), groups)
    assert fold_placement(shape(gpus=0.25), view) is Placement.AFTER_SCALE_UP
    with pytest.raises(ConfigError, match="gpus_per_fold=5"):
        fold_placement(shape(gpus=5), view)


def test_launcher_node_type_counts_default_to_and_are_capped_by_the_cluster_max() -> None:
    launcher = {
        "max_workers": 3,
        "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 2}, "max_workers": 0},
            "open": {"resources": {"CPU": 4, "GPU": 1}},
            "big": {"resources": {"GPU": 8}, "max_workers": 10},
            "off": {"resources": {"GPU": 1}, "max_workers": 0},
            "bare": {"max_workers": 1},
        },
    }
    assert node_groups_from_launcher_config(launcher) == (
        NodeGroup("open", {"CPU": 4.0, "GPU": 1.0}, 3),
        NodeGroup("big", {"GPU": 8.0}, 3),
        NodeGroup("off", {"GPU": 1.0}, 0),
        NodeGroup("bare", {}, 1),
    )


def test_the_placement_timeout_names_the_autoscaler_when_a_new_node_was_awaited() -> None:
    free = {"CPU": 3.0}
    plain = placement_timeout_message(0, 61.4, 60, shape(gpus=0.5), free, [])
    assert plain == (
        "the worker of fold 0 was not up after 61 s (placement_timeout_s=60): each fold needs "
        "cpus_per_fold=1, gpus_per_fold=0.5 and the cluster has {'CPU': 3, 'GPU': 0} free"
    )
    scaled = placement_timeout_message(0, 61.4, 60, shape(gpus=0.5), free, ["gpu.1x", "gpu.4x"])
    assert scaled.startswith(plain)
    assert "the autoscaler did not provide a node of type gpu.1x or gpu.4x in time" in scaled
    assert "raise placement_timeout_s" in scaled


def test_runs_in_one_call_may_use_the_sum_of_their_fold_caps_unless_one_has_none() -> None:
    assert combined_fold_cap([2, 3]) == 5
    assert combined_fold_cap([2] * 3) == 6  # an HPO batch of three trials of one config
    assert combined_fold_cap([2, None]) is None
    assert combined_fold_cap([None]) is None
