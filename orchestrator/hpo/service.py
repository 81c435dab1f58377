"""Studies on background threads for the API: start, status, cancel, one session per study name.

``HpoService`` keeps a ``StudyHandle`` per study it started (its state, result and cancel
switch); ``status`` also reads a study that is only in storage (after a restart: state ``idle``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage

from orchestrator.errors import OrchestratorError
from orchestrator.hpo.backend import TrialGate
from orchestrator.hpo.results import StudyResult, status_of
from orchestrator.hpo.selection_files import SELECTION_FILE, read_selection, selection_view
from orchestrator.hpo.spec import HpoSpec
from orchestrator.hpo.state import TERMINAL_STUDY_STATES, StudyState, study_transition
from orchestrator.hpo.storage import journal_storage, open_storage
from orchestrator.hpo.study import run_study
from orchestrator.hpo.tracking import Listener
from orchestrator.store.urls import describe

__all__ = [
    "StudyConflictError",
    "UnknownStudyError",
    "StudyHandle",
    "HpoService",
    "study_status",
]

log = logging.getLogger(__name__)


class StudyConflictError(OrchestratorError):
    """The study is already running in this process."""


class UnknownStudyError(OrchestratorError):
    """No study of that name is known (not running here, not in the storage)."""


def study_status(
    study_name: str, storage: str | BaseStorage, study_dir: str | Path | None = None
) -> dict[str, Any]:
    """The trials table and the best trial of a stored study, JSON-ready (NaN as null), and with
    ``study_dir`` (its folder) its ``selection``: the selection diagnostics as ``selection_view``
    shows them (null before a trial completed)."""
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError as err:
        where = describe(storage) if isinstance(storage, str) else type(storage).__name__
        raise UnknownStudyError(f"no study named {study_name!r} in {where}") from err  # no password
    status = status_of(study)
    if study_dir is not None:
        status["selection"] = selection_view(read_selection(study_dir))
    return status


@dataclass
class StudyHandle:
    """A study session started by ``HpoService``: its state, result and cancel switch.

    ``state`` changes only through ``advance`` (the session's thread); others read it.
    """

    spec: HpoSpec
    cancel_event: threading.Event = field(default_factory=threading.Event)
    result: StudyResult | None = None
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    study: optuna.Study | None = None
    trials_total: int | None = None
    thread: threading.Thread | None = None
    _state: StudyState = StudyState.PENDING

    @property
    def state(self) -> StudyState:
        return self._state

    def advance(self, new: StudyState) -> None:
        """Move to ``new``; IllegalTransitionError (naming the expected state) if not legal."""
        self._state = study_transition(self.spec.study, self._state, new)

    @property
    def done(self) -> bool:
        return self._state in TERMINAL_STUDY_STATES

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
    RunManager's, so /train runs and trials reuse the same warm fold workers) and, with ``gate``
    (the RunManager), wait in its job queue next to plain runs.
    """

    def __init__(
        self,
        hub: Any | None = None,
        *,
        pool: Any | None = None,
        listener: Listener | None = None,
        reports_dir: str = "reports",
        default_storage: str | None = None,
        gate: TrialGate | None = None,
    ) -> None:
        self.hub = hub
        self.gate = gate  # the server's RunManager: trials wait in its job queue
        self.pool = pool
        self.listener = listener
        self.reports_dir = reports_dir
        # a study without its own storage goes here (the job store's database: one file for both)
        self.default_storage = default_storage
        self._handles: dict[str, StudyHandle] = {}
        self._lock = threading.Lock()

    def start(self, spec: HpoSpec) -> StudyHandle:
        if spec.storage is None and self.default_storage is not None:
            spec = spec.model_copy(update={"storage": self.default_storage})
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
            handle.advance(StudyState.RUNNING)

        try:
            handle.result = run_study(
                handle.spec,
                hub=self.hub,
                pool=self.pool,
                listener=self.listener,
                cancel=handle.cancel_event,
                on_open=opened,
                gate=self.gate,
            )
            handle.advance(handle.result.state)
        except Exception as err:
            if isinstance(err, OrchestratorError):  # a refusal (a changed space or data): one line
                log.warning("study %s failed: %s", handle.spec.study, err)
            else:
                log.exception("study %s failed", handle.spec.study)
            handle.error = str(err) if isinstance(err, OrchestratorError) else f"{type(err).__name__}: {err}"
            if not handle.done:
                handle.advance(StudyState.FAILED)
        finally:
            handle.ended_at = time.time()

    def get(self, study: str) -> StudyHandle:
        with self._lock:
            handle = self._handles.get(study)
        if handle is None:
            raise UnknownStudyError(f"no study {study!r} was started by this server")
        return handle

    def status(self, study: str) -> dict[str, Any]:
        """The study's state, trials table, best trial and selection diagnostics (also for a study
        only in storage)."""
        with self._lock:
            handle = self._handles.get(study)
        if handle is not None and handle.study is not None:
            status = status_of(handle.study)
        elif handle is not None and not handle.done:
            # its thread is opening the storage: a second opener of a new SQLite database races
            # it to create Optuna's tables ("table studies already exists" fails the study)
            status = {"study": study, "trials": [], "best": None, "trials_done": 0}
        else:
            storage: str | BaseStorage
            if handle is not None:
                storage = open_storage(handle.spec)
            else:
                path = Path(self.reports_dir) / "hpo" / study / "study.journal"
                if path.is_file():
                    storage = journal_storage(path)
                elif self.default_storage is not None:
                    storage = self.default_storage
                else:
                    raise UnknownStudyError(f"no study {study!r} (no {path})")
            try:
                status = study_status(study, storage)
            except UnknownStudyError:
                if handle is None:
                    raise
                status = {"study": study, "trials": [], "best": None, "trials_done": 0}
        study_dir = handle.spec.study_dir if handle is not None else Path(self.reports_dir) / "hpo" / study
        status["selection"] = selection_view(read_selection(study_dir))
        status["state"] = handle.state.value if handle is not None else "idle"
        status["error"] = handle.error if handle is not None else None
        if handle is not None:
            status["trials_total"] = handle.result.trials_total if handle.result else handle.trials_total
            status["paths"] = {
                "trials_csv": str(handle.spec.study_dir / "trials.csv"),
                "best_config": str(handle.spec.study_dir / "best_config.yaml"),
                "selection": str(handle.spec.study_dir / SELECTION_FILE),
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
            {
                "study": h.spec.study,
                "state": h.state.value,
                "started_at": h.started_at,
                "ended_at": h.ended_at,
                "error": h.error,
            }
            for h in handles
        ]

    def shutdown(self, timeout: float = 30.0) -> None:
        with self._lock:
            handles = list(self._handles.values())
        for handle in handles:
            handle.cancel()
        for handle in handles:
            handle.wait(timeout)
