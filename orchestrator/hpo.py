"""Hyperparameter search with Optuna over whole CV runs, trials in parallel on Ray (issue 5).

Each trial is one ordinary run (``execute_run``) of the base ``TrainConfig`` with the trial's
parameters applied: its own ``run_id``, its own folder under ``<reports>/hpo/<study>/runs/``, its
folds on the warm fold workers of one ``WorkerPool`` shared by all trials. The objective is the
mean over folds of the chosen metric on the validation segments (the summary's per-fold final
metrics). ``parallel`` trials run at once, each on its own thread; per-fold CPU/GPU shares are
shrunk where needed so that all their folds fit the cluster at the same time (``pack_resources``).

Pruning: one pump thread long-polls the EventHub for the study's events. An ``EpochTracker`` per
trial turns its ``epoch_metrics`` into intermediate values (step = epoch index, value = mean over
folds of the metric); when the pruner says so, the trial's run is cancelled (its fold actors stop
and are released) and the trial is told PRUNED. A run that fails (a diverging loss, a worker that
died more often than ``max_retries``) is told FAIL and the study goes on. Optuna trial states are
set in exactly one place, ``_StudyRunner._tell``.

Events: ``hpo_trial`` messages go through the hub as run ``hpo_<study>`` when a trial starts and
ends, and once more (``state="study_complete"``) when the study session ends. Results:
``<reports>/hpo/<study>/trials.csv`` and ``best_config.yaml`` (the best trial's exact config,
usable with ``orchestrator train --config``). Storage: an Optuna journal file in that folder by
default, or any Optuna RDB URL; running the same study again continues it.
"""

from __future__ import annotations

import argparse
import enum
import json
import logging
import math
import os
import re
import secrets
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna
import pandas as pd
import yaml
from optuna.storages import BaseStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from orchestrator.config import TrainConfig, config_from_mapping, format_validation_error
from orchestrator.errors import ConfigError, IllegalTransitionError, OrchestratorError
from orchestrator.lifecycle import Run, RunState
from orchestrator.messages import EPOCH_METRIC_FIELDS, TERMINAL_TYPES, HpoTrial, sanitize
from orchestrator.report_html import write_study_report
from orchestrator.reports import atomic_write_text, new_run_id
from orchestrator.search_space import (
    DEFAULT_SEARCH_SPACE,
    SearchSpace,
    contains,
    load_search_space,
    parse_search_space,
)

__all__ = [
    "HpoSpec",
    "StudyState",
    "StudyResult",
    "StudyHandle",
    "HpoService",
    "StudyConflictError",
    "UnknownStudyError",
    "EpochTracker",
    "run_study",
    "study_status",
    "pack_resources",
    "default_direction",
    "spec_from_mapping",
    "main",
]

log = logging.getLogger(__name__)

Listener = Callable[[list[dict[str, Any]]], None]
Direction = Literal["minimize", "maximize"]

_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# A study's trials are comparable only while these fields stay the same.
COMPARABLE_FIELDS = ("data", "use_cv", "folds", "window", "val_fraction", "epochs")
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
_EVENT_STATE = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
}
# Seconds a trial thread waits for the pump to see its run's terminal event (its last epochs).
_DRAIN_TIMEOUT_S = 10.0
_POLL_S = 0.5
# Sessions of this process that are running a study: their RUNNING trials are not stale.
_LIVE_SESSIONS: set[str] = set()


class StudyConflictError(OrchestratorError):
    """The study is already running in this process."""


class UnknownStudyError(OrchestratorError):
    """No study of that name is known (not running here, not in the storage)."""


def default_direction(metric: str) -> Direction | None:
    """minimize for losses and calibration error, maximize for AUC and DirAcc, else None."""
    if "auc" in metric.lower() or metric == "DirAcc":
        return "maximize"
    if metric.endswith(("nll", "bce", "brier", "loss")) or metric.startswith("ECE"):
        return "minimize"
    return None


# ---- the study's configuration ------------------------------------------------------------


