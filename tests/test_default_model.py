"""The default model (issue 10): ``palyra daemon run`` with no ``--workers`` flag, as a user
starts it. On a box with more than one usable core that is a control process and one
ingress worker per core (here: 2), on a 1-core box one process. The real CLI, real HTTP on
loopback, real streams and a real receiver, against one child daemon shared by the module:
each test uses integrations of its own and leaves the daemon serving."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from palyra_py.settings import MAX_WORKERS
from palyra_py.testing import running_receiver
from tests import leakcheck
from tests.daemon_process import DaemonProcess, child_env
from tests.test_cli_e2e import palyra, palyra_json
from tests.test_deliveries_lost import remove_delivery_store
from tests.test_workers import (
    NEW_SECRET,
    SECRET,
    _admin,
    _journaled_deliveries,
    _read_stream_until,
    _send_each_on_its_own_connection,
    _signed,
    sample,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

CORES = min(MAX_WORKERS, len(os.sched_getaffinity(0)))
PROCESSES = ["single"] if CORES == 1 else ["control", *["worker"] * CORES]
"""The roles ``daemon status`` lists for the default on this box."""
RECEIVERS_ALLOWED = {"PALYRA_DELIVERY_ALLOW_PRIVATE_NETWORKS": "1"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def default_daemon() -> AsyncIterator[DaemonProcess]:
    with leakcheck.checked_state_dir("pt-dm-") as state:
        process = await DaemonProcess(state, workers=None, env=RECEIVERS_ALLOWED).start()
        try:
            yield process
        finally:
            assert await process.stop() == 0


async def add_github(daemon: DaemonProcess, integration_id: str) -> str:
    """``palyra webhooks add ID --provider github --secret-stdin``; the ingress URL."""
    code, _, err = await palyra(daemon.state_dir, "webhooks", "add", integration_id,
                                "--provider", "github", "--secret-stdin",
                                stdin=f"{SECRET}\n".encode())
    assert code == 0, err
    return f"{daemon.ingress}/hooks/{integration_id}"


async def accepted_seqs(url: str, deliveries: list[str]) -> list[int]:
    """POST each delivery (signed with ``SECRET``) on a connection of its own; the seq of
    each 202, in order."""
    seqs: list[int] = []
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        for delivery in deliveries:
            body, headers = _signed(delivery)
            async with http.post(url, data=body, headers=headers) as resp:
                answer = await resp.json()
                assert resp.status == 202, answer
                seqs.append(answer["seq"])
    return seqs


async def test_no_flag_runs_a_control_process_and_one_worker_per_core(
    default_daemon: DaemonProcess,
) -> None:
    assert "--workers" not in default_daemon.args
    status = await palyra_json(default_daemon.state_dir, "daemon", "status")
    assert [p["role"] for p in status["processes"]] == PROCESSES
    assert len({p["pid"] for p in status["processes"]}) == len(PROCESSES)
    assert default_daemon.proc is not None
    assert status["pid"] == status["processes"][0]["pid"] == default_daemon.proc.pid
    setting = next(s for s in status["settings"] if (s["section"], s["key"]) == ("daemon",
                                                                                 "workers"))
    assert (setting["value"], setting["source"]) == ("auto", "default")


async def test_webhooks_are_taken_by_every_worker_journaled_once_and_counted_once(
    default_daemon: DaemonProcess,
) -> None:
    url = await add_github(default_daemon, "gh-spread")
    deliveries = [f"spread-default-{n:04d}" for n in range(200)]
    statuses = await _send_each_on_its_own_connection(url, deliveries)
    assert set(statuses.values()) == {202}  # from the first request on: every worker knew
    journaled = [d for d in await _journaled_deliveries(default_daemon.state_dir)
                 if d.startswith("spread-default-")]
    assert sorted(journaled) == sorted(deliveries)  # every one, once

    status = await palyra_json(default_daemon.state_dir, "daemon", "status")
    workers = [p for p in status["processes"] if p["role"] == "worker"]
    assert all(w["accepted"] > 0 for w in workers), workers  # each took some

    token = await palyra_json(default_daemon.state_dir, "tokens", "create", "scraper",
                              "--scope", "metrics")
    auth = {"Authorization": f"Bearer {token['secret']}"}
    accepted = ('palyra_ingress_requests_total{integration="gh-spread",reason="accepted",'
                'status="202"}')
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        for _ in range(4):  # whichever worker answers: one view of every process
            async with http.get(f"{default_daemon.ingress}/metrics", headers=auth) as resp:
                assert resp.status == 200
                text = await resp.text()
            assert sample(text, accepted) == len(deliveries)
            # Each process counted its own commits' events: together, the whole journal.
            assert sample(text, "palyra_journal_batch_events_sum") == sample(
                text, "palyra_journal_last_seq")


async def test_an_edit_with_the_cli_is_in_force_on_every_worker_when_it_returns(
    default_daemon: DaemonProcess,
) -> None:
    sd = default_daemon.state_dir
    url = await add_github(default_daemon, "gh-edit")

    async def answers(tag: str, secret: str = SECRET) -> set[int]:
        sent = await _send_each_on_its_own_connection(
            url, [f"edit-{tag}-{n:03d}" for n in range(40)], secret)
        return set(sent.values())

    assert await answers("added") == {202}
    code, _, err = await palyra(sd, "webhooks", "disable", "gh-edit")
    assert code == 0, err
    assert await answers("disabled") == {503}  # integration_disabled, on every worker
    code, _, err = await palyra(sd, "webhooks", "enable", "gh-edit")
    assert code == 0, err
    assert await answers("enabled") == {202}
    code, _, err = await palyra(sd, "webhooks", "rotate-secret", "gh-edit", "--grace", "0",
                                "--secret-stdin", stdin=f"{NEW_SECRET}\n".encode())
    assert code == 0, err
    assert await answers("old-secret") == {401}
    assert await answers("new-secret", NEW_SECRET) == {202}


async def test_the_cli_tail_and_public_streams_see_what_every_process_commits(
    default_daemon: DaemonProcess,
) -> None:
    sd = default_daemon.state_dir
    url = await add_github(default_daemon, "gh-stream")
    token = await palyra_json(sd, "tokens", "create", "reader", "--scope",
                              "read:github.*,read:default.*")
    auth = {"Authorization": f"Bearer {token['secret']}"}
    [first] = await accepted_seqs(url, ["stream-default-first"])
    # The tail (a stream on the admin socket: the control process's) prints the last
    # event, then follows from the head it read before: nothing committed later is missed.
    tail = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "palyra_py", "system", "events", "tail", "-f", "-n", "1",
        "--json", "--integration", "gh-stream", "--state-dir", str(sd),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=child_env(sd))
    connector = aiohttp.TCPConnector(force_close=True)
    try:
        assert tail.stdout is not None
        shown = json.loads(await asyncio.wait_for(tail.stdout.readline(), 60))
        assert shown["seq"] == first
        async with aiohttp.ClientSession(connector=connector) as http:
            # Streams on several connections: the workers'.
            public = [await http.get(f"{default_daemon.ingress}/v1/events/stream",
                                     params={"after_seq": str(first)}, headers=auth)
                      for _ in range(4)]
            try:
                assert all(resp.status == 200 for resp in public)
                # Journaled by the workers, then one event published by the control process.
                webhooks = await accepted_seqs(
                    url, [f"stream-default-{n:02d}" for n in range(8)])
                emitted = await palyra_json(sd, "system", "events", "emit", "default.model")
                for resp in public:
                    seen = await _read_stream_until(resp, emitted["seq"])
                    assert set(webhooks) | {emitted["seq"]} <= set(seen)
            finally:
                for resp in public:
                    resp.close()
        tailed = [json.loads(await asyncio.wait_for(tail.stdout.readline(), 30))["seq"]
                  for _ in webhooks]
        assert tailed == webhooks
    finally:
        tail.terminate()
        await tail.wait()


async def test_a_subscription_added_with_the_cli_delivers_what_the_workers_take(
    default_daemon: DaemonProcess,
) -> None:
    sd = default_daemon.state_dir
    url = await add_github(default_daemon, "gh-sub")
    async with running_receiver() as receiver:
        await palyra_json(sd, "subscriptions", "add", "default-app", "--url", receiver.url,
                          "--events", "github.push")
        try:
            deliveries = [f"sub-default-{n:02d}" for n in range(10)]
            statuses = await _send_each_on_its_own_connection(url, deliveries)
            assert set(statuses.values()) == {202}
            got = await receiver.wait_for(len(deliveries), timeout=30)
            delivered = [r.json() for r in got]
            assert {d["type"] for d in delivered} == {"github.push"}
            assert sorted(d["data"]["delivery"] for d in delivered) == deliveries
        finally:
            code, _, err = await palyra(sd, "subscriptions", "remove", "default-app", "--yes")
            assert code == 0, err


async def _readyz(base: str, times: int) -> list[tuple[int, str]]:
    """``GET /readyz`` on ``times`` connections of their own: (status, reason) of each."""
    found: list[tuple[int, str]] = []
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        for _ in range(times):
            async with http.get(f"{base}/readyz") as resp:
                found.append((resp.status, (await resp.json()).get("reason", "")))
    return found


async def test_readiness_is_the_same_whichever_process_answers() -> None:
    """A removed ``deliveries.db`` (only the control process opens it) makes every worker
    answer 503 ``deliveries_unavailable``, as one process does; a control process that
    does not answer leaves the worker its own view (docs/admin-api.md)."""
    with leakcheck.checked_state_dir("pt-dm-") as state:
        daemon = await DaemonProcess(state, workers=None).start()
        try:
            assert set(await _readyz(daemon.ingress, 8)) == {(200, "")}
            remove_delivery_store(state)
            assert set(await _readyz(daemon.ingress, 8)) == {(503, "deliveries_unavailable")}
            status = await _admin(state, "GET", "/v1/status")
            assert "deliveries.db was removed" in status["deliveries"]["problem"]
            if CORES > 1:
                # A control process that does not answer (stopped): the worker answers
                # its own view once READINESS_TIMEOUT_S is over, and says so.
                assert daemon.proc is not None
                mark = len(daemon.log)
                os.kill(daemon.proc.pid, signal.SIGSTOP)
                try:
                    assert await _readyz(daemon.ingress, 1) == [(200, "")]
                finally:
                    os.kill(daemon.proc.pid, signal.SIGCONT)
                await daemon.wait_for_log(("readiness_check_timed_out",), mark)
        finally:
            await daemon.stop()


def _one_core() -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


async def test_on_one_usable_core_the_default_is_one_process() -> None:
    with leakcheck.checked_state_dir("pt-dm-") as state:
        daemon = await DaemonProcess(state, workers=None, preexec_fn=_one_core).start()
        try:
            status = await _admin(state, "GET", "/v1/status")
        finally:
            await daemon.stop()
    assert [p["role"] for p in status["processes"]] == ["single"]
