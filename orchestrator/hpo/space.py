"""The HPO search space: which ``TrainConfig`` fields Optuna tunes, and over which ranges.

A space is a mapping ``field -> distribution spec``, written in YAML (``--search-space FILE``) or
sent as JSON (``POST /hpo``)::

    lr:           {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    hidden:       {type: int, low: 16, high: 128, step: 16}
    window:       {type: categorical, choices: [expanding, rolling]}

``type`` is ``float`` (``low``, ``high``, optional ``log`` or ``step``), ``int`` (``low``, ``high``,
optional ``log`` or ``step``) or ``categorical`` (``choices``). Every name must be a tunable
``TrainConfig`` field, and every bound (or choice) must be a valid value of that field, so a bad
space fails before the first trial with a message naming the parameter. Pure: no Optuna state,
no Ray, no I/O except ``load_search_space``; ``suggest`` draws a trial's values from a space.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from orchestrator.config import TrainConfig, config_from_mapping, parse_yaml
from orchestrator.errors import ConfigError

__all__ = [
    "DEFAULT_SEARCH_SPACE",
    "UNTUNABLE_FIELDS",
    "SearchSpace",
    "parse_search_space",
    "load_search_space",
    "contains",
    "suggest",
]

SearchSpace = dict[str, BaseDistribution]

# The defaults of DESIGN's HPO: learning rate, width, depth, dropout, weight decay, loss weights,
# lookback. w_nll stays at its configured value: it anchors the scale of the other two weights.
DEFAULT_SEARCH_SPACE: dict[str, dict[str, Any]] = {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "hidden": {"type": "int", "low": 16, "high": 128},
    "depth": {"type": "int", "low": 1, "high": 3},
    "dropout": {"type": "float", "low": 0.0, "high": 0.3},
    "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
    "w_bce": {"type": "float", "low": 0.0, "high": 2.0},
    "w_brier": {"type": "float", "low": 0.0, "high": 2.0},
    "lookback": {"type": "int", "low": 10, "high": 40},
}

# Fields that define the data, the validation segments or where and how a run executes: tuning
# them would make trial values incomparable (or say nothing about the model).
UNTUNABLE_FIELDS = frozenset(
    {
        "data",
        "min_samples",
        "use_cv",
        "folds",
        "val_fraction",
        "seed",
        "executor",
        "cpus_per_fold",
        "gpus_per_fold",
        "memory_per_fold_mb",
        "max_concurrent_folds",
        "max_retries",
        "placement_timeout_s",
        "reports_dir",
    }
)

_KEYS = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
}


def parse_search_space(spec: Mapping[str, Any], base: TrainConfig | None = None) -> SearchSpace:
    """Validate a space mapping and build its Optuna distributions (in the mapping's order).

    ``base`` is the configuration the tuned values are applied to; each bound is checked by
    validating ``base`` with that value. Raises ``ConfigError`` naming the parameter.
    """
    if not isinstance(spec, Mapping) or not spec:
        raise ConfigError(f"search space must be a non-empty mapping of field: distribution, got {spec!r}")
    base = base or config_from_mapping({})
    space: SearchSpace = {}
    for name, item in spec.items():
        if name not in TrainConfig.model_fields:
            raise ConfigError(f"search space: {name!r} is not a TrainConfig field")
        if name in UNTUNABLE_FIELDS:
            raise ConfigError(
                f"search space: {name!r} cannot be tuned (it defines the data, the validation "
                "segments or the execution, so trials would not be comparable)"
            )
        distribution = _distribution(name, item)
        for value in _probe_values(distribution):
            try:
                config_from_mapping({name: value}, base=base)
            except ConfigError as err:
                raise ConfigError(f"search space: {name}={value!r} is not a valid value: {err}") from err
        space[name] = distribution
    return space


def load_search_space(path: str | Path, base: TrainConfig | None = None) -> SearchSpace:
    """Read a YAML (or JSON) space file and validate it with ``parse_search_space``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"search space file not found: {p}")
    loaded = parse_yaml(p.read_text(), f"search space file {p}")  # keys written twice refused
    return parse_search_space(loaded, base)


def _distribution(name: str, item: Any) -> BaseDistribution:
    if not isinstance(item, Mapping):
        raise ConfigError(
            f"search space: {name} must be a mapping such as {{type: float, low: 0.0, high: 1.0}},"
            f" got {item!r}"
        )
    kind = item.get("type")
    if kind not in _KEYS:
        raise ConfigError(f"search space: {name}.type must be one of {sorted(_KEYS)}, got type={kind!r}")
    unknown = set(item) - _KEYS[kind]
    if unknown:
        raise ConfigError(
            f"search space: {name} has unknown keys {sorted(unknown)} for type={kind} "
            f"(allowed: {sorted(_KEYS[kind])})"
        )
    try:
        if kind == "categorical":
            choices = item.get("choices")
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"search space: {name}.choices must be a non-empty list, got {choices!r}")
            return CategoricalDistribution(choices)
        missing = [key for key in ("low", "high") if key not in item]
        if missing:
            raise ConfigError(f"search space: {name} needs {' and '.join(missing)}")
        if kind == "int":
            return IntDistribution(
                _integer(name, "low", item["low"]),
                _integer(name, "high", item["high"]),
                log=bool(item.get("log", False)),
                step=_integer(name, "step", item.get("step", 1)),
            )
        return FloatDistribution(
            _number(name, "low", item["low"]),
            _number(name, "high", item["high"]),
            log=bool(item.get("log", False)),
            step=None if item.get("step") is None else _number(name, "step", item["step"]),
        )
    except ValueError as err:  # Optuna's own checks: low > high, log with step, log with low <= 0
        raise ConfigError(f"search space: {name}: {err}") from err


def _integer(name: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"search space: {name}.{key} must be an integer, got {key}={value!r}")
    return value


def _number(name: str, key: str, value: Any) -> float:
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"search space: {name}.{key} must be a number, got {key}={value!r}")
    return float(value)


def _probe_values(distribution: BaseDistribution) -> list[Any]:
    """The values whose validity stands for the whole distribution: its bounds, or its choices."""
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    assert isinstance(distribution, (FloatDistribution, IntDistribution))
    return [distribution.low, distribution.high]


def contains(distribution: BaseDistribution, value: Any) -> bool:
    """Whether ``value`` is one the distribution can take (a choice, or within the bounds)."""
    if isinstance(distribution, CategoricalDistribution):
        return value in distribution.choices
    assert isinstance(distribution, (FloatDistribution, IntDistribution))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(distribution, IntDistribution) and value != int(value):
        return False
    return bool(distribution.low <= value <= distribution.high)


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """The trial's value of every parameter of ``space``, in its order (enqueued values first).

    Optuna's own ``suggest_*`` calls, so that enqueued parameters and the sampler work as in any
    define-by-run objective.
    """
    for name, distribution in space.items():
        if isinstance(distribution, CategoricalDistribution):
            trial.suggest_categorical(name, distribution.choices)
        elif isinstance(distribution, IntDistribution):
            trial.suggest_int(
                name,
                distribution.low,
                distribution.high,
                step=distribution.step,
                log=distribution.log,
            )
        else:
            assert isinstance(distribution, FloatDistribution)
            trial.suggest_float(
                name,
                distribution.low,
                distribution.high,
                step=distribution.step,
                log=distribution.log,
            )
    return {name: trial.params[name] for name in space}