class HpoSpec(BaseModel):
    """Everything that defines one HPO study session (the CLI flags, the POST /hpo body)."""

    model_config = ConfigDict(extra="forbid")

    study: str = Field("default", description="study name; the same name continues the study")
    trials: int = Field(20, ge=1, le=100_000, description="trials to run in this session")
    parallel: int = Field(1, ge=1, le=1024, description="trials at once")
    storage: str | None = Field(
        None,
        description="Optuna RDB URL (sqlite:///..., postgresql://...) or a journal file path; "
        "default <reports_dir>/hpo/<study>/study.journal",
    )
    metric: str = Field("val_nll", description="an epoch_metrics field, averaged over folds")
    direction: Direction | None = Field(None, description="default: from the metric")
    search_space: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {k: dict(v) for k, v in DEFAULT_SEARCH_SPACE.items()}
    )
    pruner: Literal["median", "hyperband", "successive_halving", "none"] = "median"
    pruner_startup_trials: int = Field(
        4, ge=0, description="completed trials before the median pruner prunes"
    )
    pruner_warmup_epochs: int = Field(1, ge=0, description="epochs before a trial can be pruned")
    sampler: Literal["tpe", "random"] = "tpe"
    sampler_seed: int | None = Field(None, ge=0)
    enqueue: list[dict[str, Any]] = Field(
        default_factory=list, description="parameter sets to try first (skipped if already tried)"
    )
    timeout_s: float | None = Field(None, gt=0, description="start no trial after this many s")
    config: TrainConfig = Field(
        default_factory=lambda: config_from_mapping({}), description="the base run config"
    )

    @model_validator(mode="after")
    def _check(self) -> "HpoSpec":
        if not _STUDY_NAME.match(self.study):
            raise ValueError(
                "study must be 1-64 characters of letters, digits, '_', '.', '-' (starting with a "
                f"letter or digit), got study={self.study!r}"
            )
        if self.metric not in EPOCH_METRIC_FIELDS:
            raise ValueError(
                f"metric must be an epoch_metrics field ({', '.join(EPOCH_METRIC_FIELDS)}), "
                f"got metric={self.metric!r}"
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

    Train fields may also come nested under ``config``. ``search_space`` may be a mapping or a
    path to a YAML file. Raises ``ConfigError`` naming the field.
    """
    hpo_fields = set(HpoSpec.model_fields) - {"config"}
    spec_values = {k: v for k, v in values.items() if k in hpo_fields}
    train_values = dict(values.get("config") or {})
    train_values.update({k: v for k, v in values.items() if k not in hpo_fields and k != "config"})
    config = config_from_mapping(train_values)
    space = spec_values.get("search_space")
    if isinstance(space, (str, Path)):
        load_search_space(space, config)  # names the file when it is missing or not YAML
        spec_values["search_space"] = yaml.safe_load(Path(space).read_text())
    try:
        return HpoSpec.model_validate({**spec_values, "config": config})
    except ValidationError as err:
        raise ConfigError(f"invalid HPO spec: {format_validation_error(err)}") from err


def pack_resources(config: TrainConfig, parallel: int, cluster: Mapping[str, float]) -> dict[str, float]:
    """Per-fold CPU/GPU shares under which ``parallel`` trials' folds all fit ``cluster`` at once.

    Fold actors hold their resources while they are alive (they stay warm in the pool), so
    ``parallel`` trials of K concurrent folds need ``parallel * K`` actors placed together.
    Returns only the fields that must shrink (rounded down to Ray's 1e-4 resource precision).
    """
    per_trial = min(config.total_folds, config.max_concurrent_folds or config.total_folds)
    slots = parallel * per_trial
    changes: dict[str, float] = {}
    for field_name, resource in (("cpus_per_fold", "CPU"), ("gpus_per_fold", "GPU")):
        wanted = float(getattr(config, field_name))
        have = float(cluster.get(resource, 0.0))
        if wanted > 0 and have > 0 and slots * wanted > have + 1e-9:
            share = math.floor(have / slots * 1e4) / 1e4
            if share <= 0:
                raise ConfigError(
                    f"parallel={parallel} trials x {per_trial} folds do not fit {have:g} {resource}"
                )
            changes[field_name] = share
    return changes


# ---- intermediate values for the pruner ------------------------------------------------------


class EpochTracker:
    """One run's events -> the pruner's intermediate values (pure; no Optuna, no Ray).

    Step ``e`` is the epoch index; its value is the mean over folds of ``metric`` at epoch ``e``
    (a fold that stopped early carries its last value forward; undefined values are left out).
    A step is settled, and returned once by ``observe``, when every fold has reported epoch
    ``e`` or completed, or when the run has ended.
    """

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.total_folds: int | None = None
        self._values: dict[int, dict[int, float | None]] = {}
        self._done: set[int] = set()
        self._ended = False
        self._next_step = 0

    def observe(self, event: Mapping[str, Any]) -> list[tuple[int, float]]:
        kind = event.get("type")
        if kind == "training_start":
            self.total_folds = int(event["total_folds"])
        elif kind == "epoch_metrics":
            value = event.get(self.metric)
            number = float(value) if isinstance(value, (int, float)) else math.nan
            self._values.setdefault(int(event["fold_id"]), {})[int(event["epoch"])] = (
                number if math.isfinite(number) else None
            )
        elif kind == "fold_complete":
            self._done.add(int(event["fold_id"]))
        elif kind in TERMINAL_TYPES:
            self._ended = True
        else:
            return []
        return self._settle()

    def _settle(self) -> list[tuple[int, float]]:
        last_epoch = max((max(v) for v in self._values.values() if v), default=-1)
        settled: list[tuple[int, float]] = []
        while self._next_step <= last_epoch and self._is_settled(self._next_step):
            value = self._mean_at(self._next_step)
            if value is not None:
                settled.append((self._next_step, value))
            self._next_step += 1
        return settled

    def _is_settled(self, step: int) -> bool:
        if self._ended:
            return True
        if self.total_folds is None:
            return False
        for fold in range(self.total_folds):
            epochs = self._values.get(fold, {})
            if step not in epochs and not (fold in self._done and epochs):
                return False
        return True

    def _mean_at(self, step: int) -> float | None:
        values = []
        for epochs in self._values.values():
            reached = [e for e in epochs if e <= step]
            if reached:
                value = epochs[max(reached)]
                if value is not None:
                    values.append(value)
        return sum(values) / len(values) if values else None


# ---- the study session -------------------------------------------------------------------------


class StudyState(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


_LEGAL_STUDY = {
    StudyState.PENDING: {StudyState.RUNNING, StudyState.FAILED, StudyState.CANCELLED},
    StudyState.RUNNING: {StudyState.COMPLETED, StudyState.FAILED, StudyState.CANCELLED},
    StudyState.COMPLETED: set(),
    StudyState.CANCELLED: set(),
    StudyState.FAILED: set(),
}


@dataclass
class StudyResult:
    """How a study session ended (the storage keeps every trial of every session)."""

    study: str
    state: StudyState
    trials_done: int
    trials_total: int
    session_trials: list[int]
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, Any] | None
    trials_csv: str
    best_config: str | None
    counts: dict[str, int]


@dataclass
class _Outcome:
    state: TrialState
    value: float | None = None
    error: str | None = None


@dataclass
class _TrialJob:
    trial: optuna.Trial
    number: int
    params: dict[str, Any]
    run_id: str
    run_dir: str
    tracker: EpochTracker
    started: float = field(default_factory=time.time)
    run: Run | None = None
    pruned: bool = False
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    terminal_seen: threading.Event = field(default_factory=threading.Event)


class _EventPump:
    """One long-poll loop over the hub for a whole study: routes each trial's events to its
    tracker and hands the study's events (its own and its trials') to the listener."""

    def __init__(self, hub: Any, since: int, study_run_id: str, listener: Listener | None) -> None:
        self._hub = hub
        self._since = since
        self._study_run_id = study_run_id
        self._listener = listener
        self._routes: dict[str, Callable[[dict[str, Any]], None]] = {}
        self._run_ids = {study_run_id}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._close_deadline = math.inf
        self._saw_end = False
        self._thread = threading.Thread(target=self._loop, name=f"hpo-pump-{study_run_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def route(self, run_id: str, callback: Callable[[dict[str, Any]], None]) -> None:
        with self._lock:
            self._routes[run_id] = callback
            self._run_ids.add(run_id)

    def unroute(self, run_id: str) -> None:
        with self._lock:
            self._routes.pop(run_id, None)

    def close(self, timeout: float = 10.0) -> None:
        """Return once the study's ``study_complete`` event went to the listener (or timeout)."""
        self._close_deadline = time.monotonic() + timeout
        self._closing.set()
        self._thread.join(timeout + _POLL_S)

    def _loop(self) -> None:
        import ray

        while True:
            try:
                reply = ray.get(self._hub.poll.remote(self._since, _POLL_S, None, limit=2000))
            except Exception:  # the hub or Ray went away: nothing more will come
                log.exception("HPO event pump: polling the hub failed")
                return
            if reply.get("gap") is not None:
                log.warning("HPO event pump fell behind the hub's history (gap at seq %s)", reply["gap"])
            events = reply["events"]
            self._since = reply["last_seq"]
            with self._lock:
                mine = [e for e in events if e.get("run_id") in self._run_ids]
                routes = dict(self._routes)
            for event in mine:
                callback = routes.get(event["run_id"])
                if callback is not None:
                    try:
                        callback(event)
                    except Exception:
                        log.exception("HPO: handling event %s of %s failed", event.get("type"), event["run_id"])
                if (
                    event["run_id"] == self._study_run_id
                    and event.get("type") == "hpo_trial"
                    and event.get("state") == "study_complete"
                ):
                    self._saw_end = True
            if mine and self._listener is not None:
                try:
                    self._listener(mine)
                except Exception:
                    log.exception("HPO: the event listener failed")
            if self._closing.is_set() and (
                self._saw_end or time.monotonic() > self._close_deadline
            ):
                return


def _open_storage(spec: HpoSpec) -> str | BaseStorage:
    """An RDB URL as is; otherwise an Optuna journal file (default in the study folder)."""
    if spec.storage and "://" in spec.storage:
        return spec.storage
    path = Path(spec.storage) if spec.storage else spec.study_dir / "study.journal"
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def _storage_label(spec: HpoSpec) -> str:
    if spec.storage:
        return spec.storage
    return str(spec.study_dir / "study.journal")


def _make_sampler(spec: HpoSpec, n_existing: int) -> optuna.samplers.BaseSampler:
    # A resumed study must not replay the first session's random draws: offset a given seed.
    seed = None if spec.sampler_seed is None else spec.sampler_seed + n_existing
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _make_pruner(spec: HpoSpec) -> optuna.pruners.BasePruner:
    if spec.pruner == "none":
        return optuna.pruners.NopPruner()
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=spec.config.epochs)
    if spec.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1)
    return optuna.pruners.MedianPruner(
        n_startup_trials=spec.pruner_startup_trials, n_warmup_steps=spec.pruner_warmup_epochs
    )


