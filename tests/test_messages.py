"""The wire contract: the committed schema is current and matches the seed's field names."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError

from orchestrator.messages import (
    EPOCH_METRIC_FIELDS,
    EpochMetrics,
    TrainingError,
    message_json_schema,
    parse_message,
    sanitize,
    to_wire,
)

ROOT = Path(__file__).resolve().parents[1]

# Field names of the seed (websocket-message-schema.md), binding for the core types.
SEED_FIELDS = {
    "dataset_ready": {"type", "size", "min_samples"},
    "training_start": {"type", "use_cv", "total_folds", "total_epochs"},
    "epoch_metrics": {
        "type",
        "fold_id",
        "epoch",
        "train_loss",
        "train_nll",
        "train_bce",
        "train_brier",
        "val_loss",
        "val_nll",
        "val_bce",
        "val_brier",
        "val_auc",
        "DirAcc",
        "ECE",
        "MZ_intercept",
        "MZ_slope",
        "MZ_F_p",
        "PIT_KS_p",
        "conformal_coverage",
        "conformal_width",
        "elapsed_seconds",
    },
    "fold_complete": {
        "type",
        "fold_id",
        "predictions_path",
        "calibration_method",
        "calibration_warning",
        "coverage_warning",
    },
    "training_complete": {"type", "folds_completed", "summary_path"},
    "training_error": {"type", "error"},
    "prediction_delta": {"type", "fold_id", "epoch", "predictions"},
}


def test_committed_schema_is_current() -> None:
    committed = json.loads((ROOT / "docs" / "ws-schema.json").read_text())
    assert committed == json.loads(json.dumps(message_json_schema())), (
        "docs/ws-schema.json is stale: run `make schema`"
    )


def test_seed_fields_are_all_required_in_schema() -> None:
    defs = message_json_schema()["$defs"]
    by_type = {
        d["properties"]["type"]["const"]: d for d in defs.values() if "type" in d.get("properties", {})
    }
    assert SEED_FIELDS and set(SEED_FIELDS) <= set(by_type), set(SEED_FIELDS) - set(by_type)
    for kind, fields in SEED_FIELDS.items():
        props = set(by_type[kind]["properties"])
        assert fields <= props, f"{kind} lacks {fields - props}"
        required = set(by_type[kind].get("required", []))
        assert fields - {"type"} <= required | {"type"}, f"{kind}: seed fields must be required"


def test_seed_examples_validate() -> None:
    schema = message_json_schema()
    jsonschema.validate({"type": "dataset_ready", "size": 10000, "min_samples": 2048}, schema)
    jsonschema.validate({"type": "training_error", "error": "RuntimeError: CUDA out of memory"}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"type": "dataset_ready", "size": "big", "min_samples": 2048}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"type": "no_such_type"}, schema)


def test_nan_becomes_null_on_the_wire() -> None:
    values = {name: float("nan") for name in EPOCH_METRIC_FIELDS}
    message = EpochMetrics(fold_id=0, epoch=1, elapsed_seconds=1.0, **values)
    wire = to_wire(message)
    assert all(wire[name] is None for name in EPOCH_METRIC_FIELDS)
    json.dumps(wire, allow_nan=False)
    assert sanitize({"a": [float("inf"), 1.0]}) == {"a": [None, 1.0]}


def test_parse_rejects_wrong_types_and_unknown_fields() -> None:
    assert isinstance(parse_message({"type": "training_error", "error": "x"}), TrainingError)
    with pytest.raises(ValidationError):
        parse_message({"type": "training_error"})
    with pytest.raises(ValidationError):
        parse_message({"type": "training_error", "error": "x", "surprise": 1})
    assert parse_message('{"type": "pong"}').type == "pong"  # type: ignore[attr-defined]


def test_shared_compiled_validator_rejects_what_the_schema_rejects() -> None:
    from tests.wire import validate_wire

    validate_wire({"type": "training_complete", "folds_completed": 2, "summary_path": "s.json"})
    with pytest.raises(jsonschema.ValidationError):
        validate_wire({"type": "training_complete", "folds_completed": "two", "summary_path": "s.json"})
