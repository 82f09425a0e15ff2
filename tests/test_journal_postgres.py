"""What the PostgreSQL journal adds to the contract suite (tests/contract), on a real
server (tests/pg.py): several appenders share one database, the table refuses edits,
migrations run once however many nodes start together, and a lost server or connection
fails appends only while it is lost, without a restart of the journal."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from itertools import pairwise

import pytest
import ulid

from palyra_py.events import AppendResult, EventFilter
from palyra_py.journal.backend import JournalUnavailable, PendingRow
from palyra_py.journal.chain import encode_payload
from palyra_py.journal.postgres import JournalSql
from palyra_py.journal.postgres_journal import PostgresJournal
from palyra_py.testing import ManualClock
from tests.pg import PgServer


def row(n: int, key: tuple[str, str, int] | None = None) -> PendingRow:
    return PendingRow(str(ulid.ULID()), "test.event", "test", None, None, None, "info",
                      encode_payload({"n": n}), False, key)


@pytest.fixture
def dsn(pg_server: PgServer) -> str:
    return pg_server.new_database()


@pytest.fixture
async def journal(dsn: str, clock: ManualClock) -> AsyncIterator[PostgresJournal]:
    backend = PostgresJournal(dsn, clock=clock, connect_timeout_s=2)
    await backend.start()
    yield backend
    await backend.close()


async def test_several_appenders_share_one_gap_free_chain(dsn: str, clock: ManualClock
                                                         ) -> None:
    journals = [PostgresJournal(dsn, clock=clock) for _ in range(3)]
    # Started together: the migrations run once, under the lock.
    await asyncio.gather(*(j.start() for j in journals))
    try:
        results: list[AppendResult] = await asyncio.gather(*(
            journals[n % 3].append(row(n)) for n in range(600)))
        assert sorted(r.seq for r in results) == list(range(1, 601))
        # A replay key seen by one appender is a duplicate on the others.
        key = ("github", "d-1", 60_000)
        keyed = await asyncio.gather(*(j.append(row(0, key)) for j in journals for _ in "ab"))
        assert len({(r.seq, r.event_id) for r in keyed}) == 1
        assert sum(not r.duplicate for r in keyed) == 1
        rows = await journals[0].read_events(EventFilter(), after_seq=0, limit=1000)
        assert [r.seq for r in rows] == list(range(1, 602))
        assert all(b.prev_hash == a.hash for a, b in pairwise(rows))
        walk = await journals[1].verify()
        assert (walk.reason, walk.checked) == ("ok", 601)
    finally:
        await asyncio.gather(*(j.close() for j in journals))


async def test_the_schema_is_migrated_once_and_the_table_refuses_edits(
    journal: PostgresJournal, pg_server: PgServer
) -> None:
    await journal.append(row(1))
    database = pg_server.databases[-1]
    assert pg_server.psql(database, "SELECT store || ':' || version FROM palyra_schema"
                          " ORDER BY version") == "journal:1\njournal:2"
    for statement in ("UPDATE journal_events SET kind = 'x'", "DELETE FROM journal_events",
                      "TRUNCATE journal_events"):
        with pytest.raises(RuntimeError, match="journal is append-only"):
            pg_server.psql(database, statement)
    assert (await journal.verify()).reason == "ok"


async def test_payloads_are_stored_compressed_with_lz4_and_read_back_whole(
    journal: PostgresJournal, pg_server: PgServer
) -> None:
    database = pg_server.databases[-1]
    assert pg_server.psql(database, "SELECT attcompression FROM pg_attribute WHERE attrelid ="
                          " 'journal_events'::regclass AND attname = 'payload_json'") == "l"
    big = PendingRow(str(ulid.ULID()), "test.event", "test", None, None, None, "info",
                     encode_payload({"text": "webhook body " * 1000}), False, None)
    await journal.append(big)
    assert pg_server.psql(database, "SELECT pg_column_compression(payload_json)"
                          " FROM journal_events") == "lz4"
    stored = await journal.read_events(EventFilter(), after_seq=0, limit=10)
    assert [r.payload_json for r in stored] == [big.payload_json]
    assert (await journal.verify()).reason == "ok"


async def test_the_journal_plans_each_statement_for_its_values_unless_the_uri_says(
    dsn: str, clock: ManualClock
) -> None:
    async def mode(journal: PostgresJournal) -> str:
        async def show(sql: JournalSql) -> str:
            return str(await sql.conn.fetchval("SHOW plan_cache_mode"))
        return await journal._read(show)

    for uri, expected in ((dsn, "force_custom_plan"), (dsn + "&plan_cache_mode=auto", "auto")):
        journal = PostgresJournal(uri, clock=clock)
        await journal.start()
        try:
            assert await mode(journal) == expected
            assert journal._writer is not None
            assert await journal._writer.fetchval("SHOW plan_cache_mode") == expected
        finally:
            await journal.close()


async def test_a_schema_newer_than_the_code_is_refused(dsn: str, pg_server: PgServer,
                                                      clock: ManualClock) -> None:
    first = PostgresJournal(dsn, clock=clock)
    await first.start()
    await first.close()
    pg_server.psql(pg_server.databases[-1],
                   "INSERT INTO palyra_schema (store, version, name) VALUES ('journal', 9, 'x')")
    later = PostgresJournal(dsn, clock=clock)
    with pytest.raises(JournalUnavailable, match="version 9, newer than this palyra"):
        await later.start()
    await later.close()


async def test_a_cut_connection_is_replaced_without_failing_an_append(
    journal: PostgresJournal, pg_server: PgServer
) -> None:
    assert (await journal.append(row(1))).seq == 1
    assert await journal.last_seq() == 1
    assert pg_server.terminate_backends(pg_server.databases[-1]) >= 2  # writer and reader
    # Nothing had been sent on the dead connection: the batch goes again on a new one.
    assert (await journal.append(row(2))).seq == 2
    assert await journal.last_seq() == 2
    assert journal.failed_batches == 0


async def test_a_stopped_server_fails_appends_until_it_is_back(
    journal: PostgresJournal, pg_server: PgServer
) -> None:
    password = "pw-not-shown-7731"
    await journal.append(row(1))
    pg_server.stop()
    try:
        with pytest.raises(JournalUnavailable) as caught:
            await journal.append(row(2))
        assert "PostgreSQL unreachable" in str(caught.value)
        with pytest.raises(JournalUnavailable):
            await journal.last_seq()
        assert journal.failed_batches == 1
        assert journal.unavailable_reason is None  # not "until a restart"
        assert journal.check_file() is not None and not journal.reachable.is_set()
        # A node starting meanwhile fails to start, and its error quotes no DSN.
        other = PostgresJournal(
            f"postgresql://palyra:{password}@/{pg_server.databases[-1]}"
            f"?host={pg_server.socket_dir}&port=5432", connect_timeout_s=2)
        with pytest.raises(JournalUnavailable) as refused:
            await other.start()
        assert password not in str(refused.value)
        await other.close()
    finally:
        pg_server.start()
    # Back: the idle writer's probe finds it without an append (readiness returns).
    await asyncio.wait_for(journal.reachable.wait(), 10)
    assert journal.check_file() is None
    # And the same journal appends again, after the seq it had.
    assert (await journal.append(row(3))).seq == 2
    assert await journal.last_seq() == 2
    assert (await journal.verify()).reason == "ok"