def _objective(summary: Mapping[str, Any], metric: str) -> tuple[float | None, str | None]:
    """Mean over folds of ``metric`` in the summary's per-fold final metrics, or why not."""
    values = []
    for fold in summary["folds"]:
        value = fold["metrics"].get(metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return None, f"{metric} is undefined (null) in fold {fold['fold_id']}"
        values.append(float(value))
    if not values:
        return None, "the run has no folds"
    return sum(values) / len(values), None


def _best(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no completed trial yet
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _StudyRunner:
    """One session of one study: ask, run, watch, tell; the results files and the events."""

    def __init__(
        self,
        spec: HpoSpec,
        hub: Any,
        pool: Any | None,
        listener: Listener | None,
        cancel: threading.Event,
        reuse_workers: bool,
        on_open: Callable[[optuna.Study, int], None] | None = None,
    ) -> None:
        self.spec = spec
        self.hub = hub
        self.listener = listener
        self.cancel = cancel
        self.reuse_workers = reuse_workers
        self.on_open = on_open
        self.session = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.state = StudyState.PENDING
        self._own_pool = pool is None and reuse_workers
        self.pool = pool
        self.study: optuna.Study | None = None
        self.space: SearchSpace = spec.distributions
        self.base = spec.config
        self.trials_total = 0
        self.session_trials: list[int] = []
        self._best_number: int | None = None
        self._publisher: Any = None

    # -- states

    def _transition(self, new: StudyState) -> None:
        if new not in _LEGAL_STUDY[self.state]:
            raise IllegalTransitionError(
                f"study {self.spec.study}: cannot go from {self.state.value} to {new.value}"
            )
        self.state = new

    # -- the session, top to bottom

    def run(self) -> StudyResult:
        import ray

        from orchestrator.hub import HubPublisher
        from orchestrator.execution.pool import WorkerPool

        _LIVE_SESSIONS.add(self.session)
        pump: _EventPump | None = None
        try:
            study = self._open_study()
            self.base = config_from_mapping(
                pack_resources(self.base, self.spec.parallel, ray.cluster_resources()), base=self.base
            )
            if self._own_pool:
                self.pool = WorkerPool()
            since = int(ray.get(self.hub.last_seq.remote()))
            # The study's own events (hpo_trial) go to <study_dir>/events.jsonl; its
            # study_complete message ends that stream in the hub.
            ray.get(self.hub.register_run.remote(self.spec.study_run_id, str(self.spec.study_dir)))
            pump = _EventPump(self.hub, since, self.spec.study_run_id, self.listener)
            pump.start()
            self._publisher = HubPublisher(
                self.hub, self.spec.study_run_id, f"hpo-{self.spec.study}-{self.session.rsplit(':', 1)[-1]}"
            )
            self._transition(StudyState.RUNNING)
            self._loop(study, pump)
            self._transition(StudyState.CANCELLED if self.cancel.is_set() else StudyState.COMPLETED)
        except BaseException:
            if self.state in (StudyState.PENDING, StudyState.RUNNING):
                self._transition(StudyState.FAILED)
            raise
        finally:
            _LIVE_SESSIONS.discard(self.session)
            try:
                if self.study is not None:
                    self._write_results()
                if self._publisher is not None:
                    self._publish_end()
                    self._publisher.flush(timeout=10.0)
            finally:
                if pump is not None:
                    pump.close()
                if self._own_pool and self.pool is not None:
                    self.pool.shutdown()
        return self.result()

    def _open_study(self) -> optuna.Study:
        spec = self.spec
        storage = _open_storage(spec)
        probe = optuna.create_study(
            storage=storage, study_name=spec.study, direction=spec.direction, load_if_exists=True
        )
        if probe.direction.name.lower() != spec.direction:
            raise ConfigError(
                f"study {spec.study!r} exists with direction={probe.direction.name.lower()}, "
                f"got direction={spec.direction}; use another --study name"
            )
        self._check_comparable(probe)
        study = optuna.load_study(
            study_name=spec.study,
            storage=storage,
            sampler=_make_sampler(spec, len(probe.trials)),
            pruner=_make_pruner(spec),
        )
        self.study = study
        self._fail_stale_trials(study)
        for params in spec.enqueue:
            study.enqueue_trial(params, skip_if_exists=True)
        finished = len(study.get_trials(deepcopy=False, states=_FINISHED))
        self.trials_total = finished + spec.trials
        best = _best(study)
        self._best_number = best.number if best else None
        if self.on_open is not None:
            self.on_open(study, self.trials_total)
        return study

    def _check_comparable(self, study: optuna.Study) -> None:
        attrs = study.user_attrs
        if "metric" not in attrs:
            study.set_user_attr("metric", self.spec.metric)
            study.set_user_attr("base_config", self.spec.config.model_dump(mode="json"))
            return
        if attrs["metric"] != self.spec.metric:
            raise ConfigError(
                f"study {self.spec.study!r} optimizes metric={attrs['metric']}, got "
                f"metric={self.spec.metric}; use another --study name"
            )
        before = attrs.get("base_config", {})
        now = self.spec.config.model_dump(mode="json")
        for name in COMPARABLE_FIELDS:
            if name in before and before[name] != now[name]:
                raise ConfigError(
                    f"study {self.spec.study!r} was run with {name}={before[name]!r}, got "
                    f"{name}={now[name]!r}: its trials would not be comparable; use another "
                    "--study name"
                )
        changed = sorted(k for k in now if k in before and before[k] != now[k])
        if changed:
            log.warning("study %s continues with changed base config fields: %s", self.spec.study, changed)

    def _fail_stale_trials(self, study: optuna.Study) -> None:
        """Trials left RUNNING by a process that died are told FAIL, and their params re-queued
        once (a trial that was itself such a retry is not re-queued again)."""
        host = socket.gethostname()
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = trial.user_attrs.get("session", "")
            owner_host, _, rest = owner.partition(":")
            owner_pid = int(rest.split(":")[0]) if rest.split(":")[0].isdigit() else None
            if owner_host != host or owner_pid is None:
                log.warning(
                    "study %s: trial %d is RUNNING in session %r on another host; left as is",
                    self.spec.study, trial.number, owner,
                )
                continue
            if owner in _LIVE_SESSIONS or (owner_pid != os.getpid() and _pid_alive(owner_pid)):
                continue
            reason = f"interrupted: the process running it ({owner}) ended before it finished"
            optuna.Trial(study, trial._trial_id).set_user_attr("error", reason)
            study.tell(trial.number, state=TrialState.FAIL)
            log.warning("study %s: trial %d %s; marked FAIL", self.spec.study, trial.number, reason)
            if "retry_of" not in trial.user_attrs and trial.params:
                study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})

    def _loop(self, study: optuna.Study, pump: _EventPump) -> None:
        """Keep ``parallel`` trials running until ``trials`` were started, then drain."""
        started = time.monotonic()
        launched = 0
        running: dict[Future[_Outcome], _TrialJob] = {}
        threads = ThreadPoolExecutor(self.spec.parallel, thread_name_prefix=f"hpo-{self.spec.study}")
        try:
            while True:
                timed_out = self.spec.timeout_s is not None and (
                    time.monotonic() - started > self.spec.timeout_s
                )
                while (
                    not self.cancel.is_set() and not timed_out
                    and launched < self.spec.trials and len(running) < self.spec.parallel
                ):
                    job = self._ask(study)
                    launched += 1
                    self._publish(job.number, "running", job.params, trial_run_id=job.run_id)
                    running[threads.submit(self._execute, job, pump)] = job
                if not running:
                    return
                try:
                    done, _ = wait(list(running), timeout=_POLL_S, return_when=FIRST_COMPLETED)
                except KeyboardInterrupt:  # Ctrl-C in the CLI: end like a cancel
                    log.warning("study %s: interrupted; cancelling the running trials", self.spec.study)
                    self.cancel.set()
                    done = set()
                if self.cancel.is_set():
                    self._cancel_runs(running.values())
                for future in done:
                    job = running.pop(future)
                    self._tell(study, job, self._result_of(future, job))
        except BaseException:
            # Whatever broke the loop: stop the running trials and record them before raising.
            self._cancel_runs(running.values())
            for future, job in running.items():
                try:
                    self._tell(study, job, self._result_of(future, job))
                except Exception:
                    log.exception("study %s: could not record trial %d", self.spec.study, job.number)
            raise
        finally:
            threads.shutdown(wait=True)

    @staticmethod
    def _cancel_runs(jobs: Iterable[_TrialJob]) -> None:
        for job in jobs:
            if job.run is not None:
                job.run.request_cancel()

    def _result_of(self, future: Future[_Outcome], job: _TrialJob) -> _Outcome:
        try:
            return future.result()
        except Exception as err:  # a bug in the trial thread: the study goes on
            log.exception("study %s: trial %d crashed", self.spec.study, job.number)
            return _Outcome(TrialState.FAIL, error=f"{type(err).__name__}: {err}")

    def _ask(self, study: optuna.Study) -> _TrialJob:
        trial = study.ask(fixed_distributions=self.space)
        run_id = f"hpo_{self.spec.study}_t{trial.number:04d}_{secrets.token_hex(3)}"
        run_dir = str(self.spec.study_dir / "runs" / run_id)
        trial.set_user_attr("session", self.session)
        trial.set_user_attr("run_id", run_id)
        trial.set_user_attr("run_dir", run_dir)
        self.session_trials.append(trial.number)
        return _TrialJob(
            trial=trial,
            number=trial.number,
            params=dict(trial.params),
            run_id=run_id,
            run_dir=run_dir,
            tracker=EpochTracker(self.spec.metric),
        )

    def _execute(self, job: _TrialJob, pump: _EventPump) -> _Outcome:
        """One trial's run, on its own thread. Never raises for a failing run."""
        from orchestrator.driver import execute_run
        from orchestrator.execution.pool import WorkerPool
        from orchestrator.execution.ray import RayExecutor, RaySink

        try:
            config = config_from_mapping(job.params, base=self.base)
        except ConfigError as err:
            return _Outcome(TrialState.FAIL, error=str(err))
        job.trial.set_user_attr("config", config.model_dump(mode="json"))
        run = Run(run_id=job.run_id, config=config, run_dir=job.run_dir)
        job.run = run
        if self.cancel.is_set():
            run.request_cancel()
        pool = self.pool if self.reuse_workers and self.pool is not None else WorkerPool()
        pump.route(job.run_id, lambda event: self._on_trial_event(job, event))
        try:
            execute_run(
                run,
                RaySink(self.hub),
                # a pruned trial is a cancel as a matter of course: its actors stop at their next
                # epoch and stay warm for the next trial (the pool releases idle ones later)
                RayExecutor(pool=pool, keep_workers_on_cancel=True),
                hpo_trial=job.number,
                extra_summary={"hpo": {
                    "study": self.spec.study,
                    "trial": job.number,
                    "params": job.params,
                    "metric": self.spec.metric,
                    "direction": self.spec.direction,
                }},
            )
            # The pump has the run's last epochs once it saw the terminal event.
            job.terminal_seen.wait(_DRAIN_TIMEOUT_S)
        finally:
            with job.lock:
                job.closed = True
            pump.unroute(job.run_id)
            if not self.reuse_workers:
                pool.shutdown()
        return self._outcome(job, run)

    def _on_trial_event(self, job: _TrialJob, event: dict[str, Any]) -> None:
        """Pump thread: intermediate values to Optuna; cancel the run when the pruner says so."""
        with job.lock:
            if job.closed:
                return
            steps = job.tracker.observe(event)
            if steps and not job.pruned:
                for step, value in steps:
                    job.trial.report(value, step)
                if job.trial.should_prune():
                    job.pruned = True
                    job.trial.set_user_attr("pruned_at_epoch", steps[-1][0])
                    if job.run is not None:
                        job.run.request_cancel()  # the executor stops and releases its actors
        if event.get("type") in TERMINAL_TYPES:
            job.terminal_seen.set()

    def _outcome(self, job: _TrialJob, run: Run) -> _Outcome:
        if job.pruned:
            return _Outcome(TrialState.PRUNED)
        if run.state is RunState.COMPLETED and run.summary_path:
            summary = json.loads(Path(run.summary_path).read_text())
            value, why = _objective(summary, self.spec.metric)
            if value is None:
                return _Outcome(TrialState.FAIL, error=why)
            return _Outcome(TrialState.COMPLETE, value=value)
        if run.state is RunState.CANCELLED:
            return _Outcome(TrialState.FAIL, error="cancelled with the study")
        return _Outcome(TrialState.FAIL, error=run.error or f"run ended {run.state.value}")

    def _tell(self, study: optuna.Study, job: _TrialJob, outcome: _Outcome) -> None:
        """The one place where a trial's Optuna state is set."""
        run = job.run
        attrs = {
            "run_state": run.state.value if run is not None else None,
            "summary_path": run.summary_path if run is not None else None,
            "error": outcome.error,
        }
        for key, value in attrs.items():
            if value is not None:
                job.trial.set_user_attr(key, value)
        if outcome.state is TrialState.COMPLETE:
            frozen = study.tell(job.trial, outcome.value)
        else:
            frozen = study.tell(job.trial, state=outcome.state)
        duration = time.time() - job.started
        self._publish(
            job.number, _EVENT_STATE[frozen.state], job.params,
            value=frozen.value, duration=duration, trial_run_id=job.run_id,
        )
        self._write_results()

    # -- events and results

    def _counts(self) -> tuple[int, int]:
        assert self.study is not None
        done = len(self.study.get_trials(deepcopy=False, states=_FINISHED))
        return done, max(self.trials_total, done)

    def _publish(
        self,
        number: int,
        state: str,
        params: dict[str, Any],
        *,
        value: float | None = None,
        duration: float | None = None,
        trial_run_id: str | None = None,
    ) -> None:
        assert self.study is not None
        best = _best(self.study)
        done, total = self._counts()
        self._publisher.publish(HpoTrial.model_validate({
            "study": self.spec.study,
            "trial": number,
            "state": state,
            "params": params,
            "value": value,
            "duration_seconds": duration,
            "best_value": best.value if best else None,
            "best_params": dict(best.params) if best else None,
            "trials_done": done,
            "trials_total": total,
            "trial_run_id": trial_run_id,
        }))

    def _publish_end(self) -> None:
        assert self.study is not None
        best = _best(self.study)
        self._publish(
            best.number if best else -1,
            "study_complete",
            dict(best.params) if best else {},
            value=best.value if best else None,
            trial_run_id=best.user_attrs.get("run_id") if best else None,
        )

    def _write_results(self) -> None:
        assert self.study is not None
        trials = self.study.get_trials(deepcopy=False)
        atomic_write_text(self.spec.study_dir / "trials.csv", _trials_frame(trials).to_csv(index=False))
        write_study_report(
            self.spec.study_dir, _trials_frame(trials).to_dict("records"), study=self.spec.study,
            metric=self.spec.metric, direction=str(self.spec.direction), state=self.state.value,
            trials_total=self._counts()[1],
        )
        best = _best(self.study)
        if best is not None and "config" in best.user_attrs:
            path = self.spec.study_dir / "best_config.yaml"
            if best.number != self._best_number or not path.exists():
                _write_best_config(path, self.spec, best)
                self._best_number = best.number

    def result(self) -> StudyResult:
        assert self.study is not None
        best = _best(self.study)
        trials = self.study.get_trials(deepcopy=False)
        done, total = self._counts()
        counts: dict[str, int] = {}
        for trial in trials:
            counts[trial.state.name.lower()] = counts.get(trial.state.name.lower(), 0) + 1
        best_config = self.spec.study_dir / "best_config.yaml"
        return StudyResult(
            study=self.spec.study,
            state=self.state,
            trials_done=done,
            trials_total=total,
            session_trials=list(self.session_trials),
            best_trial=best.number if best else None,
            best_value=best.value if best else None,
            best_params=dict(best.params) if best else None,
            trials_csv=str(self.spec.study_dir / "trials.csv"),
            best_config=str(best_config) if best_config.exists() else None,
            counts=counts,
        )


