"""The live fan-out on a real journal: gap-free hand-over, bounded buffers, many clients."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from palyra_py.bus import SeqBus
from palyra_py.journal import EventFilter, Journal, NewEvent
from palyra_py.stream import Feed, Overflow, StreamHub, TooManyClients


async def append(journal: Journal, n: int, kind: str = "app.tick") -> None:
    for i in range(n):
        await journal.append(NewEvent(kind=kind, source="test", payload={"i": i}))


async def started(hub: StreamHub) -> asyncio.Task[None]:
    return asyncio.create_task(hub.run())


async def test_catch_up_then_live_without_gap_or_repeat(parts: tuple[Journal, SeqBus]) -> None:
    journal, bus = parts
    await append(journal, 30)
    hub = StreamHub(journal, bus)
    runner = await started(hub)
    try:
        async with hub.subscribe(EventFilter(), after_seq=5) as feed:
            writer = asyncio.create_task(append(journal, 30))
            seen = []
            while len(seen) < 55:
                event = await feed.next(timeout=10)
                assert event is not None
                seen.append(event.seq)
            await writer
        assert seen == list(range(6, 61))
    finally:
        runner.cancel()


async def test_filters_apply_to_backlog_and_live(parts: tuple[Journal, SeqBus]) -> None:
    journal, bus = parts
    await append(journal, 3, "a.one")
    await append(journal, 3, "b.two")
    hub = StreamHub(journal, bus)
    runner = await started(hub)
    try:
        async with hub.subscribe(EventFilter(types=("b.*",)), after_seq=0) as feed:
            await append(journal, 2, "a.one")
            await append(journal, 1, "b.two")
            kinds = [(await feed.next(timeout=10)) for _ in range(4)]
        assert [e.kind for e in kinds if e] == ["b.two"] * 4
    finally:
        runner.cancel()


async def test_a_client_that_does_not_read_overflows_instead_of_growing(
    parts: tuple[Journal, SeqBus],
) -> None:
    journal, bus = parts
    hub = StreamHub(journal, bus, buffer=10)
    runner = await started(hub)
    try:
        async with hub.subscribe(EventFilter(), after_seq=0) as slow, \
                hub.subscribe(EventFilter(), after_seq=0) as fast:
            for _ in range(5):
                await append(journal, 8)
                for _ in range(8):
                    assert await fast.next(timeout=10) is not None
            with pytest.raises(Overflow):
                while True:
                    await slow.next(timeout=10)
        assert hub.overflows == 1 and hub.clients == 0
    finally:
        runner.cancel()


async def test_many_clients_share_one_reader(parts: tuple[Journal, SeqBus]) -> None:
    journal, bus = parts
    hub = StreamHub(journal, bus, max_clients=300)
    runner = await started(hub)
    try:
        async with contextlib_stack(hub, 300) as feeds:
            await append(journal, 1)
            got = await asyncio.gather(*(f.next(timeout=10) for f in feeds))
        assert {e.seq for e in got if e} == {1} and all(got)
        with pytest.raises(TooManyClients):
            async with contextlib_stack(hub, 301):
                pass
    finally:
        runner.cancel()


@contextlib.asynccontextmanager
async def contextlib_stack(hub: StreamHub, n: int) -> AsyncIterator[list[Feed]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(hub.subscribe(EventFilter(), 0))
               for _ in range(n)]
