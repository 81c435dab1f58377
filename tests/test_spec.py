"""The study spec: its validation, the default direction, and packing parallel trials' folds."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.config import TrainConfig, config_from_mapping
from orchestrator.errors import ConfigError
from orchestrator.hpo.space import DEFAULT_SEARCH_SPACE
from orchestrator.hpo.spec import HpoSpec, default_direction, pack_resources, spec_from_mapping


def spec(**values: Any) -> HpoSpec:
    return HpoSpec.model_validate(values)


def test_direction_follows_the_metric() -> None:
    assert default_direction("val_nll") == "minimize"
    assert default_direction("ECE") == "minimize"
    assert default_direction("val_auc") == "maximize"
    assert default_direction("DirAcc") == "maximize"
    assert default_direction("PIT_KS_p") is None
    assert spec(metric="val_auc").direction == "maximize"
    with pytest.raises(ValueError, match="direction cannot be inferred for metric='PIT_KS_p'"):
        spec(metric="PIT_KS_p")
    with pytest.raises(ValueError, match="metric must be an epoch_metrics field"):
        spec(metric="auc")


def test_spec_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="study must be"):
        spec(study="../etc")
    with pytest.raises(ValueError, match=r"enqueue\[0\]: \['depth'\] not in the search space"):
        spec(search_space={"lr": DEFAULT_SEARCH_SPACE["lr"]}, enqueue=[{"depth": 2}])
    with pytest.raises(ValueError, match=r"enqueue\[0\]: lr=5.0 is outside"):
        spec(enqueue=[{"lr": 5.0}])
    flat = spec_from_mapping({"study": "s", "trials": 3, "epochs": 4, "config": {"folds": 3}})
    assert (flat.trials, flat.config.epochs, flat.config.folds) == (3, 4, 3)
    with pytest.raises(ConfigError, match="epochs"):
        spec_from_mapping({"study": "s", "epochs": 0})


def test_spec_from_mapping_takes_a_search_space_mapping_and_reads_no_file(tmp_path: Any) -> None:
    space = {"lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True}}
    assert list(spec_from_mapping({"study": "s", "search_space": space}).distributions) == ["lr"]
    path = tmp_path / "space.yaml"
    path.write_text("lr: {type: float, low: 1e-5, high: s3cret}\n")
    answers = set()
    for given in (str(path), str(tmp_path / "none.yaml")):
        with pytest.raises(ConfigError, match="search_space must be a mapping") as err:
            spec_from_mapping({"study": "s", "search_space": given})
        answers.add(str(err.value))
    assert len(answers) == 1 and "s3cret" not in answers.pop()


def test_a_long_study_name_is_refused_without_echoing_it_whole() -> None:
    with pytest.raises(ConfigError, match=r"study must be 1-64 characters.*\(10240 characters\)") as err:
        spec_from_mapping({"study": "a" * 10_240})
    assert len(str(err.value)) < 400


def test_spec_paths_and_run_id() -> None:
    s = spec(study="s1", config=config_from_mapping({"reports_dir": "out"}))
    assert str(s.study_dir) == "out/hpo/s1" and s.study_run_id == "hpo_s1"


def test_packed_trials_without_a_queue_share_the_workers_without_shrinking() -> None:
    config = TrainConfig(folds=5, cpus_per_fold=1.0)
    assert pack_resources(config, 1, {"CPU": 2.0}, shrink=False) == {"max_concurrent_folds": 2}
    assert pack_resources(config, 2, {"CPU": 2.0}, shrink=False) == {"max_concurrent_folds": 1}
    assert pack_resources(config, 100, {"CPU": 2.0}, shrink=False) == {"max_concurrent_folds": 1}
    gpu = TrainConfig(folds=5, cpus_per_fold=1.0, gpus_per_fold=1.0)
    assert pack_resources(gpu, 100, {"CPU": 16.0, "GPU": 1.0}, shrink=False) == {"max_concurrent_folds": 1}


def test_pack_resources_gives_up_fold_concurrency_before_cpu() -> None:
    config = config_from_mapping(dict(folds=5, cpus_per_fold=1.0))
    assert pack_resources(config, 1, {"CPU": 2.0}) == {"max_concurrent_folds": 2}
    # two trials on two cores: one fold at a time each, two warm actors, no core shared
    assert pack_resources(config, 2, {"CPU": 2.0}) == {"max_concurrent_folds": 1}
    assert pack_resources(config, 2, {"CPU": 16.0}) == {}
    # more trials than cores: one fold each, the share shrunk
    assert pack_resources(config, 3, {"CPU": 2.0}) == {"max_concurrent_folds": 1, "cpus_per_fold": 0.6666}
    limited = config_from_mapping(dict(folds=4, max_concurrent_folds=1, cpus_per_fold=1.0))
    assert pack_resources(limited, 2, {"CPU": 2.0}) == {}
    gpu = config_from_mapping(dict(folds=4, gpus_per_fold=0.5, cpus_per_fold=1.0))
    assert pack_resources(gpu, 2, {"CPU": 16.0, "GPU": 2.0}) == {"gpus_per_fold": 0.25}
    with pytest.raises(ConfigError, match="do not fit"):
        pack_resources(config, 100_000, {"CPU": 2.0})