def _trials_frame(trials: Sequence[FrozenTrial]) -> pd.DataFrame:
    names: list[str] = []
    for trial in trials:
        names += [n for n in trial.params if n not in names]
    rows = []
    for trial in sorted(trials, key=lambda t: t.number):
        last = trial.last_step
        rows.append({
            "number": trial.number,
            "state": trial.state.name.lower(),
            "value": trial.value if trial.state is not TrialState.FAIL else None,
            "duration_seconds": trial.duration.total_seconds() if trial.duration else None,
            "datetime_start": trial.datetime_start.isoformat() if trial.datetime_start else None,
            "datetime_complete": trial.datetime_complete.isoformat() if trial.datetime_complete else None,
            "last_epoch": last,
            "last_intermediate_value": trial.intermediate_values.get(last) if last is not None else None,
            "run_id": trial.user_attrs.get("run_id"),
            "run_state": trial.user_attrs.get("run_state"),
            "summary_path": trial.user_attrs.get("summary_path"),
            "error": trial.user_attrs.get("error"),
            **{f"params_{n}": trial.params.get(n) for n in names},
        })
    columns = [
        "number", "state", "value", "duration_seconds", "datetime_start", "datetime_complete",
        "last_epoch", "last_intermediate_value", "run_id", "run_state", "summary_path", "error",
    ] + [f"params_{n}" for n in names]
    return pd.DataFrame(rows, columns=columns)


