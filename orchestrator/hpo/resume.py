"""What may change when a study is continued: its metric, base fields, data and search space.

A study's trials are compared with each other (the sampler learns from them, the best one is
reported), so a session that continues a study must ask the same question of the same data. Each
rule refuses, before any trial starts, with a ``ConfigError`` naming what changed (old and new)
and suggesting a new study (docs/hpo.md, "Resume"):

* the metric, and the base fields that define what is compared (``COMPARABLE_FIELDS``);
* the data: the fingerprint of the bars (``workers.data.data_fingerprint``) is recorded when the
  study is created; a file replaced or edited under the same path is refused (optuna#3306);
* the search space: parameters may be added or removed, a number's range (``low``, ``high``,
  ``step``) may change; a parameter's kind (float, int, categorical), its log scale and a
  categorical's choices may not (Optuna refuses them per trial, optuna#2199, #2671).
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    check_distribution_compatibility,
)

from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.hpo.spec import HpoSpec

__all__ = ["COMPARABLE_FIELDS", "DATA_ATTR", "check_continuation", "describe_distribution"]

log = logging.getLogger(__name__)

# A study's trials are comparable only while these fields stay the same.
COMPARABLE_FIELDS = ("data", "use_cv", "folds", "window", "val_fraction", "epochs")
# The study's user attribute holding what its data was: {"fingerprint", "bars", "source"}.
DATA_ATTR = "data_fingerprint"


def check_continuation(study: optuna.Study, spec: HpoSpec) -> None:
    """Record a new study's metric, base config and data; refuse a session that changes what
    its trials are compared on (``ConfigError``, before any trial of the session starts)."""
    attrs = study.user_attrs
    if "metric" not in attrs:
        study.set_user_attr("metric", spec.metric)
        study.set_user_attr("base_config", spec.config.model_dump(mode="json"))
    else:
        _check_base(study, spec, attrs)
    _check_space(study, spec)
    _check_data(study, spec)


def _new_study_hint(spec: HpoSpec) -> str:
    return f"start a new study (e.g. --study {spec.study}-2)"


def _check_base(study: optuna.Study, spec: HpoSpec, attrs: dict[str, Any]) -> None:
    if attrs["metric"] != spec.metric:
        raise ConfigError(
            f"study {spec.study!r} optimizes metric={attrs['metric']}, got "
            f"metric={spec.metric}; use another --study name"
        )
    before = attrs.get("base_config", {})
    now = spec.config.model_dump(mode="json")
    for name in COMPARABLE_FIELDS:
        if name in before and before[name] != now[name]:
            raise ConfigError(
                f"study {spec.study!r} was run with {name}={before[name]!r}, got "
                f"{name}={now[name]!r}: its trials would not be comparable; use another "
                "--study name"
            )
    changed = sorted(k for k in now if k in before and before[k] != now[k])
    if changed:
        log.warning("study %s continues with changed base config fields: %s", spec.study, changed)


# --- the data -------------------------------------------------------------------------------------


def _check_data(study: optuna.Study, spec: HpoSpec) -> None:
    """Compare the data's fingerprint with the one recorded; record it where none is.

    Data that cannot be loaded is left to the trials, which fail naming the problem."""
    from orchestrator.data.cache import run_data  # loads the bars: only once a study is opened

    config = spec.config
    try:
        data = run_data(config.data, config.date_format, config.lookback)
    except OrchestratorError as err:
        log.warning(
            "study %s: its data cannot be fingerprinted (%s); the trials will say why", spec.study, err
        )
        return
    now: dict[str, Any] = {"fingerprint": data.fingerprint, "bars": len(data.frame), "source": config.data}
    recorded: Any = study.user_attrs.get(DATA_ATTR)
    if not isinstance(recorded, dict) or "fingerprint" not in recorded:
        study.set_user_attr(DATA_ATTR, now)
        return
    if recorded["fingerprint"] == now["fingerprint"]:
        return
    raise ConfigError(
        f"study {spec.study!r} was run on data {recorded.get('source')!r} with fingerprint "
        f"{str(recorded['fingerprint'])[:16]} ({recorded.get('bars')} bars); {config.data!r} now has "
        f"fingerprint {data.fingerprint[:16]} ({now['bars']} bars): the data was replaced or "
        f"edited, so new trials would not be comparable with the old ones; "
        f"{_new_study_hint(spec)}, or put the study's data back"
    )


# --- the search space -----------------------------------------------------------------------------


def _recorded_distributions(study: optuna.Study) -> dict[str, BaseDistribution]:
    """Each parameter's distribution as the study's first trial that has it recorded it (what
    Optuna's storages compare a new trial's parameter with)."""
    found: dict[str, BaseDistribution] = {}
    for trial in study.get_trials(deepcopy=False):
        for name, distribution in trial.distributions.items():
            found.setdefault(name, distribution)
    return found


def _check_space(study: optuna.Study, spec: HpoSpec) -> None:
    recorded = _recorded_distributions(study)
    space = spec.distributions
    for name, new in space.items():
        old = recorded.get(name)
        if old is None:
            continue
        try:
            check_distribution_compatibility(old, new)
        except ValueError:
            raise ConfigError(
                f"search space: study {spec.study!r} has tried {name} as "
                f"{describe_distribution(old)}, got {name}: {describe_distribution(new)}; a "
                f"continued study keeps each parameter's type, log scale and categorical choices "
                f"(ranges may change, parameters may be added or removed): keep {name} as it was, "
                f"or {_new_study_hint(spec)}"
            ) from None
    added = sorted(set(space) - set(recorded))
    removed = sorted(set(recorded) - set(space))
    if recorded and (added or removed):
        log.warning("study %s continues with parameters added %s, removed %s", spec.study, added, removed)


def describe_distribution(distribution: BaseDistribution) -> str:
    """A distribution as a search-space file writes it: ``{type: int, low: 16, high: 128}``."""
    if isinstance(distribution, CategoricalDistribution):
        return f"{{type: categorical, choices: {list(distribution.choices)!r}}}"
    assert isinstance(distribution, (FloatDistribution, IntDistribution))
    kind = "int" if isinstance(distribution, IntDistribution) else "float"
    text = f"{{type: {kind}, low: {distribution.low!r}, high: {distribution.high!r}"
    if distribution.log:
        text += ", log: true"
    if distribution.step not in (None, 1) or (kind == "float" and distribution.step is not None):
        text += f", step: {distribution.step!r}"
    return text + "}"
