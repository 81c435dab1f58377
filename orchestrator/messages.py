"""The wire contract: every message sent on ``/ws`` is one of these pydantic models.

This module is the only definition of a message. The JSON Schema that clients read
(``docs/ws-schema.json``, ``GET /ws/schema``) is generated from it, and a test keeps the committed
copy current. The seed's field names and types are binding; ``run_id``, ``seq`` and ``ts`` are
added by the EventHub, and a few documented extra fields are allowed (clients ignore unknown keys).

Metric fields are ``float | None``: JSON has no NaN or Infinity, so an undefined metric is ``null``.
Imports only pydantic: the API process never pulls in torch through this module.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

__all__ = [
    "Message",
    "DatasetReady",
    "TrainingStart",
    "EpochMetrics",
    "FoldComplete",
    "TrainingComplete",
    "TrainingError",
    "PredictionRow",
    "PredictionDelta",
    "BatchProgress",
    "Notification",
    "HpoTrial",
    "Candle",
    "ChartUpdate",
    "HistoryGap",
    "Pong",
    "ServerMessage",
    "MESSAGE_TYPES",
    "CORE_TYPES",
    "HEAVY_TYPES",
    "TERMINAL_TYPES",
    "RUN_TYPES",
    "START_TYPES",
    "ENVELOPE_FIELDS",
    "without_envelope",
    "MESSAGE_MODELS",
    "EPOCH_METRIC_FIELDS",
    "parse_message",
    "message_json_schema",
    "to_wire",
    "sanitize",
    "RUN_ID_PATTERN",
]

Metric = float | None


class _Envelope(BaseModel):
    """Fields the EventHub stamps on every event (absent before publishing)."""

    model_config = ConfigDict(extra="forbid")

    run_id: str | None = None
    seq: int | None = Field(None, description="per-hub monotonically increasing sequence number")
    ts: float | None = Field(None, description="unix time the hub accepted the event")


class DatasetReady(_Envelope):
    type: Literal["dataset_ready"] = "dataset_ready"
    size: int
    min_samples: int


class TrainingStart(_Envelope):
    type: Literal["training_start"] = "training_start"
    use_cv: bool
    total_folds: int
    total_epochs: int
    hpo_trial: int | None = Field(None, description="extra: Optuna trial number when run by HPO")


class EpochMetrics(_Envelope):
    type: Literal["epoch_metrics"] = "epoch_metrics"
    fold_id: int
    epoch: int
    train_loss: Metric
    train_nll: Metric
    train_bce: Metric
    train_brier: Metric
    val_loss: Metric
    val_nll: Metric
    val_bce: Metric
    val_brier: Metric
    val_auc: Metric
    DirAcc: Metric
    ECE: Metric
    MZ_intercept: Metric
    MZ_slope: Metric
    MZ_F_p: Metric
    PIT_KS_p: Metric
    conformal_coverage: Metric
    conformal_width: Metric
    elapsed_seconds: float
    MZ_F_p_hac: Metric = Field(
        None, description="extra: HAC (Newey-West) version of the MZ joint Wald test p-value"
    )
    cal_loss: Metric = Field(None, description="extra: loss on the calibration segment")


class FoldComplete(_Envelope):
    type: Literal["fold_complete"] = "fold_complete"
    fold_id: int
    predictions_path: str
    calibration_method: Literal["raw", "temperature", "isotonic", "temp_isotonic"]
    calibration_warning: str | None
    coverage_warning: str | None
    val_auc: Metric = Field(
        None, description="extra: validation AUC of the fold's model (the one in the CSV)"
    )
    best_epoch: int | None = Field(None, description="extra: the epoch of that model")
    nll_diff: Metric = Field(
        None,
        description="extra: the model's mean Gaussian NLL minus the naive forecast's (train mean and "
        "std) on the fold's validation rows; below 0 the model is better (docs/edge.md)",
    )
    dm_p: Metric = Field(
        None,
        description="extra: one-sided Diebold-Mariano p of the model against the naive forecast "
        "(log scores, Newey-West variance); small: the model is better",
    )


class TrainingComplete(_Envelope):
    type: Literal["training_complete"] = "training_complete"
    folds_completed: int
    summary_path: str


class TrainingError(_Envelope):
    type: Literal["training_error"] = "training_error"
    error: str


class PredictionRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timestamp: str
    mu: float
    sigma: float
    p_up_raw: float
    p_up_cal: float
    conformal_p: float
    pit_z: float


class PredictionDelta(_Envelope):
    """Validation predictions of a fold that changed since the fold's last delta.

    Applying a fold's deltas in order (by ``timestamp``) gives its current predictions; the
    ``final`` delta (the selected model, epoch = the best epoch) makes them equal the CSV.
    """

    type: Literal["prediction_delta"] = "prediction_delta"
    fold_id: int
    epoch: int
    predictions: list[PredictionRow]
    chunk: int = Field(0, description="extra: index of this message among the epoch's chunks")
    chunks: int = Field(1, description="extra: number of chunks for this fold and epoch")
    final: bool = Field(False, description="extra: true for the selected model's predictions")


class BatchProgress(_Envelope):
    type: Literal["batch_progress"] = "batch_progress"
    fold_id: int
    epoch: int
    batch: int
    total_batches: int
    train_loss: Metric
    samples_per_second: Metric


class Notification(_Envelope):
    type: Literal["notification"] = "notification"
    level: Literal["info", "warning", "error"]
    kind: str = Field(description="machine-readable category, e.g. progress, best_auc, fold_retry")
    message: str
    fold_id: int | None = None
    attempt: int | None = Field(
        None, description="extra: for fold_retry, the attempt about to start (1 = the first try)"
    )


class HpoTrial(_Envelope):
    type: Literal["hpo_trial"] = "hpo_trial"
    study: str
    trial: int
    state: Literal["running", "complete", "pruned", "failed", "study_complete"]
    params: dict[str, Any]
    value: Metric = None
    duration_seconds: Metric = None
    best_value: Metric = None
    best_params: dict[str, Any] | None = None
    trials_done: int
    trials_total: int
    trial_run_id: str | None = None
    error: str | None = Field(
        None, description="extra: why a failed trial failed (its run's error), else null"
    )


class Candle(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timestamp: str
    open: float
    high: float
    low: float
    close: float
    volume: float


class ChartUpdate(_Envelope):
    type: Literal["chart_update"] = "chart_update"
    candles: list[Candle]


class HistoryGap(_Envelope):
    """Sent to a resuming client when the hub's history no longer covers ``requested_since``."""

    type: Literal["history_gap"] = "history_gap"
    requested_since: int
    oldest_available: int
    message: str


