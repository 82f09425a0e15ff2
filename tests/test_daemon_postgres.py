"""``palyra daemon run`` with ``[storage] backend = "postgres"``, end to end on a real
server (tests/pg.py): a signed webhook is answered 202 only once it is committed in
PostgreSQL; while the server is down, 503 journal_unavailable with Retry-After and
readiness false; once it is back, the same daemon takes webhooks again. The DSN is shown
without its password."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from palyra_py.testing import ManualClock, MemoryKeyring, running_daemon
from tests.fault_helpers import admin_session, journaled_nonces, verify
from tests.helpers import add_integration, send_signed
from tests.pg import PgServer

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
