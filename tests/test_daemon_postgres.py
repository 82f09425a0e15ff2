"""``palyra daemon run`` with ``[storage] backend = "postgres"``, end to end on a real
server (tests/pg.py): a signed webhook is answered 202 only once it is committed in
PostgreSQL; while the server is down, 503 journal_unavailable with Retry-After and
readiness false; once it is back, the same daemon takes webhooks again. The DSN is shown
without its password."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from palyra_py.delivery.start import DeliveriesFrom
from palyra_py.server.daemon import Daemon
from palyra_py.testing import CapturingReceiver, ManualClock, MemoryKeyring, running_daemon
from tests.daemon_process import DaemonProcess
from tests.fault_helpers import admin_session, journaled_nonces, publish, subscribe, verify
from tests.helpers import add_integration, send_signed
from tests.pg import PgServer
from tests.test_cli_e2e import palyra, palyra_json

PASSWORD = "pg-pass-not-shown-5521"


def push(delivery: str) -> bytes:
    return json.dumps({"ref": "refs/heads/main", "delivery": delivery}).encode()


async def ready(http: aiohttp.ClientSession, port: int) -> tuple[int, dict[str, Any]]:
    async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
        return resp.status, await resp.json()


async def test_webhooks_are_journaled_in_postgresql_and_refused_while_it_is_down(
    pg_server: PgServer, state_dir: Path, clock: ManualClock, memory_keyring: MemoryKeyring,
    http: aiohttp.ClientSession,
) -> None:
    pg_server.new_database("daemon")
    database = pg_server.databases[-1]
    # Trust on the test server's socket: the password is never checked, only carried.
    dsn = pg_server.dsn(database, user=f"palyra:{PASSWORD}")
    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring,
                              storage__backend="postgres", storage__dsn=dsn) as daemon, \
            admin_session(daemon.socket_path) as admin:
        await add_integration(admin, "gh")
        first = "pg-000001-end-to-end-delivery"
        status, body, _ = await send_signed(http, daemon, "gh", push(first), delivery_id=first)
        assert status == 202, body
        # Committed in PostgreSQL, not in a file of the state dir.
        assert pg_server.psql(database, (
            "SELECT integration_id || ' ' || (payload_json::json #>> '{payload,delivery}')"
            " FROM journal_events WHERE kind = 'webhook.received'")) == f"gh {first}"
        assert not (state_dir / "journal.db").exists()
        async with admin.get("/v1/status") as resp:
            shown = await resp.text()
        assert resp.status == 200 and PASSWORD not in shown
        storage = json.loads(shown)["journal"]["storage"]
        assert storage.startswith("postgres postgresql://palyra:***@/"), storage

        pg_server.stop()
        try:
            lost = "pg-000002-end-to-end-delivery"
            status, body, headers = await send_signed(http, daemon, "gh", push(lost),
                                                      delivery_id=lost)
            assert (status, body.get("error")) == (503, "journal_unavailable"), body
            assert headers.get("Retry-After") == "60"
            code, readiness = await ready(http, daemon.ingress_port)
            assert (code, readiness["reason"]) == (503, "journal_unavailable"), readiness
            assert PASSWORD not in json.dumps(readiness)
        finally:
            pg_server.start()

        again = "pg-000003-end-to-end-delivery"
        status, body, _ = await send_signed(http, daemon, "gh", push(again), delivery_id=again)
        assert status == 202, body
        assert (await ready(http, daemon.ingress_port))[0] == 200
        assert await journaled_nonces(admin) == [first, again]
        assert (await verify(admin))["ok"]


# -- the delivery store on PostgreSQL --------------------------------------------------


def pg_settings(dsn: str) -> dict[str, Any]:
    return {"storage__backend": "postgres", "storage__dsn": dsn,
            "delivery__allow_private_networks": True}


async def wait_until(condition: Callable[[], Awaitable[bool]], what: str,
                     timeout: float = 20) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def deliveries_of(admin: aiohttp.ClientSession) -> list[dict[str, Any]]:
    async with admin.get("/v1/deliveries") as resp:
        answer = await resp.json()
        assert resp.status == 200, answer
        return list(answer["deliveries"])


def all_succeeded(admin: aiohttp.ClientSession, count: int
                  ) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        found = await deliveries_of(admin)
        return len(found) == count and all(d["status"] == "succeeded" for d in found)

    return check


async def test_deliveries_are_stored_in_postgresql_and_operated_through_the_cli(
    pg_server: PgServer, state_dir: Path, clock: ManualClock, memory_keyring: MemoryKeyring,
    receiver: CapturingReceiver,
) -> None:
    """Delivered to a real receiver, logged in PostgreSQL (no deliveries.db), listed,
    shown, retried and counted by the real CLI; ``--deliveries-from`` is ignored with a
    warning (the cursors are in the database); status shows the engine, no password."""
    pg_server.new_database("deliv")
    database = pg_server.databases[-1]
    dsn = pg_server.dsn(database, user=f"palyra:{PASSWORD}")
    receiver.script = [500]  # the first event's only attempt fails
    with structlog.testing.capture_logs() as logs:
        started = running_daemon(state_dir, clock=clock, keyring=memory_keyring,
                                 deliveries_from=DeliveriesFrom("seq", 1), **pg_settings(dsn))
        async with started as daemon, admin_session(daemon.socket_path) as admin:
            ignored = [e for e in logs if e["event"] == "deliveries_from_ignored"]
            assert len(ignored) == 1 and "PostgreSQL" in ignored[0]["reason"], logs
            await operate_through_the_cli(pg_server, database, daemon, admin, receiver)


async def operate_through_the_cli(pg_server: PgServer, database: str, daemon: Daemon,
                                  admin: aiohttp.ClientSession, receiver: CapturingReceiver
                                  ) -> None:
    """Deliveries listed, shown, retried and counted by the real CLI."""
    await subscribe(admin, "app", receiver.url, retry_schedule=["0s"])
    failing = (await publish(admin, "job.done", n=1))[1]["event_id"]
    passing = (await publish(admin, "job.done", n=2))[1]["event_id"]
    await daemon.dispatcher.wait_for_attempts(2)
    assert {r.headers["webhook-id"] for r in receiver.received} == {failing, passing}

    listed = await palyra_json(daemon.state_dir, "deliveries", "list")
    by_event = {d["event_id"]: d for d in listed["deliveries"]}
    assert (by_event[failing]["status"], by_event[passing]["status"]) == (
        "failed", "succeeded")
    failed_id = by_event[failing]["delivery_id"]
    shown = await palyra_json(daemon.state_dir, "deliveries", "show", failed_id)
    assert [(a["attempt_no"], a["status_code"]) for a in shown["attempts"]] == [(1, 500)]
    retried = await palyra_json(daemon.state_dir, "deliveries", "retry", failed_id)
    assert retried["delivery"]["status"] == "pending"
    await daemon.dispatcher.wait_for_attempts(3)
    await wait_until(all_succeeded(admin, 2), "both deliveries to succeed")
    stats = await palyra_json(daemon.state_dir, "deliveries", "stats")
    assert stats["deliveries"] == {"pending": 0, "succeeded": 2, "failed": 0}
    assert stats["attempts"] == 3

    # In PostgreSQL, not in a file of the state dir.
    assert pg_server.psql(database, (
        "SELECT status || ' ' || count(*) FROM deliveries GROUP BY status")) == "succeeded 2"
    assert pg_server.psql(database, "SELECT count(*) FROM delivery_attempts") == "3"
    assert not list(daemon.state_dir.glob("deliveries.db*"))
    async with admin.get("/v1/status") as resp:
        shown_text = await resp.text()
    assert PASSWORD not in shown_text
    deliveries = json.loads(shown_text)["deliveries"]
    assert deliveries["storage"].startswith("postgres postgresql://palyra:***@/")
    assert deliveries["path"] == deliveries["storage"] and deliveries["problem"] is None
    code, out, err = await palyra(daemon.state_dir, "daemon", "status", columns=300)
    assert code == 0, err
    assert PASSWORD not in out + err
    (row,) = [line for line in out.splitlines() if line.strip("│ ").startswith("deliveries ")]
    assert "postgres postgresql://palyra:***@/" in row, out


def hang(_request: Any) -> None:
    """A receiver's answer held until ``receiver.hang`` is set."""
    return None


