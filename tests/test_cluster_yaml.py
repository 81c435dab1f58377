"""``cluster.yaml``: Ray's own validator accepts it offline and rejects broken copies, and the
cluster has the shape ``docs/cluster.md`` describes (a CPU head, a one-GPU and a multi-GPU worker
type, token auth on every node, this project installed at the head's version).

``prepare_config`` merges the config with Ray's bundled AWS defaults (a YAML file read from the
installed package) and ``validate_config`` checks it against Ray's JSON schema: neither needs
boto3, cloud credentials or the network. What ``ray up`` does next (``bootstrap_aws``: IAM role,
key pair, subnets, security group, AMI lookup) calls AWS and is not exercised here.
"""

from __future__ import annotations

import copy
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO_ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO_ROOT / "cluster.yaml"

# (vCPUs, GPUs) of the EC2 instance types the config may use, from AWS's instance specs: the
# resources a node type declares (what the autoscaler plans with, and what Ray advertises on the
# node) must not promise more than the hardware has.
INSTANCE_SPECS: dict[str, tuple[int, int]] = {
    "m6i.2xlarge": (8, 0),
    "m6i.4xlarge": (16, 0),
    "g5.xlarge": (4, 1),
    "g5.2xlarge": (8, 1),
    "g5.12xlarge": (48, 4),
    "g5.48xlarge": (192, 8),
    "p4d.24xlarge": (96, 8),
}

Config = dict[str, Any]


