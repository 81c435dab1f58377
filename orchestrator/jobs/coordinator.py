"""A run's coordination as a detached Ray actor: ``execute_run`` with the Ray executor, in the cluster, so the API only submits and follows.

On an existing cluster (``serve --address``) each run gets a ``RunCoordinator``: a detached
actor of the orchestrator namespace named ``run:<run_id>``, with no CPU of its own
(``num_cpus=0``), that runs the run's driver code (``orchestrator.run.driver.execute_run``) with a
``RayExecutor`` whose fold actors it owns. The API process can die (``kill -9``) and come back:
the coordinator, its folds and the detached hub go on, and the run's events keep reaching the
hub and its job store. When the run has ended the coordinator ends itself.

``RunCoordinator`` is a plain class (``ray.remote`` is applied in ``launch_coordinator``); it
runs in its own worker process, so it takes the submitting server's working directory, and the
run's relative paths (data, reports) mean what they meant there.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from orchestrator.config import TrainConfig
from orchestrator.lifecycle import Run, RunState

__all__ = ["COORDINATOR_PREFIX", "RunCoordinator", "launch_coordinator", "find_coordinator"]

log = logging.getLogger(__name__)

COORDINATOR_PREFIX = "run:"
# After its run ended, a coordinator waits this long (for a last snapshot call) before ending.
_LINGER_S = 2.0


class RunCoordinator:
    """Runs one run to its end in the cluster, from its constructor on (a thread), so that the
    run goes on even when the server that launched it dies before asking for anything;
    ``result``, ``cancel`` and ``snapshot`` answer meanwhile."""

    def __init__(
        self,
        run_id: str,
        config_json: str,
        run_dir: str,
        created_at: float,
        cwd: str,
        hub_namespace: str,
        extra_summary: dict[str, Any] | None = None,
    ) -> None:
        os.chdir(cwd)  # this process is the coordinator's alone
        config = TrainConfig.model_validate_json(config_json)
        self.run = Run(run_id=run_id, config=config, run_dir=run_dir, created_at=created_at)
        self.hub_namespace = hub_namespace
        self._ended = threading.Event()
        threading.Thread(
            target=self._execute, args=(extra_summary,), name=f"run-{run_id}", daemon=True
        ).start()

    def _execute(self, extra_summary: dict[str, Any] | None) -> None:
        """Train the run to its end; the coordinator ends itself afterwards."""
        from orchestrator.events.actor import get_hub
        from orchestrator.events.publish import RaySink
        from orchestrator.execution.pool import WorkerPool
        from orchestrator.execution.ray import RayExecutor
        from orchestrator.run.driver import execute_run

        pool = WorkerPool()
        try:
            execute_run(
                self.run,
                RaySink(get_hub(self.hub_namespace)),
                RayExecutor(pool=pool),
                extra_summary=extra_summary,
            )
        except Exception as err:  # before the run could start (the hub gone): it fails, said so
            log.exception("run %s: its coordinator could not run it", self.run.run_id)
            if not self.run.done:
                self.run.transition(RunState.FAILED, error=f"the run's coordinator failed: {err}")
        finally:
            pool.shutdown()
            self._ended.set()
            threading.Timer(_LINGER_S, _end_this_actor).start()

    def result(self) -> dict[str, Any]:
        """Wait for the run's end; its final snapshot."""
        self._ended.wait()
        return self.run.snapshot()

    def cancel(self) -> bool:
        return self.run.request_cancel()

    def snapshot(self) -> dict[str, Any]:
        return self.run.snapshot()

    def pid(self) -> int:
        """This coordinator's process (an operator or a test that kills it needs its id)."""
        return os.getpid()


def _end_this_actor() -> None:
    import ray

    try:
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
    except Exception:  # never left running: the process goes either way
        log.exception("a run coordinator could not end itself; exiting its process")
        os._exit(0)


def launch_coordinator(run: Run, namespace: str, extra_summary: dict[str, Any] | None = None) -> Any:
    """Start ``run``'s detached coordinator in ``namespace`` (its hub's), which trains the run at
    once, and return its handle (``result`` waits for the end)."""
    import ray

    coordinator_class = ray.remote(RunCoordinator).options(
        name=COORDINATOR_PREFIX + run.run_id,
        namespace=namespace,
        lifetime="detached",
        num_cpus=0,
        max_concurrency=4,  # result, cancel and snapshot answer while the run trains
        max_restarts=0,
    )
    return coordinator_class.remote(
        run.run_id,
        run.config.model_dump_json(),
        run.run_dir,
        run.created_at,
        os.getcwd(),
        namespace,
        extra_summary,
    )


def find_coordinator(run_id: str, namespace: str) -> Any | None:
    """The running coordinator of ``run_id``, or None."""
    import ray

    try:
        return ray.get_actor(COORDINATOR_PREFIX + run_id, namespace=namespace)
    except ValueError:
        return None
