"""The job queue on a real server over the session's 2-CPU Ray instance (issue 13's acceptance).

Runs of one CPU per fold and one fold at a time: two train at once, the others wait; a
priority-5 run submitted while two priority-0 runs wait starts before both; every run completes
with its own events in order; ``GET /queue`` and ``GET /runs`` show the order at each stage.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.api_fixtures import ApiServer, assert_legal_run

pytest_plugins = ["tests.api_fixtures"]
pytestmark = pytest.mark.usefixtures("release_idle_actors")

ONE_CPU_ONE_FOLD = {"cpus_per_fold": 1, "max_concurrent_folds": 1, "epochs": 30}


def submit(http: httpx.Client, **body: Any) -> dict[str, Any]:
    response = http.post("/train", json={**ONE_CPU_ONE_FOLD, **body})
    assert response.status_code == 202, response.text
    return dict(response.json())


def queue_order(http: httpx.Client) -> list[str]:
    body = http.get("/queue").json()
    assert [entry["position"] for entry in body["queue"]] == list(range(1, len(body["queue"]) + 1))
    return [entry["run_id"] for entry in body["queue"]]


def positions(http: httpx.Client, run_ids: list[str]) -> dict[str, int | None]:
    listed = {r["run_id"]: r for r in http.get("/runs", params={"limit": 50}).json()["runs"]}
    return {run_id: listed[run_id]["queue_position"] for run_id in run_ids}


def cli_queue(capsys: pytest.CaptureFixture[str], url: str) -> list[str]:
    """The run ids of ``orchestrator runs``'s queue table, in its order."""
    from orchestrator.console.main import main

    capsys.readouterr()
    assert main(["runs", "--url", url]) == 0
    out = capsys.readouterr().out
    if "\n\nqueue: " not in out:
        return []
    return [line.split()[1] for line in out.split("\n\nqueue: ")[1].splitlines()[2:] if line.strip()]


def events_of(http: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    return list(http.get(f"/runs/{run_id}/events", params={"limit": 10_000}).json()["events"])


def span(events: list[dict[str, Any]]) -> tuple[float, float]:
    """When the run's first and last epochs ended."""
    epochs = [e["ts"] for e in events if e["type"] == "epoch_metrics"]
    return epochs[0], epochs[-1]


def test_three_runs_on_two_cpus_and_a_priority_run_that_overtakes(
    two_warm_workers: ApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    api_server = two_warm_workers  # the first two runs start together on warm fold actors
    with httpx.Client(base_url=api_server.url, timeout=30) as http:
        # the second twice as long as the first: the two free their CPUs at distinct times
        first, second, third = submit(http), submit(http, epochs=60), submit(http)
        assert first["status"] != "queued" and second["status"] != "queued"
        assert first["queue_position"] is None and second["queue_position"] is None
        assert (third["status"], third["queue_position"]) == ("queued", 1)
        a, b, c = first["run_id"], second["run_id"], third["run_id"]
        assert queue_order(http) == [c] == cli_queue(capsys, api_server.url)
        d = submit(http)["run_id"]
        assert queue_order(http) == [c, d] == cli_queue(capsys, api_server.url)
        urgent = submit(http, priority=5)
        p = urgent["run_id"]
        assert (urgent["status"], urgent["queue_position"], urgent["priority"]) == ("queued", 1, 5)
        assert queue_order(http) == [p, c, d] == cli_queue(capsys, api_server.url)
        assert positions(http, [a, b, p, c, d]) == {a: None, b: None, p: 1, c: 2, d: 3}
        reasons = {e["run_id"]: e["reason"] for e in http.get("/queue").json()["queue"]}
        assert reasons[p].startswith("waiting for CPU")
        status = http.get("/").json()
        assert status["queued"] == [p, c, d]
        for _ in range(200):  # both admitted runs show as running once their data is loaded
            status = http.get("/").json()
            if len(status["running"]) == 2:
                break
            time.sleep(0.05)
        assert set(status["running"]) == {a, b} and status["active_run_id"] == status["running"][0]
        assert status["queued"] == [p, c, d]

        for run_id in (a, b, p, c, d):
            assert api_server.wait_done(run_id, timeout=240)["state"] == "completed"
        assert queue_order(http) == [] == cli_queue(capsys, api_server.url)
        runs = {run_id: events_of(http, run_id) for run_id in (a, b, p, c, d)}

    for run_id, events in runs.items():
        assert_legal_run(events, folds=2, epochs=60 if run_id == b else ONE_CPU_ONE_FOLD["epochs"])
    # the first two trained at the same time: each one's epochs fall inside the other's span
    (a0, a1), (b0, b1) = span(runs[a]), span(runs[b])
    assert a0 < b1 and b0 < a1
    # the priority run started when the first of them ended, before the two that waited longer
    starts = {run_id: events[0]["ts"] for run_id, events in runs.items()}  # dataset_ready
    assert starts[p] >= min(a1, b1)
    assert starts[p] < starts[c] < starts[d]
    assert starts[c] >= max(a1, b1) or starts[c] >= span(runs[p])[1]


def test_a_study_s_trials_wait_in_the_queue_and_interleave_with_a_plain_run(api_server: ApiServer) -> None:
    with httpx.Client(base_url=api_server.url, timeout=30) as http:
        wide = submit(http, max_concurrent_folds=2, epochs=100)  # both CPUs: what follows waits
        study = http.post(
            "/hpo",
            json={
                "study": "queued-study",
                "trials": 2,
                "parallel": 1,
                "pruner": "none",
                "sampler": "random",
                "sampler_seed": 1,
                "priority": 2,
                "search_space": {"lr": {"type": "categorical", "choices": [0.001]}},
                "config": {"cpus_per_fold": 1, "max_concurrent_folds": 1, "epochs": 15},
            },
        )
        assert study.status_code == 202, study.text
        plain = submit(http)["run_id"]
        for _ in range(200):  # until the first trial is in the queue
            waiting = http.get("/queue").json()["queue"]
            if any(entry["kind"] == "trial" for entry in waiting):
                break
            time.sleep(0.05)
        trial = waiting[0]
        assert (trial["kind"], trial["study"], trial["priority"]) == ("trial", "queued-study", 2)
        assert [entry["run_id"] for entry in waiting] == [trial["run_id"], plain]  # priority 2 first
        listed = {r["run_id"]: r for r in http.get("/runs").json()["runs"]}
        assert listed[trial["run_id"]]["state"] == "queued" and listed[trial["run_id"]]["queue_position"] == 1

        assert api_server.wait_done(wide["run_id"], timeout=240)["state"] == "completed"
        assert api_server.wait_done(plain, timeout=240)["state"] == "completed"
        for _ in range(600):
            status = http.get("/hpo/queued-study").json()
            if status["state"] not in ("pending", "running"):
                break
            time.sleep(0.2)
        assert status["state"] == "completed" and status["trials_done"] == 2, status
        trial_runs = [t["run_id"] for t in status["trials"]]
        events = {run_id: events_of(http, run_id) for run_id in [plain, *trial_runs]}
    for run_id, got in events.items():
        assert_legal_run(got, folds=2, epochs=ONE_CPU_ONE_FOLD["epochs"] if run_id == plain else 15)

    # the plain run trained beside a trial, on the other CPU: admitted together when the wide run
    # ended, each started before the other ended (by seq: the hub's one order)
    def seqs(run_id: str) -> tuple[int, int]:
        return events[run_id][0]["seq"], events[run_id][-1]["seq"]

    p0, p1 = seqs(plain)
    assert any(t0 < p1 and p0 < t1 for t0, t1 in map(seqs, trial_runs))
