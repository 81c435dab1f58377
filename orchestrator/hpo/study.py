"""One session of a study: Optuna's ask-and-tell in batches, each trial one CV run, a batch's runs
trained together.

Each trial is an ordinary run of the base config with the trial's parameters applied (its own
``run_id``, folder under ``<reports>/hpo/<study>/runs/``, events and summary); its value is the
mean over folds of the metric on the validation segments. ``parallel`` trials are asked at once
and their runs trained in one executor call: folds of trials that share an architecture train as
one stacked model (DESIGN 9) on the warm workers of one ``WorkerPool``, pipelined on Ray
(``hpo.finisher``). ``_tell`` decides each outcome (value, PRUNED: its models left the stack, or
FAIL) and announces it (``hpo_trial`` under run ``hpo_<study>``); the study's files are rewritten
once per batch; a cancel stops asking and cancels running trials.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from orchestrator.config import config_from_mapping
from orchestrator.errors import ConfigError
from orchestrator.events.stream import EventStream, StreamThread
from orchestrator.hpo.backend import TrialBackend, TrialGate, backend_for
from orchestrator.hpo.finisher import DeferredDriver, Finisher, TrialEntry
from orchestrator.hpo.pruning import TrialPruning
from orchestrator.hpo.results import (
    EVENT_STATE,
    FINISHED,
    StudyResult,
    best_trial,
    session_result,
    trial_event,
    trial_outcome,
    write_study_files,
)
from orchestrator.hpo.selection_files import StudySelection, selection_notification
from orchestrator.hpo.space import suggest
from orchestrator.hpo.spec import HpoSpec, pack_resources
from orchestrator.hpo.state import StudyState
from orchestrator.hpo.storage import LIVE_SESSIONS, open_study
from orchestrator.hpo.tracking import Listener, StudyEvents
from orchestrator.lifecycle import Run, RunState

if TYPE_CHECKING:
    from orchestrator.run.driver import RunDriver

__all__ = ["TrialGate", "run_study"]

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
            cluster = self.backend.cluster_resources()
            if cluster is not None:  # a job queue holds each trial's share: shrink them for it
                shrink = self.gate is not None or self.base.pack == 1
                changes = pack_resources(self.base, self.spec.parallel, cluster, shrink=shrink)
                self.base = config_from_mapping(changes, base=self.base)
            if self.gate is None:  # (a job queue admits each trial's own; local: nothing to start)
                self.backend.prestart(self.base, self.spec.parallel)  # they start while Optuna opens
            self.study = study = open_study(self.spec)
            self.trials_total = len(study.get_trials(deepcopy=False, states=FINISHED)) + self.spec.trials
            best = best_trial(study)
            self._best_number = best.number if best else None
            if on_open is not None:
                on_open(study, self.trials_total)
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

    def _optimize(self, study: optuna.Study) -> None:
        """The session's trials (``_batches``) on their own thread, so that this one can carry a
        cancel (or Ctrl-C in the CLI) to the running trials' runs while they train."""
        failure: list[BaseException] = []

        def optimize() -> None:
            try:
                self._batches(study)
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
        error = failure[0] if failure else self._callback_error
        if error is not None:
            raise error

    def _stopping(self) -> bool:
        return self.cancel.is_set() or self._callback_error is not None

    def _batches(self, study: optuna.Study) -> None:
        """Optuna's ask-and-tell, ``parallel`` trials at a time: each batch asked at once (TPE's
        constant liar keeps its members apart), trained together (folds packed by architecture:
        DESIGN 9) and told, until the session's trials are done, its timeout has passed or it is
        cancelled. Pipelined with ``parallel`` >= 2 on Ray (``hpo.finisher``): once a batch's
        folds have trained, the next is asked and trains while a ``Finisher`` ends and tells the
        last, in a fixed order: batch N+1 is asked after batch N-1 is told, before batch N is."""
        started, asked = time.monotonic(), 0
        pipelined = self.spec.parallel >= 2 and self.backend.name == "ray"
        finisher = Finisher(f"hpo-{self.spec.study}-finish") if pipelined else None
        trained: list[TrialEntry] = []  # the last batch, when it is told later
        told: Future[None] | None = None
        try:
            while asked < self.spec.trials and not self._stopping():
                if self.spec.timeout_s is not None and time.monotonic() - started >= self.spec.timeout_s:
                    break
                if told is not None:
                    told.result()  # batch N-1 is told before batch N+1 is asked
                if finisher is not None and self.gate is None:  # (a gate's turns need the finisher)
                    finisher.hold()  # the workers wait for the next batch: it goes first
                size = min(self.spec.parallel, self.spec.trials - asked)
                trials = [study.ask() for _ in range(size)]
                asked += size
                entries = [self._start_trial(trial) for trial in trials]
                if finisher is not None and trained:
                    told = finisher.submit(self._tell_batch, study, trained)
                trained = entries
                try:
                    self._train_batch([entry for entry in entries if entry.run is not None], finisher)
                except Exception as err:  # a bug around the batch: its trials fail, the study goes on
                    log.exception("study %s: a batch of trials crashed", self.spec.study)
                    for entry in entries:
                        entry.error = entry.error or f"{type(err).__name__}: {err}"
                if finisher is not None:
                    finisher.release()  # (done already where the batch's runs were prepared)
                else:
                    self._tell_batch(study, entries)
        finally:
            if finisher is not None:
                if trained:
                    finisher.submit(self._tell_batch, study, trained)
                finisher.close()

    def _tell_batch(self, study: optuna.Study, entries: list[TrialEntry]) -> None:
        """A trained batch's last events awaited, turns given back, trials told, files rewritten."""
        try:
            for entry in entries:
                if entry.run is not None:
                    if entry.trained:
                        entry.pruning.wait_ended(_DRAIN_TIMEOUT_S)
                    if entry.admitted and self.gate is not None:
                        self.gate.done(entry.run)
                    self.events.unroute(entry.run.run_id)
            for entry in entries:
                self._tell(study, entry)
            with self._lock:
                self._write_results()
        except BaseException as err:
            self._callback_error = err
            raise

    def _start_trial(self, trial: optuna.Trial) -> TrialEntry:
        """A trial's parameters, run and pruning, announced as running."""
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
        entry = TrialEntry(trial, params, pruning)
        try:
            config = config_from_mapping(params, base=self.base)
        except ConfigError as err:  # an invalid parameter combination
            entry.error = str(err)
            return entry
        trial.set_user_attr("config", config.model_dump(mode="json"))
        entry.run = entry.pruning.run = Run(
            run_id=run_id,
            config=config,
            run_dir=run_dir,
            priority=self.spec.priority,
            state=RunState.PENDING if self.gate is None else RunState.QUEUED,
        )
        with self._lock:
            self._runs[trial.number] = entry.run
        if self._stopping():
            entry.run.request_cancel()
        self.events.route(run_id, entry.pruning.observe)
        return entry

    def _train_batch(self, entries: list[TrialEntry], finisher: Finisher | None) -> None:
        """The batch's runs, each through the gate (a server's job queue), trained in one
        executor call; with a ``finisher``, their driver work after training is left to it."""
        try:
            for entry in entries:
                assert entry.run is not None
                entry.admitted = self.gate is None or self.gate.wait_turn(
                    entry.run, study=self.spec.study, cancel=self.cancel
                )  # else cancelled while queued: the run ended cancelled
            admitted = [entry for entry in entries if entry.admitted]
            if admitted:
                from orchestrator.run.driver import RunPhases, execute_runs

                drivers: list[RunPhases] = [
                    self._driver(entry) if finisher is None else DeferredDriver(self._driver(entry), finisher)
                    for entry in admitted
                ]
                executor = self.backend.executor()
                try:  # the finisher goes on once the runs are prepared
                    execute_runs(drivers, executor, finisher.release if finisher else None)
                finally:
                    self.backend.end_trial(executor)
                for entry in admitted:
                    entry.trained = True
        finally:
            with self._lock:
                for entry in entries:
                    self._runs.pop(entry.trial.number, None)

    def _driver(self, entry: TrialEntry) -> RunDriver:
        from orchestrator.run.driver import RunDriver  # the API imports this module, never torch

        assert entry.run is not None
        spec, number = self.spec, entry.trial.number
        hpo = {"study": spec.study, "trial": number, "params": entry.params, "metric": spec.metric}
        summary = {"hpo": {**hpo, "direction": spec.direction}}
        return RunDriver(entry.run, self.backend.sink, extra_summary=summary, hpo_trial=number)

    def _tell(self, study: optuna.Study, entry: TrialEntry) -> None:
        """The one place a trial's outcome is decided and told to Optuna, then announced."""
        trial, run = entry.trial, entry.run
        if run is not None:
            trial.set_user_attr("run_state", run.state.value)
            if run.summary_path:
                trial.set_user_attr("summary_path", run.summary_path)
        state, value, error = trial_outcome(run, entry.pruning.close(), entry.error, self.spec.metric)
        if state is TrialState.FAIL:
            trial.set_user_attr("error", error)
            log.warning("study %s: trial %d failed: %s", self.spec.study, trial.number, error)
        self._trial_ended(study.tell(trial, value, state=state))

    def _trial_ended(self, trial: FrozenTrial) -> None:
        """After a trial is told: announce it."""
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

    def _publish(self, number: int, state: str, params: dict[str, Any], **fields: Any) -> None:
        """One ``hpo_trial`` event, under ``_lock``; ``fields``: ``results.trial_event``'s keywords."""
        assert self.study is not None
        pending = set(self.session_trials) - self._announced
        event = trial_event(
            self.study, self.spec, self.trials_total, pending, number, state, params, **fields
        )
        self._publisher.publish(event)

    def _publish_end(self) -> None:
        """The selection warning, if any (docs/hpo.md), then ``study_complete``, which ends the stream."""
        assert self.study is not None
        best = best_trial(self.study)
        with self._lock:
            if (warning := selection_notification(self._selection.report, self.spec.study)) is not None:
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
