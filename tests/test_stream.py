"""The live fan-out on a real journal: gap-free hand-over, bounded buffers, many clients."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
from collections.abc import AsyncIterator, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from palyra_py.bus.local import SeqBus
from palyra_py.journal.journal import EventFilter, Journal, JournalEvent, NewEvent
from palyra_py.stream.hub import (
    Feed,
    GroupMatcher,
    Overflow,
    StreamHub,
    TooManyClients,
    TooManyOwnerStreams,
    TypeGlobs,
    wildcard_chars,
)


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


# -- type globs compiled once per group (issue 9, item 2) -----------------------------------

def journal_event(seq: int, kind: str, event_type: str | None, *, source: str = "test",
                  integration_id: str | None = None, ts_unix_ms: int = 1_700_000_000_000
                  ) -> JournalEvent:
    return JournalEvent(
        seq=seq, event_id=f"e{seq}", ts_unix_ms=ts_unix_ms, kind=kind, source=source,
        actor=source, integration_id=integration_id, event_type=event_type, severity="info",
        payload={}, redacted=False, prev_hash="0" * 64, hash="1" * 64,
    )


GLOB = st.text(alphabet="ab.*?[]!-", max_size=8)
NAME = st.text(alphabet="ab.[]!-", max_size=8)


def first_only(event: JournalEvent) -> bool:
    """A ``visible`` check (as a token's read scope is one) that hides every event but seq 1."""
    return event.seq == 1


@settings(max_examples=300, deadline=None)
@given(types=st.lists(GLOB, max_size=6), kind=NAME, event_type=st.none() | NAME,
       source=st.sampled_from([None, "test", "other"]),
       since=st.sampled_from([None, 1_600_000_000_000, 1_800_000_000_000]),
       visible=st.sampled_from([None, first_only]))
def test_a_compiled_group_judges_exactly_as_the_filter(
    types: list[str], kind: str, event_type: str | None, source: str | None, since: int | None,
    visible: Callable[[JournalEvent], bool] | None,
) -> None:
    flt = EventFilter(types=tuple(types), source=source, since_ms=since, visible=visible)
    event = journal_event(1, kind, event_type)
    other = journal_event(2, "a.b", None)
    matcher = GroupMatcher(flt)
    expected = flt.matches(event)
    assert matcher.matches(event) is expected
    keys = [(event.kind, event.event_type), (other.kind, other.event_type)]
    picked = matcher.select([event, other], keys, dict.fromkeys(keys))
    assert picked == [e for e in (event, other) if flt.matches(e)]


@settings(max_examples=1000, deadline=None)
@given(patterns=st.lists(st.text(alphabet="ab.*?[]!-\n", max_size=8), max_size=5),
       name=st.text(alphabet="ab.*?[]!-\n", max_size=10))
def test_compiled_globs_match_as_fnmatchcase(patterns: list[str], name: str) -> None:
    expected = any(fnmatch.fnmatchcase(name, p) for p in patterns)
    assert TypeGlobs(patterns).match(name) is expected


def test_only_globs_that_need_a_regular_expression_count_against_the_budget() -> None:
    assert wildcard_chars(["app.deploy", "app.*", "*.done", "*", ""]) == 0
    assert wildcard_chars(["app.?", "a*b", "**", "[ab]*", "*a*"]) == 5 + 3 + 2 + 5 + 3


async def test_many_groups_with_many_globs_cost_one_match_per_group_and_type(
    parts: tuple[Journal, SeqBus],
) -> None:
    # 300 groups of 16 globs each (15 that never match, then app.*): every event still
    # reaches every client, and the hub ran one compiled match per group and distinct type,
    # not one per event x glob.
    journal, bus = parts
    groups, events = 300, 40
    hub = StreamHub(journal, bus, max_clients=groups)
    runner = await started(hub)
    try:
        async with contextlib.AsyncExitStack() as stack:
            feeds = []
            for g in range(groups):
                types = (*(f"g{g}.never{p}.*[!x]?" for p in range(15)), "app.*")
                flt = EventFilter(types=types)
                feeds.append(await stack.enter_async_context(hub.subscribe(flt, 0)))
            assert hub.groups == groups
            for i in range(events):
                await append(journal, 1, "app.tick" if i % 2 else "app.tock")
            for feed in feeds:
                got = [await feed.next(timeout=10) for _ in range(events)]
                assert [e.seq for e in got if e] == list(range(1, events + 1))
            assert hub.type_matches == groups * 2
    finally:
        runner.cancel()


async def test_streams_are_bounded_per_owner_and_a_closed_one_frees_its_place(
    parts: tuple[Journal, SeqBus],
) -> None:
    journal, bus = parts
    hub = StreamHub(journal, bus, max_per_owner=3)
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(2):
            await stack.enter_async_context(hub.open_sse(EventFilter(), 0, "app"))
        async with contextlib.AsyncExitStack() as third:
            await third.enter_async_context(hub.open_sse(EventFilter(), 0, "app"))
            with pytest.raises(TooManyOwnerStreams):
                async with hub.open_sse(EventFilter(), 0, "app"):
                    pass
            async with hub.open_sse(EventFilter(), 0, "other"), hub.open_sse(EventFilter(), 0):
                assert (hub.owned("app"), hub.owned("other"), hub.clients) == (3, 1, 5)
        assert hub.owned("app") == 2  # the refused one took no place; the closed one left
        async with hub.open_sse(EventFilter(), 0, "app"):
            assert hub.owned("app") == 3
    assert (hub.owned("app"), hub.clients, hub.groups) == (0, 0, 0)
