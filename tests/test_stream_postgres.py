"""The stream hub over the PostgreSQL journal while the server is away (tests/pg.py): a
read that fails pauses the hub (``READ_RETRY_S``) instead of reading again at once in a
loop, and once the server is back the live client gets the event it was told of."""

from __future__ import annotations

import asyncio

from palyra_py.bus.local import SeqBus
from palyra_py.events import EventFilter, NewEvent
from palyra_py.journal.journal import Journal
from palyra_py.journal.postgres_journal import PostgresJournal
from palyra_py.stream.hub import READ_RETRY_S, StreamHub
from tests.pg import PgServer


async def test_a_failed_read_pauses_the_hub_and_it_resumes_once_the_server_is_back(
    pg_server: PgServer,
) -> None:
    journal = Journal(PostgresJournal(pg_server.new_database("hub")))  # tells no bus
    await journal.start()
    bus = SeqBus()
    paused = asyncio.Event()
    go_on = asyncio.Event()
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        # The hub's pacing sleeps are short and pass at once; the pause after a failed read
        # is held until the test lets it go.
        if seconds == READ_RETRY_S:
            pauses.append(seconds)
            paused.set()
            await go_on.wait()

    hub = StreamHub(journal, bus, sleep=sleep)
    runner = asyncio.create_task(hub.run())
    try:
        async with hub.subscribe(EventFilter(), after_seq=0) as feed:
            appended = await journal.append(NewEvent(kind="x", source="test", payload={}))
            pg_server.stop()
            try:
                bus.publish(appended.seq)  # told, but the journal cannot be read
                await asyncio.wait_for(paused.wait(), 30)
                assert pauses == [READ_RETRY_S]  # one failed read, then the pause
            finally:
                pg_server.start()
            go_on.set()
            event = await feed.next(timeout=30)
            assert event is not None and event.seq == appended.seq
    finally:
        runner.cancel()
        await journal.close()
