"""A node cut off from PostgreSQL in the middle of an append transaction (partitioned,
frozen, killed where the server cannot see its connection drop) holds the journal's head
row, which every node's append takes first. The server ends such a session after
``IDLE_IN_TRANSACTION_S`` (every palyra session sets it), so the other nodes' appends go
on: a publish made meanwhile is answered 201, not 503 after the command timeout, and the
stuck session's transaction is gone, nothing of it committed."""

from __future__ import annotations

import pytest

from palyra_py.storage.postgres import (
    COMMAND_TIMEOUT_S,
    DRIVER_ERRORS,
    IDLE_IN_TRANSACTION_S,
    connect,
    is_connection_lost,
)
from palyra_py.testing import ManualClock, MemoryKeyring, running_daemon
from tests import leakcheck
from tests.fault_helpers import admin_session, publish, verify
from tests.pg import PgServer


async def test_a_session_stuck_in_an_append_does_not_stall_the_other_nodes(
    pg_server: PgServer, clock: ManualClock, memory_keyring: MemoryKeyring,
) -> None:
    assert IDLE_IN_TRANSACTION_S < COMMAND_TIMEOUT_S  # others wait less than they may
    pg_server.new_database("stuck")
    database = pg_server.databases[-1]
    with leakcheck.checked_state_dir("ps-node-") as state:
        async with running_daemon(state, clock=clock, keyring=memory_keyring,
                                  storage__backend="postgres",
                                  storage__dsn=pg_server.dsn(database)) as daemon, \
                admin_session(daemon.socket_path) as admin:
            status, before = await publish(admin, "job.before", n=0)
            assert status == 201, before

            # The other node: a palyra session (the same connect as every store's) that
            # took the head row, wrote, and then never sent another statement.
            stuck = await connect(pg_server.dsn(database))
            try:
                assert await stuck.fetchval("SHOW idle_in_transaction_session_timeout") == (
                    f"{IDLE_IN_TRANSACTION_S}s")
                transaction = stuck.transaction()
                await transaction.start()
                await stuck.fetch("SELECT seq FROM journal_head WHERE id = 1 FOR UPDATE")
                await stuck.execute("UPDATE journal_head SET seq = seq WHERE id = 1")

                status, during = await publish(admin, "job.during", n=1)
                assert status == 201, during  # not 503 journal_unavailable

                # The server ended the stuck session (so its locks are gone).
                # (InterfaceError, or the driver's InternalClientError when the server's
                # goodbye reached it before the close did.)
                with pytest.raises(DRIVER_ERRORS) as ended:
                    await stuck.fetchval("SELECT 1")
                assert is_connection_lost(ended.value), repr(ended.value)
            finally:
                await stuck.close()
            assert (await verify(admin))["ok"]
            assert during["seq"] == before["seq"] + 1
