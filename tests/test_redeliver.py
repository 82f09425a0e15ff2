"""Send anything again, through the real daemon and the real CLI, on both delivery stores:
a succeeded delivery redelivered with the same ids (GitHub's Redeliver), a pending one
that waits hours for its next retry recovered at once, and a subscription's failed
deliveries retried in bulk."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from palyra_py.server.daemon import Daemon
from palyra_py.testing import CapturingReceiver, ManualClock, MemoryKeyring, running_daemon
from tests.fault_helpers import admin_session, publish, subscribe
from tests.pg import PgServer
from tests.test_cli_e2e import palyra, palyra_json


@pytest.fixture
def clock() -> ManualClock:
    # The CLI's --since is read against the real time: the daemon's clock starts there.
    return ManualClock(start=time.time())


@pytest.fixture(params=["sqlite", "postgres"])
async def gateway(request: pytest.FixtureRequest, state_dir: Path, clock: ManualClock,
                  memory_keyring: MemoryKeyring) -> AsyncIterator[Daemon]:
    """A daemon that may deliver to loopback, its delivery store in SQLite or PostgreSQL."""
    settings: dict[str, Any] = {"delivery__allow_private_networks": True}
    if request.param == "postgres":
        pg: PgServer = request.getfixturevalue("pg_server")
        settings |= {"storage__backend": "postgres", "storage__dsn": pg.new_database("redo")}
    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring,
                              **settings) as daemon:
        yield daemon


@pytest.fixture
async def admin_g(gateway: Daemon) -> AsyncIterator[aiohttp.ClientSession]:
    async with admin_session(gateway.socket_path) as session:
        yield session


async def published(admin: aiohttp.ClientSession, type_: str) -> str:
    status, body = await publish(admin, type_)
    assert status == 201, body
    return str(body["event_id"])


async def test_a_succeeded_delivery_is_delivered_again_with_the_same_ids(
    gateway: Daemon, admin_g: aiohttp.ClientSession, receiver: CapturingReceiver,
) -> None:
    await subscribe(admin_g, "app", receiver.url)
    event_id = await published(admin_g, "job.done")
    (first,) = await receiver.wait_for(1)
    sd = gateway.state_dir
    (delivery,) = (await palyra_json(sd, "deliveries", "list"))["deliveries"]
    assert delivery["status"] == "succeeded"

    again = await palyra_json(sd, "deliveries", "retry", delivery["delivery_id"])
    assert again["delivery"]["status"] == "pending"
    second = (await receiver.wait_for(2))[1]
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == event_id
    assert first.body == second.body
    await gateway.dispatcher.wait_for_attempts(2)
    shown = await palyra_json(sd, "deliveries", "show", delivery["delivery_id"])
    assert shown["delivery"]["status"] == "succeeded"
    assert [a["attempt_no"] for a in shown["attempts"]] == [1, 2]


async def test_recover_sends_a_delivery_that_waits_for_its_next_retry_now(
    gateway: Daemon, admin_g: aiohttp.ClientSession, receiver: CapturingReceiver,
) -> None:
    receiver.script = [503]
    await subscribe(admin_g, "slow", receiver.url, retry_schedule=["0s", "2h"])
    await published(admin_g, "job.done")
    await gateway.dispatcher.wait_for_attempts(1)
    sd = gateway.state_dir
    (waiting,) = (await palyra_json(sd, "deliveries", "list"))["deliveries"]
    assert (waiting["status"], waiting["attempts"]) == ("pending", 1)

    # The clock has not moved: without recover, the next attempt is 2 hours away.
    recovered = await palyra_json(sd, "deliveries", "recover", "slow", "--since", "1h")
    assert recovered == {"recovered": 1}
    await receiver.wait_for(2)
    await gateway.dispatcher.wait_for_attempts(2)
    shown = await palyra_json(sd, "deliveries", "show", waiting["delivery_id"])
    assert shown["delivery"]["status"] == "succeeded"


async def test_bulk_retry_of_a_subscriptions_failed_deliveries(
    gateway: Daemon, admin_g: aiohttp.ClientSession, receiver: CapturingReceiver,
) -> None:
    receiver.script = [500, 500, 500]
    await subscribe(admin_g, "bulk", receiver.url, retry_schedule=["0s"])
    await subscribe(admin_g, "other", receiver.url, retry_schedule=["0s"], events=["x.*"])
    for _ in range(3):
        await published(admin_g, "job.done")
    await gateway.dispatcher.wait_for_attempts(3)
    sd = gateway.state_dir
    failed = await palyra_json(sd, "deliveries", "list", "--status", "failed")
    assert len(failed["deliveries"]) == 3

    answer = await palyra_json(sd, "deliveries", "retry", "--subscription", "bulk",
                               "--status", "failed")
    assert answer == {"retried": 3}
    await gateway.dispatcher.wait_for_attempts(6)
    assert len(await receiver.wait_for(6)) == 6
    stats = await palyra_json(sd, "deliveries", "stats", "--subscription", "bulk")
    assert stats["deliveries"] == {"pending": 0, "succeeded": 3, "failed": 0}
    # Nothing left to retry: the same command says so, to a person too.
    code, out, err = await palyra(sd, "deliveries", "retry", "--subscription", "bulk",
                                  "--status", "failed")
    assert code == 0, err
    assert "Re-sending 0 failed deliveries of bulk" in out
