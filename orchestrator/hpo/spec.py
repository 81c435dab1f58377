"""What defines one HPO study session (``HpoSpec``, from CLI flags or a REST body), validated once.

Also the two pure rules that follow from a spec: the metric's default direction, and the per-fold
CPU/GPU shares under which ``parallel`` trials fit the cluster at once (``pack_resources``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from orchestrator.config import TrainConfig, config_from_mapping, format_validation_error
from orchestrator.errors import ConfigError, brief
from orchestrator.execution.placement import folds_within
from orchestrator.hpo.space import (
    DEFAULT_SEARCH_SPACE,
    SearchSpace,
    contains,
    parse_search_space,
)
from orchestrator.jobs.policy import PRIORITY_MAX, PRIORITY_MIN
from orchestrator.messages import EPOCH_METRIC_FIELDS

__all__ = [
    "Direction",
    "HpoSpec",
    "STUDY_NAME_PATTERN",
    "spec_from_mapping",
    "pack_resources",
    "default_direction",
]

Direction = Literal["minimize", "maximize"]

STUDY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_STUDY_NAME = re.compile(STUDY_NAME_PATTERN)


def default_direction(metric: str) -> Direction | None:
    """minimize for losses and calibration error, maximize for AUC and DirAcc, else None."""
    if "auc" in metric.lower() or metric == "DirAcc":
        return "maximize"
    if metric.endswith(("nll", "bce", "brier", "loss")) or metric.startswith("ECE"):
        return "minimize"
    return None


class HpoSpec(BaseModel):
    """Everything that defines one HPO study session (the CLI flags, the POST /hpo body)."""

    model_config = ConfigDict(extra="forbid")

    study: str = Field("default", description="study name; the same name continues the study")
    trials: int = Field(20, ge=1, le=100_000, description="trials to run in this session")
    parallel: int = Field(1, ge=1, le=1024, description="trials at once")
    storage: str | None = Field(
        None,
        description="Optuna RDB URL (sqlite:///..., postgresql://...) or a journal file path; "
        "default: the job store's database (serve's and hpo's --db; one file holds runs and "
        "studies), else <reports_dir>/hpo/<study>/study.journal",
    )
    metric: str = Field("val_nll", description="an epoch_metrics field, averaged over folds")
    direction: Direction | None = Field(None, description="default: from the metric")
    search_space: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {k: dict(v) for k, v in DEFAULT_SEARCH_SPACE.items()}
    )
    pruner: Literal["median", "hyperband", "successive_halving", "none"] = Field(
        "median", description="Optuna pruner fed the trials' per-epoch metric"
    )
    pruner_startup_trials: int = Field(
        4, ge=0, description="completed trials before the median pruner prunes"
    )
    pruner_warmup_epochs: int = Field(1, ge=0, description="epochs before a trial can be pruned")
    sampler: Literal["tpe", "random"] = Field("tpe", description="Optuna sampler")
    sampler_seed: int | None = Field(
        None, ge=0, description="seed of the sampler (reproducible draws with --parallel 1)"
    )
    enqueue: list[dict[str, Any]] = Field(
        default_factory=list, description="parameter sets to try first (skipped if already tried)"
    )
    timeout_s: float | None = Field(None, gt=0, description="start no trial after this many s")
    priority: int = Field(
        0,
        ge=PRIORITY_MIN,
        le=PRIORITY_MAX,
        strict=True,
        description="on a server, every trial waits in the job queue with this priority (higher first)",
    )
    config: TrainConfig = Field(
        default_factory=lambda: config_from_mapping({}), description="the base run config"
    )

    @model_validator(mode="after")
    def _check(self) -> HpoSpec:
        if not _STUDY_NAME.match(self.study):
            raise ValueError(
                "study must be 1-64 characters of letters, digits, '_', '.', '-' (starting with a "
                f"letter or digit), got study={brief(self.study)}"
            )
        if self.metric not in EPOCH_METRIC_FIELDS:
            raise ValueError(
                f"metric must be an epoch_metrics field ({', '.join(EPOCH_METRIC_FIELDS)}), "
                f"got metric={brief(self.metric)}"
            )
        if self.direction is None:
            inferred = default_direction(self.metric)
            if inferred is None:
                raise ValueError(
                    f"direction cannot be inferred for metric={self.metric!r}; "
                    "give direction='minimize' or 'maximize'"
                )
            self.direction = inferred
        try:
            space = parse_search_space(self.search_space, self.config)
        except ConfigError as err:
            raise ValueError(str(err)) from err
        for i, params in enumerate(self.enqueue):
            unknown = sorted(set(params) - set(space))
            if unknown:
                raise ValueError(f"enqueue[{i}]: {unknown} not in the search space")
            for name, value in params.items():
                if not contains(space[name], value):
                    raise ValueError(
                        f"enqueue[{i}]: {name}={value!r} is outside the search space {space[name]}"
                    )
        return self

    @property
    def distributions(self) -> SearchSpace:
        return parse_search_space(self.search_space, self.config)

    @property
    def study_dir(self) -> Path:
        return Path(self.config.reports_dir) / "hpo" / self.study

    @property
    def study_run_id(self) -> str:
        """The run_id under which the study's own ``hpo_trial`` events go through the hub."""
        return f"hpo_{self.study}"