def _write_best_config(path: Path, spec: HpoSpec, best: FrozenTrial) -> None:
    header = (
        f"# Best trial of HPO study {spec.study!r}: trial {best.number}, "
        f"{spec.metric} = {best.value!r} ({spec.direction}), run {best.user_attrs.get('run_id')}\n"
        f"# Reproduce it: python -m orchestrator train --config {path}\n"
        f"# Tuned: {json.dumps(best.params)}\n"
    )
    body = yaml.safe_dump(best.user_attrs["config"], sort_keys=False)
    atomic_write_text(path, header + body)


# ---- entry points ----------------------------------------------------------------------------


def run_study(
    spec: HpoSpec,
    *,
    hub: Any | None = None,
    pool: Any | None = None,
    listener: Listener | None = None,
    cancel: threading.Event | None = None,
    reuse_workers: bool = True,
    on_open: Callable[[optuna.Study, int], None] | None = None,
) -> StudyResult:
    """Run ``spec.trials`` trials of the study to the end and return how it ended.

    Needs Ray initialized. ``hub`` defaults to the namespace's EventHub; ``pool`` to a fresh
    ``WorkerPool`` shut down at the end (pass the server's pool to share warm workers);
    ``listener`` sees the study's events (its own and its trials') as the hub releases them;
    setting ``cancel`` stops starting trials and cancels the running ones (told FAIL).
    ``reuse_workers=False`` gives each trial a fresh pool (the cold baseline of the benchmark).
    """
    if hub is None:
        from orchestrator.hub import get_or_create_hub

        hub = get_or_create_hub()
    runner = _StudyRunner(
        spec, hub, pool, listener, cancel or threading.Event(), reuse_workers, on_open
    )
    return runner.run()