@pytest.fixture
def raw_config() -> Config:
    loaded = yaml.safe_load(CLUSTER_YAML.read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def prepared(raw_config: Config, no_network: None) -> Config:
    config = prepare_config(raw_config)
    validate_config(config)
    return config


def _node_types(config: Config) -> dict[str, Config]:
    node_types = config["available_node_types"]
    assert isinstance(node_types, dict)
    return node_types


def _worker_types(config: Config) -> dict[str, Config]:
    return {name: t for name, t in _node_types(config).items() if name != config["head_node_type"]}


def _all_commands(config: Config) -> list[str]:
    keys = (
        "initialization_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    )
    return [cmd for key in keys for cmd in config[key]]


def _ray_start_commands(config: Config) -> list[str]:
    starts = [
        cmd
        for key in ("head_start_ray_commands", "worker_start_ray_commands")
        for cmd in config[key]
        if "ray start" in cmd
    ]
    assert starts, "no `ray start` in head_start_ray_commands / worker_start_ray_commands"
    return starts


# --- Ray's validator -----------------------------------------------------------------------


def test_ray_validator_accepts_it_offline(prepared: Config) -> None:
    assert prepared["provider"]["type"] == "aws"
    assert prepared["provider"]["region"]
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_no_command_is_inherited_from_rays_aws_defaults(prepared: Config) -> None:
    # prepare_config fills every top-level key the file omits from Ray's aws/defaults.yaml,
    # whose setup commands install a nightly Ray wheel; the file must set all of them itself.
    assert not [cmd for cmd in _all_commands(prepared) if "ray-wheels" in cmd]
    assert not [cmd for cmd in _all_commands(prepared) if "tensorflow" in cmd]


def _drop_worker_node_config(config: Config) -> None:
    next(iter(_worker_types(config).values())).pop("node_config")


def _negative_max_workers(config: Config) -> None:
    config["max_workers"] = -1


def _unknown_top_level_key(config: Config) -> None:
    config["max_wokers"] = 3


def _fractional_gpu_resource(config: Config) -> None:
    next(iter(_worker_types(config).values()))["resources"]["GPU"] = 0.5


def _head_type_not_defined(config: Config) -> None:
    config["head_node_type"] = "no.such.type"


def _min_workers_above_global_max(config: Config) -> None:
    next(iter(_worker_types(config).values()))["min_workers"] = config["max_workers"] + 1


@pytest.mark.parametrize(
    ("breakage", "error", "message"),
    [
        pytest.param(breakage, error, message, id=breakage.__name__.strip("_"))
        for breakage, error, message in [
            (_drop_worker_node_config, jsonschema.ValidationError, "'node_config' is a required"),
            (_negative_max_workers, jsonschema.ValidationError, "less than the minimum of 0"),
            (_unknown_top_level_key, jsonschema.ValidationError, "'max_wokers' was unexpected"),
            (_fractional_gpu_resource, jsonschema.ValidationError, "is not of type 'integer'"),
            (_head_type_not_defined, ValueError, "head_node_type"),
            (_min_workers_above_global_max, ValueError, "sum of `min_workers`"),
        ]
    ],
)
def test_ray_validator_rejects_a_broken_copy(
    raw_config: Config,
    no_network: None,
    breakage: Callable[[Config], None],
    error: type[Exception],
    message: str,
) -> None:
    broken = copy.deepcopy(raw_config)
    breakage(broken)
    with pytest.raises(error, match=re.escape(message)):
        validate_config(prepare_config(broken))


# --- the cluster's shape -------------------------------------------------------------------


def test_head_is_a_cpu_node_that_never_takes_a_gpu_fold(prepared: Config) -> None:
    head = _node_types(prepared)[prepared["head_node_type"]]
    assert head["resources"]["GPU"] == 0
    assert head["resources"]["CPU"] >= 1
    assert head["max_workers"] == 0


def test_one_single_gpu_and_one_multi_gpu_worker_type(prepared: Config) -> None:
    gpus = [t["resources"].get("GPU", 0) for t in _worker_types(prepared).values()]
    assert len([g for g in gpus if g > 0]) >= 2, gpus
    assert 1 in gpus, gpus
    assert max(gpus) >= 2, gpus


def test_worker_types_autoscale_from_zero_within_the_global_bound(raw_config: Config) -> None:
    # Read from the file, not the prepared config, which fills missing bounds with defaults.
    # Ray's schema does not bound a node type's max_workers (a negative one passes), so the
    # bounds are checked here.
    for name, node_type in _worker_types(raw_config).items():
        assert "min_workers" in node_type and "max_workers" in node_type, name
        assert node_type["min_workers"] == 0, f"{name}: idle GPU nodes cost money"
        assert 1 <= node_type["max_workers"] <= raw_config["max_workers"], name
    assert raw_config["idle_timeout_minutes"] > 0


def test_declared_resources_match_the_instance_type(prepared: Config) -> None:
    node_types = _node_types(prepared)
    assert prepared["head_node_type"] in node_types and _worker_types(prepared), sorted(node_types)
    for name, node_type in node_types.items():
        instance = node_type["node_config"]["InstanceType"]
        assert instance in INSTANCE_SPECS, f"{name}: add {instance}'s vCPUs and GPUs to the table"
        vcpus, gpus = INSTANCE_SPECS[instance]
        assert set(node_type["resources"]) >= {"CPU", "GPU"}, name
        assert 1 <= node_type["resources"]["CPU"] <= vcpus, name
        assert node_type["resources"]["GPU"] == gpus, name
        assert node_type["node_config"]["ImageId"].startswith("ami-"), name


def test_setup_installs_this_checkout_on_every_node(prepared: Config) -> None:
    mounted = [remote for remote, local in prepared["file_mounts"].items() if local == "."]
    assert len(mounted) == 1, prepared["file_mounts"]
    remote_dir = mounted[0]
    # `ray up` runs from the repository root, where "." is this project.
    assert 'name = "forecast-orchestrator"' in (REPO_ROOT / "pyproject.toml").read_text()
    for key in ("head_setup_commands", "worker_setup_commands"):
        installs = [c for c in prepared[key] if "pip install" in c and f"-e {remote_dir}" in c]
        assert installs, f"{key} never installs {remote_dir}"


def test_cluster_ray_is_pinned_to_the_ray_that_launches_it(prepared: Config) -> None:
    pins = {
        pin
        for cmd in prepared["head_setup_commands"] + prepared["worker_setup_commands"]
        for pin in re.findall(r"ray\[default\]==([\w.]+)", cmd)
    }
    assert pins == {ray.__version__}


def test_token_auth_is_wired_as_ray_documents_it(prepared: Config) -> None:
    # The token generated locally (`ray get-auth-token --generate`) is copied to the default
    # token path of every node, and RAY_AUTH_MODE=token is set for every shell on every node.
    token_mounts = {
        remote: local
        for remote, local in prepared["file_mounts"].items()
        if remote.endswith("/.ray/auth_token")
    }
    assert list(token_mounts.values()) == ["~/.ray/auth_token"], prepared["file_mounts"]
    assert [c for c in prepared["initialization_commands"] if "export RAY_AUTH_MODE=token" in c]
    for cmd in _ray_start_commands(prepared):
        assert "RAY_AUTH_MODE=token ray start" in cmd, cmd


def test_start_commands_keep_the_dashboard_on_loopback(prepared: Config) -> None:
    (head_start,) = [c for c in prepared["head_start_ray_commands"] if "ray start" in c]
    assert "--head" in head_start and "--port=6379" in head_start
    assert "--dashboard-host=127.0.0.1" in head_start
    (worker_start,) = [c for c in prepared["worker_start_ray_commands"] if "ray start" in c]
    assert "--address=$RAY_HEAD_IP:6379" in worker_start
