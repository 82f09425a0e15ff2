"""PostgreSQL going away under two running nodes (tests/pg.py), end to end. While the
server is down: every webhook is answered 503 ``journal_unavailable`` with Retry-After
(never a 2xx), ``/readyz`` is 503 with that reason, an admin publish fails with 503 and
says why. Once the server is back each node recovers by itself (no restart): readiness
comes back, new webhooks are acknowledged, journaled and streamed on the other node, and
the events acknowledged before the outage are there. Every connection killed
(``pg_terminate_backend``) costs no acknowledged webhook and no 503."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp

from palyra_py.server.daemon import Daemon
from palyra_py.testing import ManualClock, MemoryKeyring, running_daemon
from tests import leakcheck
from tests.fault_helpers import admin_session, journaled_nonces, publish, verify
from tests.helpers import add_integration, create_token, send_signed
from tests.pg import PgServer

RECOVERY_S = 10.0
"""Generous bound for the way back (the writer's probe and the bus's retry run every
second): the test waits on the condition, not on this."""


@contextlib.asynccontextmanager
async def node(pg: PgServer, database: str, clock: ManualClock, keyring: MemoryKeyring,
               ) -> AsyncIterator[Daemon]:
    with leakcheck.checked_state_dir("po-node-") as state:
        async with running_daemon(state, clock=clock, keyring=keyring,
                                  storage__backend="postgres", storage__dsn=pg.dsn(database),
                                  ) as daemon:
            yield daemon


def push(delivery: str) -> bytes:
    return json.dumps({"ref": "refs/heads/main", "delivery": delivery}).encode()


async def webhook(http: aiohttp.ClientSession, daemon: Daemon, delivery: str
                  ) -> tuple[int, dict[str, Any], Any]:
    return await send_signed(http, daemon, "gh", push(delivery), delivery_id=delivery)


async def readiness(http: aiohttp.ClientSession, daemon: Daemon) -> tuple[int, dict[str, Any]]:
    async with http.get(f"http://127.0.0.1:{daemon.ingress_port}/readyz") as resp:
        return resp.status, await resp.json()


async def until(check: Callable[[], Any], timeout: float = RECOVERY_S) -> None:
    """Await ``check()`` (a coroutine function's result) until it is true, or fail at the
    deadline: the condition is polled, never a timer that decides."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "not recovered in time"
        await asyncio.sleep(0.05)


class Stream:
    """An SSE stream of one node, read in the background: the delivery ids it showed."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.deliveries: list[str] = []
        self._seen = asyncio.Event()
        self._task = asyncio.create_task(self._read(resp))

    async def _read(self, resp: aiohttp.ClientResponse) -> None:
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if event["kind"] == "webhook.received":
                    self.deliveries.append(event["payload"]["payload"]["delivery"])
                    self._seen.set()

    async def shows(self, delivery: str, timeout: float = RECOVERY_S) -> None:
        async def seen() -> None:
            while delivery not in self.deliveries:
                self._seen.clear()
                await self._seen.wait()

        await asyncio.wait_for(seen(), timeout)

    def close(self) -> None:
        self._task.cancel()


async def test_a_server_outage_refuses_webhooks_then_both_nodes_heal_by_themselves(
    pg_server: PgServer, clock: ManualClock, memory_keyring: MemoryKeyring,
    http: aiohttp.ClientSession,
) -> None:
    pg_server.new_database("outage")
    database = pg_server.databases[-1]
    async with node(pg_server, database, clock, memory_keyring) as a, \
            node(pg_server, database, clock, memory_keyring) as b, \
            admin_session(a.socket_path) as admin_a, admin_session(b.socket_path) as admin_b:
        await add_integration(admin_a, "gh")  # the registry is shared: in force on b soon
        deadline = time.monotonic() + 5
        while "gh" not in b.active:
            assert time.monotonic() < deadline, "the integration never reached node b"
            await asyncio.sleep(0.02)  # polling a condition under a deadline
        token = await create_token(admin_b, "reader", scopes=["read:github.*"])
        async with http.get(f"http://127.0.0.1:{b.ingress_port}/v1/events/stream",
                            headers=token.bearer) as resp:
            assert resp.status == 200
            stream = Stream(resp)
            try:
                before = "po-000001-before-the-outage"
                assert (await webhook(http, a, before))[0] == 202
                await stream.shows(before)

                pg_server.stop()
                try:
                    # Noticed without any traffic (a load balancer asks /readyz first).
                    for daemon in (a, b):
                        await until(lambda d=daemon: _not_ready(http, d))
                    for n, daemon in enumerate((a, b, a), start=2):
                        status, body, headers = await webhook(
                            http, daemon, f"po-{n:06d}-during-the-outage")
                        assert (status, body.get("error")) == (503, "journal_unavailable"), body
                        assert int(headers["Retry-After"]) > 0
                    for daemon in (a, b):
                        code, ready = await readiness(http, daemon)
                        assert (code, ready["reason"]) == (503, "journal_unavailable"), ready
                    status, answer = await publish(admin_a, "app.during", n=1)
                    assert (status, answer["error"]) == (503, "journal_unavailable"), answer
                    assert "unreachable" in answer["message"], answer
                finally:
                    pg_server.start()

                # Back by themselves: readiness first (the writer's probe), then traffic.
                for daemon in (a, b):
                    await until(lambda d=daemon: _ready(http, d))
                after = "po-000005-after-the-outage"
                assert (await webhook(http, a, after))[0] == 202
                await stream.shows(after)  # B's bus listens again
                on_b = "po-000006-taken-by-node-b"
                assert (await webhook(http, b, on_b))[0] == 202
                status, answer = await publish(admin_b, "app.after", n=2)
                assert status == 201, answer

                # Every connection of both nodes killed at once: nothing is refused.
                assert pg_server.terminate_backends(database) >= 4
                killed = "po-000007-after-the-kill"
                status, body, _ = await webhook(http, a, killed)
                assert status == 202, body
                await stream.shows(killed)
                # No background task of either node died of it (the streams' hub, the
                # dispatcher, the bus).
                for daemon in (a, b):
                    assert [t for t in daemon._tasks if t.done()] == []
                assert b.head_feed is not None and b.head_feed.connects >= 3
            finally:
                stream.close()
        # Nothing refused was journaled; everything acknowledged is, once, in order.
        assert await journaled_nonces(admin_b) == [before, after, on_b, killed]
        assert stream.deliveries[:2] == [before, after]
        assert (await verify(admin_a))["ok"]


async def _ready(http: aiohttp.ClientSession, daemon: Daemon) -> bool:
    return (await readiness(http, daemon))[0] == 200


async def _not_ready(http: aiohttp.ClientSession, daemon: Daemon) -> bool:
    code, ready = await readiness(http, daemon)
    return code == 503 and ready["reason"] == "journal_unavailable"
