"""``/ws`` while two runs train at once: a client that names no run gets one whole run, then the
other; ``?run_id=*`` gets both interleaved; ``GET /`` and ``orchestrator watch`` go by the same
rule (docs/api.md). A real server, real clients, two real runs on the session's Ray instance."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.register_assert_rewrite("tests.api_fixtures")
from tests.api_fixtures import (  # noqa: E402
    FIRST_OF_TWO,
    SECOND_OF_TWO,
    ApiServer,
    assert_legal_run,
    assert_schema_valid,
    clients_connected,
    collect,
    collect_until_ended,
    connections_of,
    of_run,
    recorded,
    start_two_runs,
    two_runs_done,
)
from tests.test_watch import watch_while  # noqa: E402

pytest_plugins = ["tests.api_fixtures"]
pytestmark = pytest.mark.usefixtures("release_idle_actors")


async def status_while_both_run(server: ApiServer, first: str) -> dict[str, Any]:
    """``GET /`` once two runs are running (fails if the first ends before)."""
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        while True:
            health = (await http.get("/")).json()
            if len(health["running"]) >= 2:
                return dict(health)
            assert first in health["running"], f"run {first} ended before the second ran: {health}"
            await asyncio.sleep(0.05)


async def drop_after_the_first_end(url: str) -> list[dict[str, Any]]:
    """A client that leaves right after the first run's end and comes back with ``since``."""
    first = await collect(url)
    rest = await collect_until_ended(f"{url}?since={first[-1]['seq']}", runs=1)
    return first + rest


def test_two_runs_at_once_a_client_naming_no_run_gets_one_whole_run_then_the_other(
    two_warm_workers: ApiServer,
) -> None:
    api_server = two_warm_workers
    url = api_server.ws_url

    async def main() -> tuple[str, str, dict[str, Any], list[list[dict[str, Any]]]]:
        before = connections_of(api_server.app)
        clients = [
            asyncio.create_task(collect_until_ended(url)),
            asyncio.create_task(collect_until_ended(f"{url}?run_id=*")),
            asyncio.create_task(drop_after_the_first_end(url)),
        ]
        await clients_connected(api_server.app, len(clients), before=before)
        first, second = await asyncio.to_thread(start_two_runs, api_server)
        status = await status_while_both_run(api_server, first)
        await asyncio.to_thread(two_runs_done, api_server, first, second)
        return first, second, status, list(await asyncio.gather(*clients))

    a, b, status, (follower, everything, dropper) = asyncio.run(main())
    assert status["active_run_id"] == a and status["running"] == [a, b]
    run_a, run_b = recorded(api_server, a), recorded(api_server, b)
    assert_legal_run(run_a, folds=2, epochs=FIRST_OF_TWO["epochs"])
    assert_legal_run(run_b, folds=2, epochs=SECOND_OF_TWO["epochs"])
    # they trained at once: two_runs_done checked that b started before a ended (how finely
    # their epochs interleave depends on the machine's load, and is not what this test is about)
    # no run_id: all of a, then all of b (its history up to a's end first), each exactly once
    assert follower == run_a + run_b
    assert dropper == follower  # resuming after a's end with since: b comes whole, nothing twice
    # run_id=*: both runs interleaved, in seq order, each complete
    assert [m["seq"] for m in everything] == sorted(m["seq"] for m in everything)
    assert of_run(everything, a) == run_a and of_run(everything, b) == run_b
    assert_schema_valid(everything)


def test_watch_follows_the_oldest_run_and_exits_with_its_outcome_not_the_others(
    api_server: ApiServer, tmp_path: Path
) -> None:
    events_out = tmp_path / "events.jsonl"
    # the second run fails while the first still trains: its training_error is not the end of
    # the run watch follows
    (a, b), code, output = watch_while(
        api_server.ws_url,
        lambda: start_two_runs(api_server, SECOND_OF_TWO, {"min_samples": 100_000}),
        "--events-out",
        str(events_out),
        "--quiet",
    )
    assert code == 0, output
    assert "training complete: 2 folds" in output and "training error" not in output
    assert api_server.wait_done(b)["state"] == "failed"
    assert api_server.wait_done(a)["state"] == "completed"
    run_a, run_b = recorded(api_server, a), recorded(api_server, b)
    assert run_b[0]["seq"] > run_a[0]["seq"] and run_b[-1]["seq"] < run_a[-1]["seq"]  # b within a
    events = [json.loads(line) for line in events_out.read_text().splitlines()]
    assert events == run_a  # the followed run whole, nothing of the other