def spec_from_mapping(values: Mapping[str, Any]) -> HpoSpec:
    """An ``HpoSpec`` from a flat mapping (REST body): HPO fields plus ``TrainConfig`` fields.

    Train fields may also come nested under ``config``. ``search_space`` is a mapping, never a
    path: this reads no file (``load_search_space`` reads one). Raises ``ConfigError`` naming the
    field.
    """
    hpo_fields = set(HpoSpec.model_fields) - {"config"}
    spec_values = {k: v for k, v in values.items() if k in hpo_fields}
    train_values = dict(values.get("config") or {})
    train_values.update({k: v for k, v in values.items() if k not in hpo_fields and k != "config"})
    config = config_from_mapping(train_values)
    space = spec_values.get("search_space")
    if space is not None and not isinstance(space, Mapping):
        raise ConfigError(
            f"search_space must be a mapping of field -> distribution, got {type(space).__name__} "
            "(a YAML file is read by load_search_space, or by the CLI's --search-space)"
        )
    try:
        return HpoSpec.model_validate({**spec_values, "config": config})
    except ValidationError as err:
        raise ConfigError(f"invalid HPO spec: {format_validation_error(err)}") from err


def pack_resources(
    config: TrainConfig, parallel: int, cluster: Mapping[str, float], *, shrink: bool = True
) -> dict[str, Any]:
    """The config changes under which ``parallel`` trials' fold actors all fit ``cluster`` at once.

    ``shrink=False`` (a batch of packed trials trained in one executor call, with no job queue to
    hold each trial's share): the batch shares the workers the cluster holds of the fold's own
    shape, so only fold concurrency is set (each trial's share of the workers, at least one; the
    executor adds them up and caps them by the cluster) and no CPU or GPU share is shrunk: one
    worker per GPU trains one stack of the whole batch.

    Fold actors hold their resources while they are alive (they stay warm in the pool). Trials
    in parallel first give up fold concurrency, not CPU: on C CPUs, P trials of folds asking c
    CPUs each run ``floor(C / (P * c))`` folds at a time (``max_concurrent_folds``), so P trials
    keep P * that many warm actors busy, one process per core, where shrinking the share would
    start P * folds actors on the same cores (a cold start each, and oversubscribed cores). Only
    when not even one fold per trial fits is ``cpus_per_fold`` shrunk (one fold at a time each).
    GPU shares are then shrunk to fit the folds that run at once: GPU folds may share a device.
    Shares are rounded down to Ray's 1e-4 resource precision. Raises ConfigError when nothing fits.
    """
    per_trial = min(config.total_folds, config.max_concurrent_folds or config.total_folds)
    changes: dict[str, Any] = {}
    cpus, have_cpus = float(config.cpus_per_fold), float(cluster.get("CPU", 0.0))
    if not shrink:
        fit = folds_within(have_cpus, parallel * cpus, per_trial) if cpus > 0 and have_cpus > 0 else per_trial
        return {"max_concurrent_folds": max(fit, 1)} if max(fit, 1) < per_trial else {}
    if cpus > 0 and have_cpus > 0:
        fit = folds_within(have_cpus, parallel * cpus, per_trial)
        if fit < per_trial:
            per_trial = max(fit, 1)
            changes["max_concurrent_folds"] = per_trial
        if fit < 1:
            share = math.floor(have_cpus / parallel * 1e4) / 1e4
            if share <= 0:
                raise ConfigError(f"parallel={parallel} trials do not fit {have_cpus:g} CPU")
            changes["cpus_per_fold"] = share
    gpus, have_gpus = float(config.gpus_per_fold), float(cluster.get("GPU", 0.0))
    slots = parallel * per_trial
    if gpus > 0 and have_gpus > 0 and slots * gpus > have_gpus + 1e-9:
        share = math.floor(have_gpus / slots * 1e4) / 1e4
        if share <= 0:
            raise ConfigError(f"parallel={parallel} trials x {per_trial} folds do not fit {have_gpus:g} GPU")
        changes["gpus_per_fold"] = share
    return changes
