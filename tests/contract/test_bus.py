"""The ``Bus`` contract, on every engine: a publish wakes every waiter, a head never goes
back, a wait is bounded; and a notice that never arrives costs a delay, never an event,
because a reader waits a bounded time and then reads the journal from its cursor (the
poll backstop)."""

from __future__ import annotations

import asyncio

from palyra_py.events import EventFilter, NewEvent
from palyra_py.journal.journal import Journal
from palyra_py.testing import ManualClock
from tests.contract.conftest import Engine

POLL_S = 0.05


async def test_a_publish_wakes_every_waiter(engine: Engine) -> None:
    bus = engine.bus()
    assert bus.head == 0
    waiters = [asyncio.create_task(bus.wait_beyond(0)) for _ in range(5)]
    await asyncio.sleep(0)  # one turn of the loop (not a timed wait): each waiter waits
    assert not any(w.done() for w in waiters)
    bus.publish(3)
    assert await asyncio.gather(*waiters) == [3] * 5
    assert bus.head == 3


async def test_the_head_never_goes_back_and_a_wait_is_bounded(engine: Engine) -> None:
    bus = engine.bus()
    bus.publish(7)
    bus.publish(5)
    assert bus.head == 7
    # Already beyond: at once, whatever the timeout.
    assert await bus.wait_beyond(6, timeout=None) == 7
    # Not beyond: the unchanged head once the timeout is over.
    assert await bus.wait_beyond(7, timeout=0.01) == 7


async def test_a_lost_notice_is_recovered_by_the_poll_backstop(engine: Engine,
                                                               clock: ManualClock) -> None:
    told = engine.bus()
    lost: list[int] = []
    journal = Journal(engine.journal(  # never told
        clock=clock, on_commit=lambda seq, _events: lost.append(seq)))
    await journal.start()
    try:
        cursor = 0

        async def reader() -> list[int]:
            # What every reader does: wait for the bus at most POLL_S, then read anyway.
            nonlocal cursor
            while True:
                await told.wait_beyond(cursor, timeout=POLL_S)
                found = await journal.list(EventFilter(), after_seq=cursor)
                if found:
                    cursor = found[-1].seq
                    return [event.seq for event in found]

        reading = asyncio.create_task(reader())
        appended = await journal.append(NewEvent("test.event", "test", {}))
        assert told.head == 0 and lost == [appended.seq]
        assert await asyncio.wait_for(reading, timeout=5) == [appended.seq]
    finally:
        await journal.close()
