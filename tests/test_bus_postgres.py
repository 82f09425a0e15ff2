"""The PostgreSQL bus (``bus.postgres``) on a real server: a notice from another node's
commit moves the bus (no poll needed); a node already holding a head is not woken by it
again; a notice is a hint, the head is read from the journal (a forged one moves
nothing); a server restart costs the LISTEN connection, which comes back by itself and
catches up from the journal's head at once; a cut connection is made again at once.
(The cross-node behaviour every engine shares is tests/contract/test_bus.py's.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from palyra_py.bus.local import SeqBus
from palyra_py.bus.postgres import PostgresHeadFeed
from palyra_py.events import NewEvent
from palyra_py.journal.journal import Journal
from palyra_py.journal.postgres import HEAD_CHANNEL
from palyra_py.journal.postgres_journal import PostgresJournal
from tests.pg import PgServer

NO_BACKSTOP_S = 3600.0


async def until(condition: Callable[[], bool], timeout: float = 30) -> None:
    """Poll ``condition`` (a state of our own objects, not a timer) until a deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


@pytest.fixture
async def dsn(pg_server: PgServer) -> str:
    return pg_server.new_database("bus")


@pytest.fixture
async def journal(dsn: str) -> AsyncIterator[Journal]:
    journal = Journal(PostgresJournal(dsn))
    await journal.start()
    yield journal
    await journal.close()


def event() -> NewEvent:
    return NewEvent(kind="x", source="test", payload={})


async def test_a_notice_moves_the_bus_without_a_poll(dsn: str, journal: Journal) -> None:
    bus = SeqBus()
    passed: list[int] = []
    feed = PostgresHeadFeed(dsn, bus, on_head=passed.append, poll_s=NO_BACKSTOP_S)
    await feed.start()
    try:
        assert feed.listening.is_set() and feed.problem is None
        result = await journal.append(event())
        assert await asyncio.wait_for(bus.wait_beyond(0), 30) == result.seq
        assert (feed.heard, feed.polled) == (1, 0)
        assert passed == [result.seq]  # on to the node's other processes, once
    finally:
        await feed.close()
    assert not feed.listening.is_set()


async def test_each_head_moves_the_bus_once_told_by_the_node_or_the_server(dsn: str) -> None:
    bus = SeqBus()
    own: list[int] = []
    passed: list[int] = []

    def committed(seq: int, _events: int) -> None:
        # What the daemon does with its own commits: publish at once (the server's notice
        # of the same commit may come before or after).
        if seq > bus.head:
            own.append(seq)
        bus.publish(seq)

    journal = Journal(PostgresJournal(dsn, on_commit=committed))
    await journal.start()
    feed = PostgresHeadFeed(dsn, bus, on_head=passed.append, poll_s=NO_BACKSTOP_S)
    await feed.start()
    try:
        results = [await journal.append(event()) for _ in range(20)]
        last = results[-1].seq
        assert await asyncio.wait_for(bus.wait_beyond(last - 1), 30) == last
        # Every head moved the bus exactly once, whichever told it first.
        assert sorted(own + passed) == list(range(1, last + 1))
        assert feed.heard == len(passed)
    finally:
        await feed.close()
        await journal.close()


async def test_a_notice_is_a_hint_the_head_is_read_from_the_journal(
    dsn: str, journal: Journal
) -> None:
    bus = SeqBus()
    feed = PostgresHeadFeed(dsn, bus, poll_s=NO_BACKSTOP_S)
    await feed.start()
    conn = await asyncpg.connect(dsn)
    try:
        # Anyone who may connect may NOTIFY: a stray or forged head moves nothing.
        await conn.execute("SELECT pg_notify($1, 'not a seq')", HEAD_CHANNEL)
        await conn.execute("SELECT pg_notify($1, '999999999')", HEAD_CHANNEL)
        result = await journal.append(event())
        assert await asyncio.wait_for(bus.wait_beyond(0), 30) == result.seq
        await conn.execute("SELECT pg_notify($1, '999999999')", HEAD_CHANNEL)
        second = await journal.append(event())  # its notice comes after the forged one
        assert await asyncio.wait_for(bus.wait_beyond(result.seq), 30) == second.seq
        assert bus.head == second.seq
    finally:
        await conn.close()
        await feed.close()


async def test_a_server_restart_is_healed_and_caught_up_at_once(
    pg_server: PgServer, dsn: str, journal: Journal
) -> None:
    bus = SeqBus()
    feed = PostgresHeadFeed(dsn, bus, poll_s=NO_BACKSTOP_S, retry_s=0.05)
    await feed.start()
    try:
        before = await journal.append(event())
        assert await asyncio.wait_for(bus.wait_beyond(0), 30) == before.seq
        pg_server.stop()
        try:
            await until(lambda: feed.problem is not None)
            assert not feed.listening.is_set()
            assert "PostgreSQL unreachable" in (feed.problem or "")
        finally:
            pg_server.start()
        # Committed before the feed listens again: only its catch-up read can tell it.
        during = await journal.append(event())
        await asyncio.wait_for(feed.listening.wait(), 30)
        assert await asyncio.wait_for(bus.wait_beyond(before.seq), 30) == during.seq
        assert feed.connects == 2 and feed.problem is None
        after = await journal.append(event())
        assert await asyncio.wait_for(bus.wait_beyond(during.seq), 30) == after.seq
    finally:
        await feed.close()


async def test_a_feed_started_while_the_server_is_down_listens_once_it_is_back(
    pg_server: PgServer, dsn: str, journal: Journal
) -> None:
    first = await journal.append(event())
    bus = SeqBus()
    feed = PostgresHeadFeed(dsn, bus, poll_s=NO_BACKSTOP_S, retry_s=0.05)
    pg_server.stop()
    try:
        await feed.start()  # returns: the node starts, the feed keeps trying
        assert feed.problem is not None and not feed.listening.is_set()
    finally:
        pg_server.start()
    try:
        await asyncio.wait_for(feed.listening.wait(), 30)
        assert bus.head == first.seq
    finally:
        await feed.close()


async def test_a_cut_listen_connection_is_made_again_at_once(dsn: str, journal: Journal) -> None:
    bus = SeqBus()
    # Neither the poll nor the retry interval can come within the test: only the
    # immediate reconnect (and its catch-up read) can tell the bus.
    feed = PostgresHeadFeed(dsn, bus, poll_s=NO_BACKSTOP_S, retry_s=NO_BACKSTOP_S)
    await feed.start()
    conn = await asyncpg.connect(dsn)
    try:
        pid = feed.server_pid
        assert pid is not None
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
        during = await journal.append(event())
        assert await asyncio.wait_for(bus.wait_beyond(0), 30) == during.seq
        await until(lambda: feed.connects == 2)
        assert feed.problem is None and feed.server_pid != pid
        after = await journal.append(event())
        assert await asyncio.wait_for(bus.wait_beyond(during.seq), 30) == after.seq
    finally:
        await conn.close()
        await feed.close()