def study_status(study_name: str, storage: str | BaseStorage) -> dict[str, Any]:
    """The trials table and the best trial of a stored study, JSON-ready (NaN as null)."""
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError as err:
        raise UnknownStudyError(f"no study named {study_name!r} in {storage}") from err
    return _status_of(study)


def _status_of(study: optuna.Study) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    frame = _trials_frame(trials)
    table = json.loads(frame.to_json(orient="records"))
    for row, trial in zip(table, sorted(trials, key=lambda t: t.number)):
        row["params"] = dict(trial.params)
        for key in [k for k in row if k.startswith("params_")]:
            del row[key]
    best = _best(study)
    status: dict[str, Any] = sanitize({
        "study": study.study_name,
        "metric": study.user_attrs.get("metric"),
        "direction": study.direction.name.lower(),
        "trials_done": sum(t.state in _FINISHED for t in trials),
        "trials_running": sum(t.state is TrialState.RUNNING for t in trials),
        "best": None if best is None else {
            "trial": best.number,
            "value": best.value,
            "params": dict(best.params),
            "run_id": best.user_attrs.get("run_id"),
            "summary_path": best.user_attrs.get("summary_path"),
        },
        "trials": table,
    })
    return status


@dataclass
class StudyHandle:
    """A study session started by ``HpoService``: its state, result and cancel switch."""

    spec: HpoSpec
    cancel_event: threading.Event = field(default_factory=threading.Event)
    state: StudyState = StudyState.PENDING
    result: StudyResult | None = None
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    study: optuna.Study | None = None
    trials_total: int | None = None
    thread: threading.Thread | None = None

    @property
    def done(self) -> bool:
        return self.state in (StudyState.COMPLETED, StudyState.CANCELLED, StudyState.FAILED)

    def cancel(self) -> bool:
        """Stop the study; False when it has already ended."""
        if self.done:
            return False
        self.cancel_event.set()
        return True

    def wait(self, timeout: float | None = None) -> StudyResult | None:
        if self.thread is not None:
            self.thread.join(timeout)
        return self.result