async def test_postgresql_stopped_mid_attempt_pauses_delivery_until_it_is_back(
    pg_server: PgServer, state_dir: Path, clock: ManualClock, memory_keyring: MemoryKeyring,
    receiver: CapturingReceiver, http: aiohttp.ClientSession,
) -> None:
    """The server stops while an attempt waits for its answer: the outcome cannot be
    stored, so the delivery stays pending; the dispatcher pauses (logged once, readiness
    false, status says why) and, once the server is back, sends it again and records it.
    Nothing acknowledged is lost: the event published before is delivered."""
    pg_server.new_database("outage")
    database = pg_server.databases[-1]
    receiver.script = [hang]
    with structlog.testing.capture_logs() as logs:
        async with running_daemon(state_dir, clock=clock, keyring=memory_keyring,
                                  **pg_settings(pg_server.dsn(database))) as daemon, \
                admin_session(daemon.socket_path) as admin:
            await subscribe(admin, "app", receiver.url)
            event_id = (await publish(admin, "job.done"))[1]["event_id"]
            await receiver.wait_for(1)  # in flight
            pg_server.stop()
            try:
                receiver.hang.set()  # answered 200 now, with nobody to store the outcome

                async def paused() -> bool:
                    return (daemon.deliveries.down_reason is not None
                            and "schedule" in daemon.dispatcher.paused())

                await wait_until(paused, "the dispatcher to pause")
                code, readiness = await ready(http, daemon.ingress_port)
                assert code == 503, readiness
                assert readiness["reason"] in ("deliveries_unavailable", "journal_unavailable")
                async with admin.get("/v1/status") as resp:
                    status = await resp.json()
                assert "PostgreSQL unreachable" in status["deliveries"]["problem"], status
                assert len(receiver.received) == 1  # nothing sent while paused
            finally:
                pg_server.start()
            (first, again) = await receiver.wait_for(2)
            assert first.headers["webhook-id"] == again.headers["webhook-id"] == event_id
            await wait_until(all_succeeded(admin, 1), "the delivery to be recorded")

            async def resumed() -> bool:
                return daemon.deliveries.down_reason is None and not daemon.dispatcher.paused()

            await wait_until(resumed, "the dispatcher to resume")
            assert (await ready(http, daemon.ingress_port))[0] == 200
    events = [e["event"] for e in logs]
    assert events.count("delivery_attempt_unrecorded") == 1, events
    # Once per pause and loop, however many times it tried meanwhile.
    paused_loops = [e["loop"] for e in logs if e["event"] == "delivery_paused"]
    assert paused_loops.count("schedule") == 1, paused_loops
    resumed_loops = [e["loop"] for e in logs if e["event"] == "delivery_resumed"]
    assert sorted(paused_loops) == sorted(resumed_loops), (paused_loops, resumed_loops)


