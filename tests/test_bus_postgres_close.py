"""Stopping the PostgreSQL bus feed just as a notice wakes it (both in the same turn of the
event loop) ends it. On Python 3.11 ``asyncio.wait_for`` returns the inner result and
drops a cancellation that comes as the awaited event is set: a feed waiting there went on
polling, and a node's stop waited for it forever (found by the whole suite: a daemon's
exit hung in ``PostgresHeadFeed.close``)."""

from __future__ import annotations

import asyncio

from palyra_py.bus.local import SeqBus
from palyra_py.bus.postgres import PostgresHeadFeed
from palyra_py.journal.journal import Journal
from palyra_py.journal.postgres_journal import PostgresJournal
from tests.pg import PgServer

NO_BACKSTOP_S = 3600.0


async def test_close_ends_the_feed_even_as_a_notice_wakes_it(pg_server: PgServer) -> None:
    dsn = pg_server.new_database("busclose")
    journal = Journal(PostgresJournal(dsn))  # its tables, the journal's head
    await journal.start()
    await journal.close()
    for _ in range(3):
        feed = PostgresHeadFeed(dsn, SeqBus(), poll_s=NO_BACKSTOP_S)
        await feed.start()
        assert feed.listening.is_set()
        await asyncio.sleep(0)  # let the feed reach its wait for a notice
        running = feed._task
        assert running is not None
        # What close() does, just as a notice arrives: the notice sets the feed's event,
        # then the feed is cancelled, in the same turn of the loop.
        feed._notified(None, 0, "palyra_journal_head", "1")  # what a NOTIFY calls
        running.cancel()
        done, _ = await asyncio.wait({running}, timeout=10)  # a deadline, not a timer
        assert running in done, "the feed went on after it was cancelled"
        await feed.close()
        assert not feed.listening.is_set()