class HpoService:
    """Studies on background threads, for the API: ``start``, ``status``, ``cancel``.

    One session per study name at a time. Trials of all studies share ``pool`` (pass the
    RunManager's, so /train runs and trials reuse the same warm fold workers).
    """

    def __init__(
        self,
        hub: Any | None = None,
        *,
        pool: Any | None = None,
        listener: Listener | None = None,
        reports_dir: str = "reports",
    ) -> None:
        self.hub = hub
        self.pool = pool
        self.listener = listener
        self.reports_dir = reports_dir
        self._handles: dict[str, StudyHandle] = {}
        self._lock = threading.Lock()

    def start(self, spec: HpoSpec) -> StudyHandle:
        with self._lock:
            current = self._handles.get(spec.study)
            if current is not None and not current.done:
                raise StudyConflictError(
                    f"study {spec.study!r} is already running; cancel it "
                    f"(POST /hpo/{spec.study}/cancel) or wait for it to end"
                )
            handle = StudyHandle(spec=spec)
            self._handles[spec.study] = handle
        handle.thread = threading.Thread(
            target=self._run, args=(handle,), name=f"hpo-{spec.study}", daemon=True
        )
        handle.thread.start()
        return handle

    def _run(self, handle: StudyHandle) -> None:
        def opened(study: optuna.Study, trials_total: int) -> None:
            handle.study = study
            handle.trials_total = trials_total
            handle.state = StudyState.RUNNING

        try:
            handle.result = run_study(
                handle.spec, hub=self.hub, pool=self.pool, listener=self.listener,
                cancel=handle.cancel_event, on_open=opened,
            )
            handle.state = handle.result.state
        except Exception as err:
            log.exception("study %s failed", handle.spec.study)
            handle.error = str(err) if isinstance(err, OrchestratorError) else f"{type(err).__name__}: {err}"
            handle.state = StudyState.FAILED
        finally:
            handle.ended_at = time.time()

    def get(self, study: str) -> StudyHandle:
        with self._lock:
            handle = self._handles.get(study)
        if handle is None:
            raise UnknownStudyError(f"no study {study!r} was started by this server")
        return handle

    def status(self, study: str) -> dict[str, Any]:
        """The study's state, trials table and best trial (also for a study only in storage)."""
        with self._lock:
            handle = self._handles.get(study)
        if handle is not None and handle.study is not None:
            status = _status_of(handle.study)
        else:
            spec = handle.spec if handle is not None else None
            storage: str | BaseStorage
            if spec is not None:
                storage = _open_storage(spec)
            else:
                path = Path(self.reports_dir) / "hpo" / study / "study.journal"
                if not path.is_file():
                    raise UnknownStudyError(f"no study {study!r} (no {path})")
                storage = JournalStorage(JournalFileBackend(str(path)))
            try:
                status = study_status(study, storage)
            except UnknownStudyError:
                if handle is None:
                    raise
                status = {"study": study, "trials": [], "best": None, "trials_done": 0}
        status["state"] = handle.state.value if handle is not None else "idle"
        status["error"] = handle.error if handle is not None else None
        if handle is not None:
            status["trials_total"] = (
                handle.result.trials_total if handle.result else handle.trials_total
            )
            status["paths"] = {
                "trials_csv": str(handle.spec.study_dir / "trials.csv"),
                "best_config": str(handle.spec.study_dir / "best_config.yaml"),
            }
        return status

    def cancel(self, study: str) -> StudyHandle:
        handle = self.get(study)
        handle.cancel()
        return handle

    def studies(self) -> list[dict[str, Any]]:
        with self._lock:
            handles = list(self._handles.values())
        return [
            {"study": h.spec.study, "state": h.state.value, "started_at": h.started_at,
             "ended_at": h.ended_at, "error": h.error}
            for h in handles
        ]

    def shutdown(self, timeout: float = 30.0) -> None:
        with self._lock:
            handles = list(self._handles.values())
        for handle in handles:
            handle.cancel()
        for handle in handles:
            handle.wait(timeout)