class Pong(BaseModel):
    """The answer to a text ``ping`` from a client."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["pong"] = "pong"


Message = Annotated[
    DatasetReady
    | TrainingStart
    | EpochMetrics
    | FoldComplete
    | TrainingComplete
    | TrainingError
    | PredictionDelta
    | BatchProgress
    | Notification
    | HpoTrial
    | ChartUpdate
    | HistoryGap,
    Field(discriminator="type"),
]
ServerMessage = Annotated[Message | Pong, Field(union_mode="left_to_right")]

_MESSAGE_ADAPTER: TypeAdapter[Any] = TypeAdapter(Message)
_SERVER_ADAPTER: TypeAdapter[Any] = TypeAdapter(ServerMessage)


def _union_members(union: Any) -> tuple[type[BaseModel], ...]:
    """The model classes of an ``Annotated[Union[...], ...]`` message union, in declared order."""
    return tuple(get_args(get_args(union)[0]))


def _type_of(model: type[BaseModel]) -> str:
    default = model.model_fields["type"].default
    assert isinstance(default, str)
    return default


MESSAGE_MODELS: dict[str, type[BaseModel]] = {_type_of(m): m for m in _union_members(Message)}
MESSAGE_TYPES: tuple[str, ...] = tuple(MESSAGE_MODELS)
# A run's last event: exactly one of these ends every run.
TERMINAL_TYPES = frozenset({_type_of(TrainingComplete), _type_of(TrainingError)})
# A training run's own lifecycle: a /ws client that names no run gets these for the run it follows.
RUN_TYPES = frozenset(
    _type_of(m)
    for m in (
        DatasetReady,
        TrainingStart,
        EpochMetrics,
        BatchProgress,
        FoldComplete,
        PredictionDelta,
        TrainingComplete,
        TrainingError,
    )
)
# The first of these a run releases starts it; it runs until its terminal event (docs/api.md, /ws).
START_TYPES = frozenset({_type_of(DatasetReady), _type_of(TrainingStart)})
# Live detail sent only to clients that ask for it by name (``?types=``).
HEAVY_TYPES = frozenset({_type_of(BatchProgress), _type_of(PredictionDelta), _type_of(ChartUpdate)})
# What a client that names no types receives.
CORE_TYPES = frozenset(MESSAGE_TYPES) - HEAVY_TYPES

EPOCH_METRIC_FIELDS: tuple[str, ...] = tuple(
    name
    for name in EpochMetrics.model_fields
    if name not in _Envelope.model_fields and name not in {"type", "fold_id", "epoch", "elapsed_seconds"}
)


ENVELOPE_FIELDS: tuple[str, ...] = tuple(_Envelope.model_fields)


def without_envelope(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of a message dict without the fields the EventHub stamps (``run_id``, ``seq``, ``ts``).

    The one place the envelope is removed: a producer publishes a message without it, the hub
    adds it.
    """
    return {k: v for k, v in data.items() if k not in ENVELOPE_FIELDS}


def sanitize(value: Any) -> Any:
    """Replace NaN and +-Infinity by None, recursively (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [sanitize(v) for v in value]
    return value


def parse_message(data: dict[str, Any] | str) -> BaseModel:
    """Validate a message (dict or JSON text) against the contract; raises ValidationError."""
    if isinstance(data, str):
        data = json.loads(data)
    return _SERVER_ADAPTER.validate_python(data)  # type: ignore[no-any-return]


def to_wire(message: BaseModel) -> dict[str, Any]:
    """The JSON-ready dict of a message; envelope fields that are unset are left out."""
    return sanitize(message.model_dump(mode="json", exclude_none=False, exclude_unset=False))  # type: ignore[no-any-return]


def message_json_schema() -> dict[str, Any]:
    """JSON Schema of every server message (the union, with a definition per type)."""
    schema = _SERVER_ADAPTER.json_schema(mode="serialization")
    schema["title"] = "Forecast orchestrator /ws server message"
    schema["description"] = (
        "Every text frame the server sends on /ws is one JSON object matching exactly one of "
        "these definitions, told apart by its 'type'. Clients ignore unknown keys."
    )
    return schema


# What a run id looks like on the wire (``?run_id=`` of /ws, the ``run_id`` envelope field).
RUN_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
