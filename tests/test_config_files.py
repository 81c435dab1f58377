"""Issue 24, kind 2: a key written twice in a YAML or JSON config is refused with both lines; every
number of a config is finite.

PyYAML (and json) keep the last of two equal keys (rbgirshick/yacs#17): ``dup_keys.yaml`` trained
with the ``lr`` and ``hidden`` the user meant to retire.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.responses import JSONResponse
from starlette.requests import Request

from api.bodies import json_object_body
from orchestrator.config import TrainConfig, config_from_mapping, load_config_file, parse_json, parse_yaml
from orchestrator.console.main import main
from orchestrator.errors import ConfigError
from orchestrator.hpo.space import load_search_space

CASES = Path(__file__).parent / "data" / "cases"


def test_the_case_config_is_refused_naming_each_key_and_both_lines() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config_file(CASES / "dup_keys.yaml")
    message = str(caught.value)
    assert "dup_keys.yaml: keys written twice in one mapping" in message
    assert "'lr' (line 5: 'lr: 0.0003'; line 8: 'lr: 0.01')" in message
    assert "'hidden' (line 6: 'hidden: 32'; line 9: 'hidden: 128')" in message


def test_the_case_through_train_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["train", "--executor", "local", "--config", str(CASES / "dup_keys.yaml")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: config file") and "'lr' (line 5" in err


def test_a_json_config_and_a_search_space_with_a_key_twice_are_refused(tmp_path: Path) -> None:
    # Other members of the kind: JSON (where json.loads keeps the last too), a nested mapping of a
    # search space, and two keys on one line of a flow mapping.
    config = tmp_path / "run.json"
    config.write_text('{\n  "folds": 2,\n  "epochs": 3,\n  "epochs": 30\n}\n')
    with pytest.raises(ConfigError, match=r"'epochs' \(line 3: '\"epochs\": 3,'; line 4: '\"epochs\": 30'\)"):
        load_config_file(config)
    space = tmp_path / "space.yaml"
    space.write_text("lr: {type: float, low: 1.0e-4, high: 1.0e-2, low: 1.0e-3}\n")
    with pytest.raises(
        ConfigError, match=r"search space file .*space.yaml: key written twice .*'low' \(twice on line 1"
    ):
        load_search_space(space)


def test_yaml_merge_keys_may_still_override_and_unique_keys_load() -> None:
    text = "base: &b {lr: 0.001, hidden: 32}\nrun:\n  <<: *b\n  hidden: 64\n"
    assert parse_yaml(text, "t")["run"] == {"lr": 0.001, "hidden": 64}
    assert parse_json(json.dumps({"a": {"x": 1}, "b": {"x": 2}}), "t") == {"a": {"x": 1}, "b": {"x": 2}}


def test_enqueue_and_rest_bodies_refuse_a_key_twice() -> None:
    with pytest.raises(ConfigError, match=r"--enqueue .*key written twice in one mapping: 'lr'"):
        parse_json('{"lr": 0.001, "lr": 0.01}', "--enqueue '...'")

    async def body(raw: bytes) -> Any:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": raw, "more_body": False}

        return await json_object_body(
            Request({"type": "http", "method": "POST", "headers": []}, receive), "x"
        )

    refused = asyncio.run(body(b'{"epochs": 3,\n "epochs": 30}'))
    assert isinstance(refused, JSONResponse) and refused.status_code == 400
    assert "key written twice in one mapping: 'epochs' (line 1" in json.loads(bytes(refused.body))["error"]
    assert asyncio.run(body(b'{"epochs": 3}')) == {"epochs": 3}


@pytest.mark.parametrize(
    "text", ["w_nll: .inf", "w_bce: .inf", "w_brier: -.inf", "w_nll: .nan", "placement_timeout_s: .inf"]
)
def test_non_finite_numbers_are_refused_at_validation(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text + "\n")
    field = text.split(":")[0]
    with pytest.raises(ConfigError, match=rf"invalid config: {field}: .*finite number"):
        config_from_mapping(load_config_file(path))


def test_finite_weights_still_pass() -> None:
    config = config_from_mapping({"w_nll": 2.5, "w_bce": 0.0, "w_brier": 1e-3})
    assert isinstance(config, TrainConfig) and config.w_nll == 2.5