# ---- CLI -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from orchestrator.cli import add_train_flags

    parser = argparse.ArgumentParser(
        prog="orchestrator hpo",
        description="Optuna hyperparameter search over whole walk-forward CV runs, trials in "
        "parallel on Ray. The train flags set the base config of every trial.",
    )
    add_train_flags(parser)
    g = parser.add_argument_group("search")
    g.add_argument("--study", default="default", help="study name; the same name continues it")
    g.add_argument("--trials", type=int, default=20, help="trials to run now (default 20)")
    g.add_argument("--parallel", type=int, default=1, help="trials at once (default 1)")
    g.add_argument("--storage", help="Optuna RDB URL or journal file (default "
                   "<reports>/hpo/<study>/study.journal)")
    g.add_argument("--metric", default="val_nll", help="epoch_metrics field, mean over folds")
    g.add_argument("--direction", choices=["minimize", "maximize"],
                   help="default: minimize for nll/bce/brier/loss/ECE, maximize for auc/DirAcc")
    g.add_argument("--search-space", help="YAML file: field -> {type, low, high, log | choices}")
    g.add_argument("--pruner", choices=["median", "hyperband", "successive_halving", "none"],
                   default="median")
    g.add_argument("--pruner-startup-trials", type=int, default=4,
                   help="completed trials before the median pruner prunes (default 4)")
    g.add_argument("--pruner-warmup-epochs", type=int, default=1,
                   help="epochs before a trial can be pruned (default 1)")
    g.add_argument("--sampler", choices=["tpe", "random"], default="tpe")
    g.add_argument("--sampler-seed", type=int)
    g.add_argument("--enqueue", action="append", default=[], metavar="JSON",
                   help="parameters to try first, e.g. '{\"lr\": 0.001}' (repeatable)")
    g.add_argument("--timeout", type=float, help="start no new trial after this many seconds")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    parser.add_argument("--events-out", help="write every event of the study as JSON lines")
    parser.add_argument("--quiet", action="store_true", help="no per-trial lines")
    return parser


class _TrialLines:
    """One line on stderr per trial start and end."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            if event.get("type") != "hpo_trial" or not self.enabled:
                continue
            state, best = event["state"], event.get("best_value")
            if state == "running":
                text = f"trial {event['trial']} started {json.dumps(event['params'])}"
            elif state == "study_complete":
                text = f"study {event['study']} complete: best trial {event['trial']} value {best}"
            else:
                text = (
                    f"trial {event['trial']} {state} value {event.get('value')} in "
                    f"{event.get('duration_seconds') or 0:.1f}s "
                    f"[{event['trials_done']}/{event['trials_total']}] best {best}"
                )
            print(text, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    from orchestrator.cli import config_from_args
    from orchestrator.console.progress import EventFileWriter
    from orchestrator.hub import get_or_create_hub
    from orchestrator.execution.cluster import ensure_ray

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    config = config_from_args(args)
    space: dict[str, Any] | None = None
    if args.search_space:
        load_search_space(args.search_space, config)  # a clear error before Ray starts
        space = yaml.safe_load(Path(args.search_space).read_text())
    enqueue = []
    for text in args.enqueue:
        try:
            enqueue.append(json.loads(text))
        except json.JSONDecodeError as err:
            raise ConfigError(f"--enqueue expects a JSON object, got {text!r}: {err}") from err
    values: dict[str, Any] = {
        "study": args.study, "trials": args.trials, "parallel": args.parallel,
        "storage": args.storage, "metric": args.metric, "direction": args.direction,
        "pruner": args.pruner, "pruner_startup_trials": args.pruner_startup_trials,
        "pruner_warmup_epochs": args.pruner_warmup_epochs, "sampler": args.sampler,
        "sampler_seed": args.sampler_seed, "enqueue": enqueue, "timeout_s": args.timeout,
    }
    if space is not None:
        values["search_space"] = space
    try:
        spec = HpoSpec.model_validate({**values, "config": config})
    except ValidationError as err:
        raise ConfigError(f"invalid HPO options: {format_validation_error(err)}") from err

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ensure_ray(args.address)
    hub = get_or_create_hub()
    writer = EventFileWriter(args.events_out) if args.events_out else None
    lines = _TrialLines(not args.quiet)

    def fanout(events: list[dict[str, Any]]) -> None:
        lines(events)
        if writer is not None:
            writer(events)

    try:
        result = run_study(spec, hub=hub, listener=fanout)
    finally:
        if writer is not None:
            writer.close()
    print(f"study {result.study}: {result.state.value}, {result.trials_done} trials done "
          f"({json.dumps(result.counts)})")
    if result.best_trial is not None:
        print(f"best trial {result.best_trial}: {spec.metric} = {result.best_value} "
              f"{json.dumps(result.best_params)}")
        print(f"best config: {result.best_config}")
    print(f"trials: {result.trials_csv}")
    return 130 if result.state is StudyState.CANCELLED else 0
