"""The AsyncAPI 3.0 document of /ws: valid against the official schema, built from the models,
and the committed docs/asyncapi.yaml is current."""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from orchestrator.asyncapi import API_VERSION, asyncapi_document, asyncapi_yaml
from orchestrator.console.main import main
from orchestrator.messages import (
    ENVELOPE_FIELDS,
    HEAVY_TYPES,
    MESSAGE_MODELS,
    MESSAGE_TYPES,
    TERMINAL_TYPES,
    Pong,
)

ROOT = Path(__file__).resolve().parents[1]
SPEC = json.loads((ROOT / "tests" / "data" / "asyncapi-3.0.0.schema.json").read_text())
REFS = "#/components/schemas/{model}"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return asyncapi_document()


def resolve(document: dict[str, Any], ref: str) -> Any:
    """The node ``ref`` points at, following a chain of references."""
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    if isinstance(node, dict) and set(node) == {"$ref"}:
        return resolve(document, node["$ref"])
    return node


def refs_in(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for value in node.values() for r in refs_in(value)]
    if isinstance(node, list):
        return [r for item in node for r in refs_in(item)]
    return []


def payload_of(document: dict[str, Any], kind: str) -> dict[str, Any]:
    payload: dict[str, Any] = resolve(document, f"#/channels/ws/messages/{kind}")["payload"]
    return resolve(document, payload["$ref"]) if "$ref" in payload else payload


def test_document_is_valid_asyncapi_3(document: dict[str, Any]) -> None:
    validator = jsonschema.Draft7Validator(SPEC)
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(document)]
    assert not errors, errors[:5]
    assert document["asyncapi"] == "3.0.0"


def test_the_official_schema_rejects_a_broken_document(document: dict[str, Any]) -> None:
    validator = jsonschema.Draft7Validator(SPEC)
    broken = copy.deepcopy(document)
    broken["operations"]["sendPing"]["action"] = "publish"  # AsyncAPI 2 wording
    assert not validator.is_valid(broken)
    broken = copy.deepcopy(document)
    del broken["servers"]["local"]["protocol"]
    assert not validator.is_valid(broken)


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    refs = refs_in(document)
    assert len(refs) > len(MESSAGE_TYPES) * 3
    for ref in refs:
        resolve(document, ref)


def test_every_message_type_has_its_models_json_schema(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert MESSAGE_TYPES and set(MESSAGE_MODELS) == set(MESSAGE_TYPES)
    models: list[tuple[str, type[BaseModel]]] = [*MESSAGE_MODELS.items(), ("pong", Pong)]
    nested_names: set[str] = set()
    for kind, model in models:
        expected = model.model_json_schema(mode="serialization", ref_template=REFS)
        nested = expected.pop("$defs", {})
        assert payload_of(document, kind) == expected, kind
        for name, schema in nested.items():
            assert schemas[name] == schema, name
        nested_names |= set(nested)
    assert {"PredictionRow", "Candle"} <= nested_names


def test_server_messages_carry_the_envelope_and_their_tags(document: dict[str, Any]) -> None:
    messages = document["components"]["messages"]
    # Both sides of each tag check occur: some types are heavy or terminal, some are not.
    assert set(MESSAGE_TYPES) <= set(messages)
    assert set(HEAVY_TYPES) < set(MESSAGE_TYPES) and HEAVY_TYPES
    assert set(TERMINAL_TYPES) < set(MESSAGE_TYPES) and TERMINAL_TYPES
    for kind in MESSAGE_TYPES:
        assert set(ENVELOPE_FIELDS) <= set(payload_of(document, kind)["properties"]), kind
        tags = {tag["name"] for tag in messages[kind]["tags"]}
        assert ("heavy" in tags) == (kind in HEAVY_TYPES) and ("core" in tags) != (kind in HEAVY_TYPES)
        assert ("terminal" in tags) == (kind in TERMINAL_TYPES), kind


def test_operations_receive_server_messages_and_send_ping(document: dict[str, Any]) -> None:
    ops = document["operations"]
    receive = ops["receiveServerMessages"]
    assert receive["action"] == "receive" and receive["channel"] == {"$ref": "#/channels/ws"}
    received = [ref["$ref"].rsplit("/", 1)[1] for ref in receive["messages"]]
    assert received == [*MESSAGE_TYPES, "pong"]

    send = ops["sendPing"]
    assert send["action"] == "send"
    assert send["messages"] == [{"$ref": "#/channels/ws/messages/ping"}]
    assert send["reply"]["messages"] == [{"$ref": "#/channels/ws/messages/pong"}]
    ping = resolve(document, "#/channels/ws/messages/ping")
    assert ping["contentType"] == "text/plain"
    pattern = re.compile(ping["payload"]["pattern"])
    assert all(pattern.search(text) for text in ("ping", " PiNg\n", "PING"))
    assert not any(pattern.search(text) for text in ("pong", "ping ping", '{"type":"ping"}'))


def test_server_channel_and_query_bindings(document: dict[str, Any]) -> None:
    (server,) = document["servers"].values()
    assert (server["host"], server["protocol"]) == ("127.0.0.1:8000", "ws")
    channel = document["channels"]["ws"]
    assert channel["address"] == "/ws"
    query = channel["bindings"]["ws"]["query"]
    assert query["type"] == "object"
    assert list(query["properties"]) == ["since", "run_id", "types", "token"]
    run_id = re.compile(query["properties"]["run_id"]["pattern"])
    assert run_id.match("run_20260101_120000_ab12cd") and not run_id.match("a b")
    assert run_id.match("*") and not run_id.match("**")
    assert jsonschema.Draft7Validator(query).is_valid({"since": 3, "types": "all"})
    assert not jsonschema.Draft7Validator(query).is_valid({"since": -1})


def test_version_is_the_packages() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert API_VERSION == pyproject["project"]["version"]


def test_committed_document_is_current(document: dict[str, Any]) -> None:
    committed = (ROOT / "docs" / "asyncapi.yaml").read_text()
    assert committed == asyncapi_yaml(), (
        "docs/asyncapi.yaml is stale: run `python -m orchestrator schema --asyncapi --out docs/asyncapi.yaml`"
    )
    assert yaml.safe_load(committed) == document
    assert "&id" not in committed  # no YAML anchors: every reader sees plain mappings


def test_cli_writes_the_document(tmp_path: Path) -> None:
    out = tmp_path / "asyncapi.yaml"
    assert main(["schema", "--asyncapi", "--out", str(out)]) == 0
    assert out.read_text() == asyncapi_yaml()
