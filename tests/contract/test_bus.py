"""The ``Bus`` contract, on every engine: a publish wakes every waiter, a head never goes
back, a wait is bounded; and a notice that never arrives costs a delay, never an event,
because a reader waits a bounded time and then reads the journal from its cursor (the
poll backstop).

Across nodes (processes on SQLite, nodes on PostgreSQL): a commit on one node wakes the
readers of every other by its notice; a reader that reads the journal from its cursor at
each wake gets every event once, whichever node appended it; a node cut off from the
notices catches up from the journal."""

from __future__ import annotations

import asyncio

from palyra_py.events import EventFilter, NewEvent
from palyra_py.journal.journal import Journal
from palyra_py.testing import ManualClock
from tests.contract.conftest import Engine, Node

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


NO_BACKSTOP_S = 3600.0
"""A poll that never comes within a test: only a notice can wake the node."""


def event(n: int) -> NewEvent:
    return NewEvent("test.event", "test", {"n": n})


async def test_a_commit_on_one_node_wakes_the_others_by_its_notice(
    engine: Engine, clock: ManualClock
) -> None:
    near = await engine.node(clock=clock, poll_s=NO_BACKSTOP_S)
    far = await engine.node(clock=clock, poll_s=NO_BACKSTOP_S)
    appended = await near.journal.append(event(1))
    assert near.bus.head == appended.seq  # its own commit: at once
    assert await asyncio.wait_for(far.bus.wait_beyond(0), timeout=10) == appended.seq
    # Only committed heads are told: the far node reads the event it was told of.
    found = await far.journal.list(EventFilter(), after_seq=0)
    assert [e.seq for e in found] == [appended.seq]


async def read_as_told(node: Node, until: int) -> list[int]:
    """What a stream or the dispatcher does: at each wake, read the journal after its
    cursor; the seqs it read, in order."""
    cursor, seen = 0, []
    while cursor < until:
        await node.bus.wait_beyond(cursor)
        for found in await node.journal.list(EventFilter(), after_seq=cursor, limit=10_000):
            seen.append(found.seq)
            cursor = found.seq
    return seen


async def test_every_node_reads_every_commit_once_whoever_appended_it(
    engine: Engine, clock: ManualClock
) -> None:
    nodes = [await engine.node(clock=clock, poll_s=NO_BACKSTOP_S) for _ in range(3)]
    per_node = 40
    readers = [asyncio.create_task(read_as_told(node, 3 * per_node)) for node in nodes]
    await asyncio.gather(*(node.journal.append(event(i))
                           for i in range(per_node) for node in nodes))
    seen = await asyncio.wait_for(asyncio.gather(*readers), timeout=30)
    assert seen == [list(range(1, 3 * per_node + 1))] * 3
    assert [node.bus.head for node in nodes] == [3 * per_node] * 3


async def test_a_node_cut_off_from_the_notices_catches_up_from_the_journal(
    engine: Engine, clock: ManualClock
) -> None:
    near = await engine.node(clock=clock, poll_s=NO_BACKSTOP_S)
    far = await engine.node(clock=clock, poll_s=POLL_S)
    first = await near.journal.append(event(1))
    assert await asyncio.wait_for(far.bus.wait_beyond(0), timeout=10) == first.seq
    await far.cut()
    # Commits while the far node hears nothing: its poll (or, on a new connection, its
    # read of the head) finds them.
    later = [await near.journal.append(event(n)) for n in range(2, 5)]
    assert await asyncio.wait_for(
        far.bus.wait_beyond(later[-1].seq - 1), timeout=10) == later[-1].seq
    # And it is told again afterwards.
    again = await near.journal.append(event(5))
    assert await asyncio.wait_for(far.bus.wait_beyond(later[-1].seq), timeout=10) == again.seq
