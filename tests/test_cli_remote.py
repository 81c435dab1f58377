"""``submit``, ``runs``, ``cancel`` and ``hpo --url`` against a real server (no Ray: executor local).

The server is the real app on uvicorn with a job store, a RunManager, an HpoService and a token;
the commands run through ``orchestrator.console.main.main`` (one ``submit --watch`` as its own process, as a
script would run it). Checks that need the job queue (``GET /queue``, a second run while one is
active, ``priority`` in the body) skip, saying so, on a server that answers 404 on ``/queue``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from api.app import ApiSettings, create_app
from api.serving import BackgroundServer
from orchestrator.console.hpo_server import TrialLines
from orchestrator.console.jobs import queue_table, runs_table
from orchestrator.console.main import main
from orchestrator.events.hub import EventHub
from orchestrator.events.publish import InProcessSink
from orchestrator.events.recorder import open_recorder
from orchestrator.events.stream import LocalHubClient
from orchestrator.hpo import HpoService
from orchestrator.jobs.manager import RunManager

pytest.register_assert_rewrite("tests.api_fixtures")
from tests.api_fixtures import bars_and_store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "cli-s3cret"
# The server's base config: the CLI's own defaults differ (min_samples, folds, epochs), so a
# run's config tells whether the command sent only the fields it was given.
BASE = {"min_samples": 500, "lookback": 10, "folds": 2, "epochs": 2, "patience": 10_000, "executor": "local"}
LONG = ["--epochs", "400"]  # a run that is still training when a test acts on it


@dataclass
class Served:
    url: str
    manager: RunManager
    hpo: HpoService


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from orchestrator.store import JobStore

    base, url = bars_and_store(tmp_path_factory.mktemp("cli-remote"), BASE, seed=7)
    recorder = open_recorder(url)
    hub = EventHub(recorder=recorder)
    manager = RunManager(InProcessSink(hub), record=hub.record_run)
    hpo = HpoService(hub, reports_dir=base.reports_dir, default_storage=url)
    settings = ApiSettings(
        reports_dir=base.reports_dir,
        base_config=base,
        token=TOKEN,
        data_roots=(str(Path(base.data).parent),),  # bars.csv is a name bodies may give
        close_timeout_s=3.0,
    )
    server = BackgroundServer(
        create_app(LocalHubClient(hub), manager, settings, hpo=hpo, store=JobStore.open(url))
    ).start()
    try:
        yield Served(server.url, manager, hpo)
    finally:
        server.stop()
        hpo.shutdown()
        manager.shutdown()
        recorder.close()


@pytest.fixture(autouse=True)
def token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_TOKEN", TOKEN)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``orchestrator ARGV`` in this process: exit code, stdout, stderr."""
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def get(served: Served, path: str) -> httpx.Response:
    return httpx.get(f"{served.url}{path}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)


def wait_state(served: Served, run_id: str, states: set[str], timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run: dict[str, Any] = get(served, f"/runs/{run_id}").json()
        if run["state"] in states:
            return run
        assert time.monotonic() < deadline, f"run {run_id} still {run['state']} after {timeout} s"
        time.sleep(0.1)


# ---- without a server --------------------------------------------------------------------------


def test_runs_table_marks_queued_runs_and_the_queue_table_keeps_its_order() -> None:
    now = time.mktime((2025, 3, 4, 12, 0, 0, 0, 0, -1))
    runs: list[dict[str, Any]] = [
        {
            "run_id": "run_c",
            "state": "queued",
            "queue_position": 1,
            "priority": 5,
            "created_at": now,
            "ended_at": None,
            "progress": {"epochs_done": 0, "epochs_total": 0},
        },
        {
            "run_id": "run_b",
            "state": "running",
            "queue_position": None,
            "priority": 0,
            "started_at": now - 65,
            "ended_at": None,
            "progress": {"epochs_done": 3, "epochs_total": 10},
        },
        {
            "run_id": "run_a",
            "state": "completed",
            "created_at": now - 86_400 * 2,
            "ended_at": now - 86_400,
            "progress": {"epochs_done": 10, "epochs_total": 10},
        },
    ]
    lines = runs_table(runs, now=now).splitlines()
    assert lines[0].split() == ["RUN", "STATE", "QUEUE", "PRIORITY", "EPOCHS", "STARTED", "ENDED"]
    assert lines[1].split() == ["run_c", "queued", "#1", "5", "-", "-", "-"]
    assert lines[2].split() == ["run_b", "running", "-", "0", "3/10", "11:58:55", "-"]
    assert lines[3].split()[:5] == ["run_a", "completed", "-", "-", "10/10"]
    assert lines[3].split()[5:] == ["03-02", "12:00", "03-03", "12:00"]  # other days: the date
    queue = [
        {
            "run_id": "run_c",
            "position": 1,
            "priority": 5,
            "waited_s": 3.2,
            "kind": "run",
            "study": None,
            "reason": "needs 1 CPU, 0 free",
        },
        {
            "run_id": "run_d",
            "position": 2,
            "priority": 0,
            "waited_s": 3725,
            "kind": "trial",
            "study": "s1",
            "reason": "behind run_c",
        },
    ]
    table = queue_table(queue).splitlines()
    assert table[0].split() == ["POS", "RUN", "PRIORITY", "KIND", "WAITED", "WAITS", "FOR"]
    assert table[1].split() == ["1", "run_c", "5", "run", "3s", "needs", "1", "CPU,", "0", "free"]
    assert table[2].split() == ["2", "run_d", "0", "trial", "of", "s1", "1h02m", "behind", "run_c"]


def test_trial_lines_say_each_trial_once_with_the_running_best() -> None:
    lines = TrialLines()
    row = {"number": 0, "state": "running", "params": {"lr": 0.01}}
    status: dict[str, Any] = {"direction": "minimize", "trials_total": 3, "trials": [row]}
    assert lines.new_lines(status) == ['trial 0 started {"lr": 0.01}']
    assert lines.new_lines(status) == []
    done = [
        {**row, "state": "complete", "value": 0.5, "duration_seconds": 1.25},
        {
            "number": 1,
            "state": "fail",
            "params": {},
            "value": None,
            "duration_seconds": 2.0,
            "error": "cancelled with the study",
        },
        {"number": 2, "state": "complete", "params": {}, "value": 0.75, "duration_seconds": 1.0},
    ]
    assert lines.new_lines({**status, "trials": done}) == [
        "trial 0 completed value 0.5 in 1.2s [1/3] best 0.5",
        "trial 1 failed value None in 2.0s [2/3] best 0.5: cancelled with the study",
        "trial 2 completed value 0.75 in 1.0s [3/3] best 0.5",
    ]
    assert lines.new_lines({**status, "trials": done}) == []


def test_a_priority_out_of_range_is_refused_before_anything_is_posted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    nowhere = "http://127.0.0.1:9"  # nothing listens: a request would say "cannot reach"
    for argv in (["--priority", "101"], ["--set", "priority=-101"], ["--set", 'priority="high"']):
        code, out, err = cli(capsys, "submit", "--url", nowhere, *argv)
        assert code == 2 and out == ""
        assert "error: priority must be an integer from -100 to 100 (higher first), got priority=" in err, err


def test_a_path_of_this_machine_as_data_or_a_storage_is_refused_before_anything_is_posted(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    nowhere = "http://127.0.0.1:9"  # nothing listens: a request would say "cannot reach"
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {tmp_path / 'bars.csv'}\n")
    for argv in (
        ["submit", "--data", "/srv/bars.csv"],
        ["submit", "--data", "../bars.csv"],
        ["submit", "--config", str(config)],
        ["hpo", "--trials", "1", "--data", "/srv/bars.csv"],
    ):
        code, out, err = cli(capsys, *argv, "--url", nowhere)
        assert code == 2 and out == "", argv
        assert "error: data: " in err and "is not a data name" in err and "serve --data-root" in err, err
    code, out, err = cli(capsys, "hpo", "--url", nowhere, "--storage", str(tmp_path / "x.journal"))
    assert code == 2 and "--storage only apply to a study run here" in err, err


def test_an_unreachable_server_exits_2_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["submit"], ["runs"], ["cancel", "run_x"], ["hpo", "--trials", "1"]):
        code, out, err = cli(capsys, *argv, "--url", "http://127.0.0.1:9")
        assert code == 2 and out == "", argv
        assert "error: cannot reach the server at http://127.0.0.1:9" in err, err
    code, _, err = cli(capsys, "runs", "--url", "ws://127.0.0.1:8000/ws")
    assert code == 2 and "--url must be http://HOST:PORT" in err


# ---- against the server ------------------------------------------------------------------------


def test_submit_sends_only_the_fields_given_and_runs_shows_the_run(
    served: Served, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("seed: 11\nlr: 0.002\n")
    code, out, err = cli(
        capsys, "submit", "--url", served.url, "--config", str(config), "--seed", "12", "--set", "hidden=8"
    )
    assert code == 0, err
    run_id = out.splitlines()[0]
    assert out == f"{run_id}\n" and run_id.startswith("run_")
    assert f"run {run_id}: " in err
    run = served.manager.wait(run_id, 120).snapshot()
    assert run["state"] == "completed", run["error"]
    # given: the file's lr, the flag's seed over the file's, --set; the rest: the server's base
    assert (run["config"]["seed"], run["config"]["lr"], run["config"]["hidden"]) == (12, 0.002, 8)
    assert (run["config"]["min_samples"], run["config"]["epochs"]) == (500, 2)

    code, out, _ = cli(capsys, "runs", "--url", served.url)
    assert code == 0
    row = next(line.split() for line in out.splitlines() if line.startswith(run_id))
    # every snapshot has a priority once the queue is in (today's live snapshots have none)
    assert row[1:5] == ["completed", "-", "0", "4/4"]
    code, out, _ = cli(capsys, "runs", "--url", served.url, "--json", "--limit", "1")
    assert code == 0 and httpx.Response(200, content=out).json()["runs"][0]["run_id"] == run_id


def test_submit_watch_prints_the_run_id_alone_and_exits_with_the_run(served: Served) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ORCHESTRATOR_TOKEN": TOKEN}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "submit",
            "--url",
            served.url,
            "--seed",
            "3",
            "--watch",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip()
    assert run_id.startswith("run_") and "\n" not in run_id
    assert "training complete: 2 folds" in done.stderr, done.stderr
    assert get(served, f"/runs/{run_id}").json()["state"] == "completed"


def test_refusals_print_the_servers_error_and_exit_2(
    served: Served, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = cli(capsys, "submit", "--url", served.url, "--set", "no_such_field=1")
    assert code == 2 and out == ""
    assert "no_such_field" in err and "(HTTP 422 from POST /train)" in err, err
    code, _, err = cli(capsys, "cancel", "run_nope", "--url", served.url)
    assert code == 2 and "no run with run_id='run_nope' (HTTP 404" in err, err
    code, _, err = cli(capsys, "runs", "--url", served.url, "--token", "wrong")
    assert code == 2 and "(HTTP 401 from GET /runs)" in err, err
    monkeypatch.delenv("ORCHESTRATOR_TOKEN")
    code, _, err = cli(capsys, "runs", "--url", served.url)
    assert code == 2 and "(HTTP 401 from GET /runs)" in err, err


def test_submit_names_data_under_the_servers_data_root(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "submit", "--url", served.url, "--data", "bars.csv", "--epochs", "1")
    assert code == 0, err
    run = served.manager.wait(out.strip(), 120).snapshot()
    assert run["state"] == "completed" and Path(run["config"]["data"]).name == "bars.csv", run["error"]
    code, _, err = cli(capsys, "submit", "--url", served.url, "--data", "elsewhere.csv")
    assert code == 2 and "data: no data file named 'elsewhere.csv' under this server's data roots" in err


def test_cancel_a_running_run_then_again_once_it_has_ended(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "submit", "--url", served.url, *LONG)
    assert code == 0, err
    run_id = out.strip()
    wait_state(served, run_id, {"running"})
    code, out, err = cli(capsys, "cancel", run_id, "--url", served.url)
    assert code == 0, err
    assert out.startswith(f"run {run_id}: cancel requested")
    assert served.manager.wait(run_id, 120).state.value == "cancelled"
    code, out, err = cli(capsys, "cancel", run_id, "--url", served.url)
    assert code == 2 and out == ""
    assert f"run {run_id} has already ended (cancelled) (HTTP 409" in err, err


def test_queued_runs_in_runs_and_cancel_while_queued(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    # each run's one fold at a time asks for every CPU of this machine: one run trains at a time
    whole_machine = ["--cpus-per-fold", str(os.cpu_count() or 1)]
    ids = []
    for priority in ("0", "0", "5"):
        code, out, err = cli(
            capsys, "submit", "--url", served.url, *LONG, *whole_machine, "--priority", priority
        )
        assert code == 0, err
        ids.append(out.strip())
    try:
        queue = get(served, "/queue").json()["queue"]
        waiting = [entry["run_id"] for entry in queue]
        assert waiting and waiting[0] == ids[2], queue  # priority 5 first
        assert "queued at queue position 1 (priority 5)" in err, err
        code, out, _ = cli(capsys, "runs", "--url", served.url)
        assert code == 0
        runs_part, queue_part = out.split("\n\nqueue: ")
        queued = [line.split() for line in runs_part.splitlines() if " queued " in line]
        assert {row[0] for row in queued} == set(waiting)
        assert all(row[2] == f"#{waiting.index(row[0]) + 1}" for row in queued)
        order = [line.split()[1] for line in queue_part.splitlines()[2:]]
        assert order == waiting
        code, out, _ = cli(capsys, "cancel", waiting[-1], "--url", served.url)
        assert code == 0
        assert wait_state(served, waiting[-1], {"cancelled"}, timeout=10)["queue_position"] is None
    finally:
        for run_id in ids:
            httpx.post(f"{served.url}/runs/{run_id}/cancel", headers={"Authorization": f"Bearer {TOKEN}"})
        for run_id in ids:
            wait_state(served, run_id, {"cancelled", "completed", "failed"})


def test_hpo_url_runs_the_study_on_the_server_and_follows_it(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(
        capsys,
        "hpo",
        "--url",
        served.url,
        "--study",
        "remote1",
        "--trials",
        "2",
        "--pruner",
        "none",
        "--sampler-seed",
        "1",
        "--seed",
        "4",
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "remote1"
    assert lines[1] == "study remote1: completed, 2 trials done"
    assert lines[2].startswith("best trial ") and lines[3].startswith("trials: ")
    shown = get(served, "/hpo/remote1").json()["selection"]
    assert lines[4].startswith(f"edge: {shown['verdict']}: best trial {shown['best_trial']} vs naive: ")
    assert lines[5].startswith("selection: ") and lines[6].startswith("selection diagnostics: ")
    assert "logits" not in shown and shown["n_trials"] == 2
    finished = [line for line in err.splitlines() if " completed value " in line]
    assert [line.split()[:2] for line in finished] == [["trial", "0"], ["trial", "1"]], err
    assert "[2/2]" in finished[-1]
    best_config = yaml.safe_load(Path(get(served, "/hpo/remote1").json()["paths"]["best_config"]).read_text())
    # the run flag given went under "config", the server's base filled the rest
    assert (best_config["seed"], best_config["min_samples"], best_config["epochs"]) == (4, 500, 2)

    code, out, err = cli(
        capsys, "hpo", "--url", served.url, "--study", "remote2", "--trials", "1", "--detach"
    )
    assert code == 0 and out == "remote2\n", err
    handle = served.hpo.get("remote2")
    assert handle.wait(120) is not None and handle.state.value == "completed"


def test_hpo_url_sends_a_search_space_file_of_this_machine_as_its_mapping(
    served: Served, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    space = {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    argv = ["--study", "remote3", "--trials", "1", "--search-space", str(path), "--detach"]
    code, out, err = cli(capsys, "hpo", "--url", served.url, *argv)
    assert code == 0 and out == "remote3\n", err
    handle = served.hpo.get("remote3")
    assert handle.spec.search_space == space
    assert handle.wait(120) is not None and handle.state.value == "completed"


def test_hpo_url_refuses_flags_of_a_study_run_here(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "hpo", "--url", "http://127.0.0.1:9", "--db", "sqlite:///x.db")
    assert code == 2 and out == "" and "--db only apply to a study run here" in err, err
    code, _, err = cli(capsys, "hpo", "--detach", "--trials", "1")
    assert code == 2 and "--detach goes with --url" in err, err