async def test_terminated_connections_are_replaced_without_losing_a_delivery(
    pg_server: PgServer, state_dir: Path, clock: ManualClock, memory_keyring: MemoryKeyring,
    receiver: CapturingReceiver,
) -> None:
    """``pg_terminate_backend`` of every connection of the daemon, once between deliveries
    and once while an attempt waits for its answer: the next writes and reads go on new
    connections, each event is delivered once and recorded."""
    pg_server.new_database("terminate")
    database = pg_server.databases[-1]
    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring,
                              **pg_settings(pg_server.dsn(database))) as daemon, \
            admin_session(daemon.socket_path) as admin:
        await subscribe(admin, "app", receiver.url)
        ids = [(await publish(admin, "job.done", n=1))[1]["event_id"]]
        await wait_until(all_succeeded(admin, 1), "the first delivery")
        assert pg_server.terminate_backends(database) > 0

        receiver.script = [hang]
        status, body = await publish(admin, "job.done", n=2)
        assert status == 201, body  # the journal's append went on a new connection
        ids.append(body["event_id"])
        await receiver.wait_for(2)
        assert pg_server.terminate_backends(database) > 0
        receiver.hang.set()
        await wait_until(all_succeeded(admin, 2), "the second delivery to be recorded")
        assert [r.headers["webhook-id"] for r in receiver.received] == ids
        assert [d["attempts"] for d in await deliveries_of(admin)] == [1, 1]
        async with admin.get("/v1/status") as resp:
            assert (await resp.json())["deliveries"]["problem"] is None


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_restart_after_sigkill_resumes_from_the_cursor_in_postgresql(
    pg_server: PgServer, state_dir: Path, receiver: CapturingReceiver, workers: str,
) -> None:
    """``palyra daemon run`` (a child process; with ``--workers 2`` the control process,
    which delivers) SIGKILLed while deliveries are in flight:
    the next start resumes from the cursors and pending deliveries in PostgreSQL (its
    ``--deliveries-from`` is ignored, with a warning). Every event is delivered; what is
    sent twice stays within the documented bound (2 x ``max_in_flight``), and includes
    every attempt the kill left unanswered."""
    pg_server.new_database("restart")
    env = {"PALYRA_STORAGE_BACKEND": "postgres",
           "PALYRA_STORAGE_DSN": pg_server.dsn(pg_server.databases[-1]),
           "PALYRA_DELIVERY_ALLOW_PRIVATE_NETWORKS": "true"}
    max_in_flight, answered = 4, 50
    receiver.script = [*[200] * answered, *[hang] * max_in_flight]
    published: list[str] = []
    first = await DaemonProcess(state_dir, env=env, workers=workers).start()
    try:
        async with admin_session(state_dir / "palyra.sock") as admin:
            await subscribe(admin, "app", receiver.url, max_in_flight=max_in_flight)
            for n in range(200):
                status, body = await publish(admin, "job.done", n=n)
                assert status == 201, body
                published.append(body["event_id"])
        # Fifty answered, four waiting for their answer: then the kill.
        await receiver.wait_for(answered + max_in_flight)
    finally:
        first.kill()
        await first.stop()
    unanswered = {r.headers["webhook-id"] for r in receiver.received[answered:]}
    receiver.script.clear()
    receiver.hang.set()
    before_restart = len(receiver.received)

    second = await DaemonProcess(state_dir, env=env, args=("--deliveries-from", "seq:1"),
                                 workers=workers).start()
    try:
        assert any(r.get("event") == "deliveries_from_ignored" for r in second.log)
        async with admin_session(state_dir / "palyra.sock") as admin:
            for n in range(200, 250):
                status, body = await publish(admin, "job.done", n=n)
                assert status == 201, body
                published.append(body["event_id"])

            async def delivered() -> bool:
                async with admin.get("/v1/deliveries/stats") as resp:
                    figures = (await resp.json())["deliveries"]
                return bool(figures == {"pending": 0, "succeeded": 250, "failed": 0})

            await wait_until(delivered, "every delivery to succeed", timeout=60)
    finally:
        await second.stop()
    ids = [r.headers["webhook-id"] for r in receiver.received]
    assert set(ids) == set(published)  # nothing skipped
    resent = len(ids) - len(set(ids))
    assert max_in_flight <= resent <= 2 * max_in_flight, resent
    assert unanswered <= {r.headers["webhook-id"] for r in receiver.received[before_restart:]}


