"""The run contract: the training configuration (one pydantic model) and the folds planned from it.

The same fields come from CLI flags, a YAML/JSON file (``--config``) and the REST body of
``POST /train``. A bad value raises ``ConfigError`` whose message names the field and the value.
``FoldSpec`` is what a fold is given besides the config: the index ranges of its three segments,
planned by ``orchestrator.run.cv`` and read by ``workers.fold`` (so it lives here, in the contract).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.errors import ConfigError, brief

__all__ = [
    "TrainConfig",
    "Segment",
    "FoldSpec",
    "load_config_file",
    "parse_yaml",
    "parse_json",
    "unique_json_object",
    "DuplicateKeysError",
    "config_from_mapping",
    "format_validation_error",
]


class TrainConfig(BaseModel):
    """Everything that defines one CV training run. Defaults give the README's main job."""

    # Every number finite: YAML reads `.inf` and `.nan`, and an infinite loss weight or timeout
    # would only fail (or never end) once training runs.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

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
    use_cv: bool = Field(
        True, description="walk-forward CV; --no-cv gives one train/calibration/validation split"
    )
    folds: int = Field(5, ge=1, le=64, description="walk-forward CV folds")
    window: Literal["expanding", "rolling"] = Field(
        "expanding", description="train window: everything before (expanding) or a fixed length"
    )
    val_fraction: float = Field(
        0.4, gt=0.0, lt=1.0, description="share of samples covered by all validation segments"
    )
    cal_fraction: float = Field(
        0.15, gt=0.0, lt=1.0, description="calibration share of the span before each validation"
    )

    # model and optimisation
    epochs: int = Field(25, ge=1, le=10_000, description="epochs per fold")
    batch_size: int = Field(256, ge=1, le=1_000_000, description="samples per gradient step")
    hidden: int = Field(64, ge=1, le=4096, description="width of the MLP's hidden layers")
    depth: int = Field(2, ge=1, le=16, description="hidden layers of the MLP")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout probability")
    lr: float = Field(1e-3, gt=0.0, le=10.0, description="AdamW learning rate")
    weight_decay: float = Field(1e-4, ge=0.0, le=10.0, description="AdamW weight decay")
    w_nll: float = Field(1.0, ge=0.0, description="weight of the Gaussian NLL in the loss")
    w_bce: float = Field(1.0, ge=0.0, description="weight of the BCE of p_up in the loss")
    w_brier: float = Field(1.0, ge=0.0, description="weight of the Brier score in the loss")
    patience: int = Field(10, ge=1, description="epochs without calibration-loss improvement before stopping")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of weights and batch order")

    # calibration and conformal (DESIGN 6)
    alpha: float = Field(0.1, gt=0.0, lt=1.0, description="conformal miscoverage level")
    coverage_tolerance: float = Field(
        0.05, gt=0.0, lt=1.0, description="coverage_warning when |coverage - (1-alpha)| exceeds it"
    )
    ece_warning_threshold: float = Field(
        0.05, gt=0.0, le=1.0, description="calibration_warning when validation ECE exceeds it"
    )
    min_calibration_samples: int = Field(
        200, ge=2, description="calibration_warning below this many calibration samples"
    )
    calibration_splits: int = Field(
        5, ge=2, le=50, description="cross-fitting blocks that choose the calibration method"
    )

    # execution
    executor: Literal["local", "ray"] = Field(
        "ray", description="ray: folds in parallel in Ray actors; local: one after another in-process"
    )
    cpus_per_fold: float = Field(1.0, gt=0.0, le=1024, description="CPUs of a fold's actor")
    gpus_per_fold: float = Field(
        0.0, ge=0.0, le=64, description="GPUs of a fold's actor; fractions allowed, e.g. 0.25"
    )
    memory_per_fold_mb: int | None = Field(None, ge=1, description="memory reserved per fold actor")
    max_concurrent_folds: int | None = Field(
        None, ge=1, description="folds at once (default: what the cluster holds)"
    )
    max_retries: int = Field(2, ge=0, le=100, description="retries of a fold whose worker died")
    placement_timeout_s: float = Field(
        60.0, gt=0.0, description="seconds a fold may wait for resources before the run fails"
    )
    pack: Literal["auto"] | int = Field(
        "auto",
        description="models trained as one stacked model by a worker: auto (every fold it holds, "
        "and same-architecture HPO trials admitted together), N (at most N), 1 (one at a time)",
    )
    cuda_graphs: bool = Field(True, description="capture the train step in a CUDA graph on GPU")
    mixed_precision: bool = Field(False, description="bfloat16 autocast in the train step")

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
    reports_dir: str = Field("reports", description="reports root: one folder per run")

    @field_validator("pack", mode="before")
    @classmethod
    def _check_pack(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        if isinstance(value, str) and value.isdigit() and int(value) >= 1:
            return int(value)
        raise ValueError("must be 'auto' or an integer >= 1")

    @model_validator(mode="after")
    def _check_cv(self) -> TrainConfig:
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


@dataclass(frozen=True)
class Segment:
    """The half-open sample index range ``[start, stop)``."""

    start: int
    stop: int

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.stop:
            raise ValueError(f"segment needs 0 <= start <= stop, got [{self.start}, {self.stop})")

    def __len__(self) -> int:
        return self.stop - self.start

    def as_slice(self) -> slice:
        return slice(self.start, self.stop)


@dataclass(frozen=True)
class FoldSpec:
    """One walk-forward split; segments are in time order with purge gaps between them."""

    fold_id: int
    train: Segment
    calibration: Segment
    validation: Segment


def format_validation_error(err: ValidationError) -> str:
    """'field: problem (got value)' for each error, joined by '; ' (long values and names cut short)."""
    parts = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "config"
        if len(loc) > 64:
            loc = brief(loc, 64)
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            parts.append(f"{loc}: unknown field")
        elif "input" in item and item["type"] != "missing" and loc != "config":
            parts.append(f"{loc}: {msg} (got {brief(item['input'])})")
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
    loaded = (
        parse_json(text, f"config file {p}") if p.suffix == ".json" else parse_yaml(text, f"config file {p}")
    )
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {p} must hold a mapping of field: value")
    return loaded


# --- YAML and JSON that keep no key twice ---------------------------------------------------------
# PyYAML and json keep the last of two equal keys in one mapping without a word (yacs#17): a config
# with an old `lr: 0.01` left below the new one trains with the old value. Both readers here refuse.


class DuplicateKeysError(Exception):
    """Keys written twice in one mapping: (key, first line, second line), lines 1-based or 0."""

    def __init__(self, found: list[tuple[Any, int, int]]) -> None:
        self.found = found


class _UniqueKeyLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no types
    """PyYAML's safe loader, refusing a mapping that holds one key twice."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    repeated: list[tuple[Any, int, int]] = []
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may override on purpose
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            if key in seen:
                repeated.append((key, seen[key], line))
            else:
                seen[key] = line
        except TypeError:  # an unhashable key: construct_mapping names it
            continue
    if repeated:
        raise DuplicateKeysError(repeated)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _duplicate_message(err: DuplicateKeysError, where: str, text: str) -> str:
    rows = text.splitlines()

    def line(number: int) -> str:
        return f"line {number}: {rows[number - 1].strip()[:60]!r}"

    def described(key: Any, first: int, second: int) -> str:
        if not 0 < first <= second <= len(rows):
            return repr(key)
        return (
            f"{key!r} (twice on {line(first)})"
            if first == second
            else f"{key!r} ({line(first)}; {line(second)})"
        )

    parts = [described(*found) for found in err.found]
    return (
        f"{where}: {'key' if len(parts) == 1 else 'keys'} written twice in one mapping: "
        f"{', '.join(parts)}; YAML and JSON readers silently keep the last one: delete the one "
        "you do not mean"
    )


def parse_yaml(text: str, where: str) -> Any:
    """``text`` as YAML (safe tags only); ``ConfigError`` naming ``where`` for a syntax error or
    a key written twice in one mapping (with both lines)."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except DuplicateKeysError as err:
        raise ConfigError(_duplicate_message(err, where, text)) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{where} is not valid YAML: {err}") from err


def unique_json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``'s ``object_pairs_hook`` that raises ``DuplicateKeysError`` for a key written
    twice in one object (lines unknown: 0)."""
    found = dict(pairs)
    if len(found) < len(pairs):
        keys = [key for key, _ in pairs]
        raise DuplicateKeysError([(key, 0, 0) for key in found if keys.count(key) > 1])
    return found


def parse_json(text: str, where: str) -> Any:
    """``text`` as JSON; ``ConfigError`` naming ``where`` for a syntax error or a key written twice
    in one object (with both lines, found by reading the text again as YAML, where it can be)."""

    try:
        return json.loads(text, object_pairs_hook=unique_json_object)
    except DuplicateKeysError as err:
        try:
            parse_yaml(text, where)  # JSON is YAML's flow style: the same refusal, with lines
        except ConfigError as with_lines:
            if "written twice" in str(with_lines):
                raise with_lines from None
        raise ConfigError(_duplicate_message(err, where, text)) from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{where} is not valid JSON: {err}") from err
