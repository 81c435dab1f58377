"""One session of a study: Optuna's own trial loop, each trial one CV run on the warm Ray workers.

Each trial is an ordinary run (``execute_run``) of the base ``TrainConfig`` with the trial's
parameters applied: its own ``run_id``, its own folder under ``<reports>/hpo/<study>/runs/``, its
folds on the warm fold workers of one ``WorkerPool`` shared by all trials. The objective is the
mean over folds of the metric on the validation segments. ``study.optimize(n_jobs=parallel)``
runs the trials, each on its own thread, and turns what the objective raises into the trial's
state: ``optuna.TrialPruned`` (the pruner stopped the run) into PRUNED, ``TrialFailed`` (the run
failed) into FAIL, so the study goes on. Its callback announces each ending (an ``hpo_trial``
event under run ``hpo_<study>``) and rewrites ``trials.csv`` / ``best_config.yaml``; a cancel
stops the loop there and cancels the running trials' runs.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from orchestrator.config import config_from_mapping
from orchestrator.errors import ConfigError
from orchestrator.events.stream import EventStream, StreamThread
from orchestrator.execution.base import FoldExecutor
from orchestrator.hpo.backend import TrialBackend, TrialGate, backend_for
from orchestrator.hpo.pruning import TrialPruning
from orchestrator.hpo.results import (
    EVENT_STATE,
    FINISHED,
    StudyResult,
    TrialFailed,
    best_trial,
    objective_value,
    quiet_trial_failures,
    session_result,
    standing,
    write_study_files,
)
from orchestrator.hpo.selection_files import StudySelection, selection_notification
from orchestrator.hpo.space import suggest
from orchestrator.hpo.spec import HpoSpec, pack_resources
from orchestrator.hpo.state import StudyState
from orchestrator.hpo.storage import LIVE_SESSIONS, open_study
from orchestrator.hpo.tracking import Listener, StudyEvents
from orchestrator.lifecycle import Run, RunState
from orchestrator.messages import HpoTrial

__all__ = ["TrialFailed", "TrialGate", "run_study"]

log = logging.getLogger(__name__)

# Seconds a trial waits for its run's terminal event to be delivered (its last epochs).
_DRAIN_TIMEOUT_S = 10.0
# How often the calling thread looks at the cancel switch while the trials run.
_POLL_S = 0.5


def run_study(
    spec: HpoSpec,
    *,
    hub: Any | None = None,
    pool: Any | None = None,
    listener: Listener | None = None,
    cancel: threading.Event | None = None,
    reuse_workers: bool = True,
    on_open: Callable[[optuna.Study, int], None] | None = None,
    gate: TrialGate | None = None,
) -> StudyResult:
    """Run ``spec.trials`` trials of the study to the end and return how it ended.

    Needs Ray initialized. ``hub`` defaults to the namespace's EventHub; ``pool`` to a fresh
    ``WorkerPool`` shut down at the end (pass the server's pool to share warm workers);
    ``listener`` sees the study's events (its own and its trials') as the hub releases them;
    setting ``cancel`` stops starting trials and cancels the running ones (told FAIL).
    ``reuse_workers=False`` gives each trial a fresh pool (the cold baseline of the benchmark).
    ``on_open`` gets the opened study and the session's ``trials_total`` before the first trial.
    ``gate``: each trial's run waits there for its turn (a server's job queue, with
    ``spec.priority``) before it trains.
    """
    backend = backend_for(spec.config.executor, hub, pool, reuse_workers)
    session = _StudySession(spec, backend, listener, cancel or threading.Event(), gate)
    return session.run(on_open)


class _StudySession:
    """Set up, ``study.optimize``, close: the objective, its callback and the study's events."""

    def __init__(
        self,
        spec: HpoSpec,
        backend: TrialBackend,
        listener: Listener | None,
        cancel: threading.Event,
        gate: TrialGate | None = None,
    ) -> None:
        self.spec = spec
        self.gate = gate
        self.backend = backend
        self.cancel = cancel
        self.session = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.space = spec.distributions
        self.base = spec.config
        self.events = StudyEvents(spec.study_run_id, listener)
        self.study: optuna.Study | None = None
        self.trials_total = 0
        self.session_trials: list[int] = []
        self._announced: set[int] = set()  # session trials whose ending event is out
        self._runs: dict[int, Run] = {}  # the running trials' runs, by trial number
        self._callback_error: BaseException | None = None  # stops the running trials
        self._lock = threading.Lock()
        self._best_number: int | None = None
        self._publisher: Any = None
        self._selection = StudySelection()  # the completed trials' rows, read once each

    def run(self, on_open: Callable[[optuna.Study, int], None] | None) -> StudyResult:
        LIVE_SESSIONS.add(self.session)
        follower: StreamThread | None = None
        try:
            self.study = study = open_study(self.spec)
            self.trials_total = len(study.get_trials(deepcopy=False, states=FINISHED)) + self.spec.trials
            best = best_trial(study)
            self._best_number = best.number if best else None
            if on_open is not None:
                on_open(study, self.trials_total)
            cluster = self.backend.cluster_resources()
            if cluster is not None:
                self.base = config_from_mapping(
                    pack_resources(self.base, self.spec.parallel, cluster), base=self.base
                )
            # Follow the hub from its last event on, before the study's run exists.
            stream = EventStream(self.backend.hub_client(), poll_timeout_s=_POLL_S, batch_limit=2000)
            stream.subscribe(lambda batch: self.events.receive(batch.events))
            follower = StreamThread(stream, name=f"hpo-{self.spec.study}")
            follower.start()
            # The study's own events (hpo_trial) go to <study_dir>/events.jsonl; its
            # study_complete message ends that stream in the hub.
            sink = self.backend.sink
            sink.register_run(self.spec.study_run_id, str(self.spec.study_dir))
            self._publisher = sink.publisher(
                self.spec.study_run_id, f"hpo-{self.spec.study}-{self.session.rsplit(':', 1)[-1]}"
            )
            if not self.cancel.is_set():  # cancelled while opening: no trial at all
                self._optimize(study)
        finally:
            LIVE_SESSIONS.discard(self.session)
            try:
                if self.study is not None:
                    self._write_results()
                if self._publisher is not None:
                    self._publish_end()
                    self._publisher.flush(timeout=10.0)
            finally:
                if follower is not None:
                    self.events.wait_ended(_DRAIN_TIMEOUT_S)
                    follower.stop(_DRAIN_TIMEOUT_S)
                self.backend.close()
        return session_result(
            self.study,
            self.spec,
            StudyState.CANCELLED if self.cancel.is_set() else StudyState.COMPLETED,
            self.trials_total,
            self.session_trials,
        )

    # -- the loop

    def _optimize(self, study: optuna.Study) -> None:
        """``study.optimize`` on its own thread, so that this one can carry a cancel (or Ctrl-C
        in the CLI) to the running trials' runs while Optuna waits for them."""
        failure: list[BaseException] = []
        quiet_trial_failures()

        def optimize() -> None:
            try:
                study.optimize(
                    self._objective,
                    n_trials=self.spec.trials,
                    timeout=self.spec.timeout_s,
                    n_jobs=self.spec.parallel,
                    catch=(TrialFailed,),
                    callbacks=[self._trial_ended],
                )
            except BaseException as err:
                failure.append(err)

        thread = threading.Thread(target=optimize, name=f"hpo-{self.spec.study}", daemon=True)
        thread.start()
        while thread.is_alive():
            try:
                thread.join(_POLL_S)
            except KeyboardInterrupt:  # Ctrl-C in the CLI: end like a cancel
                log.warning("study %s: interrupted; cancelling the running trials", self.spec.study)
                self.cancel.set()
            if self._stopping():
                with self._lock:
                    runs = list(self._runs.values())
                for run in runs:
                    run.request_cancel()
        # Optuna may stop on the callback's error without raising it (the stop flag wins).
        error = failure[0] if failure else self._callback_error
        if error is not None:
            raise error

    def _stopping(self) -> bool:
        return self.cancel.is_set() or self._callback_error is not None

    def _objective(self, trial: optuna.Trial) -> float:
        """One trial: its run on the warm pool, then its value, ``TrialPruned`` or ``TrialFailed``."""
        # The owner first: a trial whose process dies from here on is found stale on resume.
        run_id = f"hpo_{self.spec.study}_t{trial.number:04d}_{secrets.token_hex(3)}"
        run_dir = str(self.spec.study_dir / "runs" / run_id)
        for key, value in (("session", self.session), ("run_id", run_id), ("run_dir", run_dir)):
            trial.set_user_attr(key, value)
        params = suggest(trial, self.space)
        with self._lock:
            self.session_trials.append(trial.number)
            self._publish(trial.number, "running", params, trial_run_id=run_id)
        pruning = TrialPruning(trial, self.spec.metric)
        run: Run | None = None
        error: str | None = None
        try:
            config = config_from_mapping(params, base=self.base)
            trial.set_user_attr("config", config.model_dump(mode="json"))
            run = Run(
                run_id=run_id,
                config=config,
                run_dir=run_dir,
                priority=self.spec.priority,
                state=RunState.PENDING if self.gate is None else RunState.QUEUED,
            )
            self._execute(trial.number, params, run, pruning)
        except ConfigError as err:  # an invalid parameter combination
            error = str(err)
        except Exception as err:  # a bug in the trial: the study goes on
            log.exception("study %s: trial %d crashed", self.spec.study, trial.number)
            error = f"{type(err).__name__}: {err}"
        finally:
            pruned = pruning.close()
        return self._conclude(trial, run, pruned, error)

    def _execute(self, number: int, params: dict[str, Any], run: Run, pruning: TrialPruning) -> None:
        pruning.run = run
        executor = self.backend.executor()
        with self._lock:
            self._runs[number] = run
        if self._stopping():
            run.request_cancel()
        self.events.route(run.run_id, pruning.observe)
        try:
            if self.gate is not None and not self.gate.wait_turn(
                run, study=self.spec.study, cancel=self.cancel
            ):
                return  # cancelled while queued: the run ended cancelled
            try:
                self._train(number, params, run, executor)
            finally:
                if self.gate is not None:
                    self.gate.done(run)
            pruning.wait_ended(_DRAIN_TIMEOUT_S)
        finally:
            self.events.unroute(run.run_id)
            with self._lock:
                del self._runs[number]
            self.backend.end_trial(executor)

    def _train(self, number: int, params: dict[str, Any], run: Run, executor: FoldExecutor) -> None:
        from orchestrator.run.driver import execute_run

        s = self.spec
        hpo = dict(study=s.study, trial=number, params=params, metric=s.metric, direction=s.direction)
        execute_run(run, self.backend.sink, executor, hpo_trial=number, extra_summary={"hpo": hpo})

    def _conclude(self, trial: optuna.Trial, run: Run | None, pruned: bool, error: str | None) -> float:
        """The one place a trial's outcome is decided; Optuna turns the exceptions into states."""
        if run is not None:
            trial.set_user_attr("run_state", run.state.value)
            if run.summary_path:
                trial.set_user_attr("summary_path", run.summary_path)
        if error is None and pruned:
            raise optuna.TrialPruned()
        value: float | None = None
        if error is None and run is not None:
            value, error = self._value_of(run)
        if value is None:
            trial.set_user_attr("error", error)
            raise TrialFailed(error)
        return value

    def _value_of(self, run: Run) -> tuple[float | None, str | None]:
        if run.state is RunState.COMPLETED and run.summary_path:
            summary = json.loads(Path(run.summary_path).read_text())
            return objective_value(summary, self.spec.metric)
        if run.state is RunState.CANCELLED:
            return None, "cancelled with the study"
        return None, run.error or f"run ended {run.state.value}"

    def _trial_ended(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna's callback once a trial is told: stop on cancel, announce it, rewrite files."""
        if self._stopping():
            study.stop()
        try:
            with self._lock:
                self._announced.add(trial.number)
                duration = trial.duration.total_seconds() if trial.duration else None
                self._publish(
                    trial.number,
                    EVENT_STATE[trial.state],
                    dict(trial.params),
                    value=trial.value,
                    duration=duration,
                    trial_run_id=trial.user_attrs.get("run_id"),
                    error=trial.user_attrs.get("error") if trial.state is TrialState.FAIL else None,
                )
                self._write_results()
        except BaseException as err:
            self._callback_error = err
            study.stop()
            raise

    # -- events and results

    def _publish(
        self,
        number: int,
        state: str,
        params: dict[str, Any],
        *,
        value: float | None = None,
        duration: float | None = None,
        trial_run_id: str | None = None,
        error: str | None = None,
    ) -> None:
        """One ``hpo_trial`` event, under ``_lock``. Trials that ended together are announced
        one at a time: a session trial whose ending is not out yet counts neither in
        ``trials_done`` nor for ``best_value``."""
        assert self.study is not None
        pending = set(self.session_trials) - self._announced
        done, best = standing(self.study.get_trials(deepcopy=False), str(self.spec.direction), pending)
        self._publisher.publish(
            HpoTrial.model_validate(
                {
                    "study": self.spec.study,
                    "trial": number,
                    "state": state,
                    "params": params,
                    "value": value,
                    "duration_seconds": duration,
                    "best_value": best.value if best else None,
                    "best_params": dict(best.params) if best else None,
                    "trials_done": done,
                    "trials_total": max(self.trials_total, done),
                    "trial_run_id": trial_run_id,
                    "error": error,
                }
            )
        )

    def _publish_end(self) -> None:
        """The selection warning, if any (docs/hpo.md), then ``study_complete``, which ends the stream."""
        assert self.study is not None
        best = best_trial(self.study)
        with self._lock:
            warning = selection_notification(self._selection.report, self.spec.study)
            if warning is not None:
                self._publisher.publish(warning)
            self._publish(
                best.number if best else -1,
                "study_complete",
                dict(best.params) if best else {},
                value=best.value if best else None,
                trial_run_id=best.user_attrs.get("run_id") if best else None,
            )

    def _write_results(self) -> None:
        assert self.study is not None
        self._best_number = write_study_files(
            self.study,
            self.spec,
            cancelled=self.cancel.is_set(),
            trials_total=self.trials_total,
            best_written=self._best_number,
            selection=self._selection,
        )