async def test_the_delivery_store_reads_its_uri_from_dsn_ref(
    pg_server: PgServer, state_dir: Path, tmp_path: Path, clock: ManualClock,
    memory_keyring: MemoryKeyring, receiver: CapturingReceiver,
) -> None:
    """``[storage] dsn_ref`` (a ``file:`` secret): the delivery store connects with the
    URI it names, as the journal does, and status shows the reference, not the URI."""
    pg_server.new_database("dsnref")
    database = pg_server.databases[-1]
    secret = tmp_path / "dsn"
    secret.write_text(pg_server.dsn(database, user=f"palyra:{PASSWORD}") + "\n")
    secret.chmod(0o600)
    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring,
                              storage__backend="postgres", storage__dsn_ref=f"file:{secret}",
                              delivery__allow_private_networks=True) as daemon, \
            admin_session(daemon.socket_path) as admin:
        await subscribe(admin, "app", receiver.url)
        event_id = (await publish(admin, "job.done"))[1]["event_id"]
        await wait_until(all_succeeded(admin, 1), "the delivery")
        assert [r.headers["webhook-id"] for r in receiver.received] == [event_id]
        assert pg_server.psql(database, "SELECT count(*) FROM deliveries") == "1"
        async with admin.get("/v1/status") as resp:
            shown = await resp.text()
        assert PASSWORD not in shown
        assert json.loads(shown)["deliveries"]["storage"] == f"postgres file:{secret}"
