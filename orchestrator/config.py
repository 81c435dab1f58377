"""The training configuration: one pydantic model, validated once at the edge.

The same fields come from CLI flags, a YAML/JSON file (``--config``) and the REST body of
``POST /train``. A bad value raises ``ConfigError`` whose message names the field and the value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from orchestrator.errors import ConfigError

__all__ = ["TrainConfig", "load_config_file", "config_from_mapping", "format_validation_error"]


class TrainConfig(BaseModel):
    """Everything that defines one CV training run. Defaults give the README's main job."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # data
    data: str = Field("sp500", description="'sp500' (bundled, no network) or a CSV/Parquet path")
    min_samples: int = Field(2048, ge=1, description="fewer usable samples than this is an error")
    lookback: int = Field(20, ge=2, le=512, description="longest feature window, in bars")
    date_format: str | None = Field(
        None,
        min_length=1,
        description="strptime format of a text time column (e.g. '%d/%m/%Y', or 'ISO8601'); "
        "default: one format inferred from the whole column, ambiguous columns refused",
    )

    # walk-forward CV (DESIGN 5)
    use_cv: bool = True
    folds: int = Field(5, ge=1, le=64)
    window: Literal["expanding", "rolling"] = "expanding"
    val_fraction: float = Field(
        0.4, gt=0.0, lt=1.0, description="share of samples covered by all validation segments"
    )
    cal_fraction: float = Field(
        0.15, gt=0.0, lt=1.0, description="calibration share of the span before each validation"
    )

    # model and optimisation
    epochs: int = Field(25, ge=1, le=10_000)
    batch_size: int = Field(256, ge=1, le=1_000_000)
    hidden: int = Field(64, ge=1, le=4096)
    depth: int = Field(2, ge=1, le=16)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    lr: float = Field(1e-3, gt=0.0, le=10.0)
    weight_decay: float = Field(1e-4, ge=0.0, le=10.0)
    w_nll: float = Field(1.0, ge=0.0)
    w_bce: float = Field(1.0, ge=0.0)
    w_brier: float = Field(1.0, ge=0.0)
    patience: int = Field(
        10, ge=1, description="epochs without calibration-loss improvement before stopping"
    )
    seed: int = Field(0, ge=0, le=2**31 - 1)

    # calibration and conformal (DESIGN 6)
    alpha: float = Field(0.1, gt=0.0, lt=1.0, description="conformal miscoverage level")
    coverage_tolerance: float = Field(0.05, gt=0.0, lt=1.0)
    ece_warning_threshold: float = Field(0.05, gt=0.0, le=1.0)
    min_calibration_samples: int = Field(200, ge=2)
    calibration_splits: int = Field(5, ge=2, le=50)

    # execution
    executor: Literal["local", "ray"] = "ray"
    cpus_per_fold: float = Field(1.0, gt=0.0, le=1024)
    gpus_per_fold: float = Field(0.0, ge=0.0, le=64)
    memory_per_fold_mb: int | None = Field(None, ge=1)
    max_concurrent_folds: int | None = Field(None, ge=1)
    max_retries: int = Field(2, ge=0, le=100)
    placement_timeout_s: float = Field(60.0, gt=0.0)
    cuda_graphs: bool = True
    mixed_precision: bool = False

    # live detail (DESIGN 4: heavy messages, sent only to clients that subscribe)
    batch_progress_interval_s: float = Field(
        0.25, ge=0.0, description="min seconds between batch_progress events of a fold; 0 = off"
    )
    prediction_deltas: bool = Field(
        True,
        description="publish prediction_delta after each epoch (while a consumer takes it) "
        "and a final one per fold",
    )
    prediction_delta_rtol: float = Field(1e-6, ge=0.0, description="relative change that counts")

    # outputs
    reports_dir: str = "reports"

    @model_validator(mode="after")
    def _check_cv(self) -> "TrainConfig":
        if self.use_cv and self.folds < 2:
            raise ValueError(f"folds must be >= 2 when use_cv is true, got folds={self.folds}")
        if self.w_nll + self.w_bce + self.w_brier <= 0:
            raise ValueError("at least one of w_nll, w_bce, w_brier must be > 0")
        return self

    @property
    def total_folds(self) -> int:
        return self.folds if self.use_cv else 1

    @property
    def purge_gap(self) -> int:
        """Bars between segments: the feature lookback plus the one-bar label horizon."""
        return self.lookback + 1


def format_validation_error(err: ValidationError) -> str:
    """'field: problem (got value)' for each error, joined by '; '."""
    parts = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "config"
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            parts.append(f"{loc}: unknown field")
        elif "input" in item and item["type"] != "missing" and loc != "config":
            parts.append(f"{loc}: {msg} (got {item['input']!r})")
        else:
            parts.append(f"{loc}: {msg}" if loc != "config" else msg)
    return "; ".join(parts)


def config_from_mapping(values: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """Validate ``values`` over ``base`` (or the defaults); raise ConfigError naming the field."""
    merged = {**(base.model_dump() if base else {}), **values}
    try:
        return TrainConfig(**merged)
    except ValidationError as err:
        raise ConfigError(f"invalid config: {format_validation_error(err)}") from err


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a mapping (validated by ``config_from_mapping``)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    text = p.read_text()
    try:
        loaded = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"config file {p} is not valid {p.suffix.lstrip('.') or 'YAML'}: {err}") from err
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {p} must hold a mapping of field: value")
    return loaded
