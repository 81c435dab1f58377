"""Opening a study in its storage: journal or RDB, sampler and pruner, comparability, stale trials.

What a continued study may change is ``orchestrator.hpo.resume``'s (checked before any trial).

Running the same study again continues it: the storage keeps every trial. Trials a process that
died left RUNNING are failed (and retried once) by ``fail_stale_trials``: Optuna's heartbeat and
``RetryFailedTrialCallback`` do this for an RDB storage only, and the default is a journal file.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import optuna
from optuna.storages import BaseStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from orchestrator.errors import ConfigError
from orchestrator.hpo.pruning import make_pruner
from orchestrator.hpo.resume import check_continuation
from orchestrator.hpo.spec import HpoSpec
from orchestrator.store.lease import pid_alive
from orchestrator.store.urls import parse_url

__all__ = [
    "LIVE_SESSIONS",
    "open_storage",
    "journal_storage",
    "open_study",
    "fail_stale_trials",
]

log = logging.getLogger(__name__)

# Sessions of this process that are running a study: their RUNNING trials are not stale.
LIVE_SESSIONS: set[str] = set()


def journal_storage(path: Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(path)))


def open_storage(spec: HpoSpec) -> str | BaseStorage:
    """An RDB URL as is; otherwise an Optuna journal file (default in the study folder)."""
    if spec.storage and "://" in spec.storage:
        parse_url(spec.storage)  # a password that needs percent-encoding: one line, never shown
    if spec.storage and spec.storage.startswith("sqlite:"):
        # the job store writes the same file: wait for its lock rather than fail at once
        return optuna.storages.RDBStorage(spec.storage, engine_kwargs={"connect_args": {"timeout": 30}})
    if spec.storage and "://" in spec.storage:
        return spec.storage
    path = Path(spec.storage) if spec.storage else spec.study_dir / "study.journal"
    path.parent.mkdir(parents=True, exist_ok=True)
    return journal_storage(path)


def _make_sampler(spec: HpoSpec, n_existing: int) -> optuna.samplers.BaseSampler:
    # A resumed study must not replay the first session's random draws: offset a given seed.
    seed = None if spec.sampler_seed is None else spec.sampler_seed + n_existing
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # a batch's trials are asked before any is told: the constant liar keeps them apart
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def open_study(spec: HpoSpec) -> optuna.Study:
    """Create or continue the spec's study, with its sampler and pruner; its queue holds
    ``spec.enqueue`` (parameters already tried are skipped)."""
    storage = open_storage(spec)
    probe = optuna.create_study(
        storage=storage, study_name=spec.study, direction=spec.direction, load_if_exists=True
    )
    if probe.direction.name.lower() != spec.direction:
        raise ConfigError(
            f"study {spec.study!r} exists with direction={probe.direction.name.lower()}, "
            f"got direction={spec.direction}; use another --study name"
        )
    check_continuation(probe, spec)  # before any trial: a changed space, data or metric
    study = optuna.load_study(
        study_name=spec.study,
        storage=storage,
        sampler=_make_sampler(spec, len(probe.trials)),
        pruner=make_pruner(spec),
    )
    fail_stale_trials(study)
    for params in spec.enqueue:
        study.enqueue_trial(params, skip_if_exists=True)
    return study


def fail_stale_trials(study: optuna.Study) -> None:
    """Trials left RUNNING by a process of this host that is gone are told FAIL, and their
    params re-queued once (a trial that was itself such a retry is not re-queued again).

    The owner is the trial's ``session`` attribute, ``host:pid:token``. Trials of live sessions
    (here or in another process) and of other hosts are left alone.
    """
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get("session", "")
        owner_host, _, rest = owner.partition(":")
        pid_text = rest.split(":")[0]
        if owner_host != host or not pid_text.isdigit():
            log.warning(
                "study %s: trial %d is RUNNING in session %r on another host; left as is",
                study.study_name,
                trial.number,
                owner,
            )
            continue
        if owner in LIVE_SESSIONS or (int(pid_text) != os.getpid() and pid_alive(int(pid_text))):
            continue
        reason = f"interrupted: the process running it ({owner}) ended before it finished"
        optuna.Trial(study, trial._trial_id).set_user_attr("error", reason)
        study.tell(trial.number, state=TrialState.FAIL)
        log.warning("study %s: trial %d %s; marked FAIL", study.study_name, trial.number, reason)
        if "retry_of" not in trial.user_attrs and trial.params:
            study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})
