"""Live fan-out of journal events to stream clients (SSE, ``system events tail -f``).

One reader task follows the journal head and hands each pass's new events to every live
client, so N clients cost one journal read per pass, not N. Clients are grouped by filter:
a group's matching events are picked once per pass and shared as one :class:`Batch` (for SSE
the frames are encoded and joined once too, see :mod:`palyra_py.stream.sse`). A client that
falls a whole buffer behind is sent ``stream.overflow`` and closed: memory never grows with
a slow reader. A client joining with a cursor (``Last-Event-ID``) first catches up from the
journal, then switches to the live batches without a gap or a repeat (events are ordered by
``seq``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fnmatch
import functools
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Protocol

import structlog

from palyra_py.bus.base import Bus
from palyra_py.journal.journal import EventFilter, Journal, JournalEvent, JournalUnavailable
from palyra_py.stream.sse import PAGE, Batch, SseClient

log = structlog.get_logger("palyra.stream")

# Passes are paced by the number of clients: a pass costs a few microseconds per client
# (one socket write each; about 5 us measured with 1,000 clients, bench/sse.py), so leaving
# PASS_S_PER_CLIENT per client between pass starts keeps the fan-out at most about a quarter
# of the event loop the ingress shares, whatever the event rate: events that arrive
# meanwhile join the next pass, and the per-client cost is per pass, not per event. A few
# clients are not held back at all (20 us each); the interval never exceeds
# MAX_PASS_INTERVAL_S, so pacing adds at most 25 ms to an event's way to a client, a quarter
# of the 100 ms p99 the stream is meant to keep with 1,000 clients at 200 events/s.
PASS_S_PER_CLIENT = 20e-6
MAX_PASS_INTERVAL_S = 0.025
READ_RETRY_S = 0.5
"""The pause after a failed read of the journal (PostgreSQL unreachable): the head the bus
told is still ahead of the cursor, so without it the hub would read again at once, in a
loop, for as long as the server is away."""
MIN_SLEEP_S = 0.001  # a shorter wait is not worth a timer


TYPE_VERDICTS = 256
"""(kind, event_type) pairs whose type verdict a :class:`GroupMatcher` remembers (then it
starts again): few distinct types go by, and memory stays bounded per group."""


class TooManyClients(Exception):
    """The stream client limit is reached."""


class TooManyOwnerStreams(Exception):
    """One owner (a token) already has its most streams open."""


class Overflow(Exception):
    """The client fell more than its buffer behind; it must reconnect with its cursor."""


class Subscriber(Protocol):
    """What the hub feeds: ``offer`` is called once per pass that has matching events."""

    flt: EventFilter
    overflowed: bool

    def offer(self, batch: Batch, now: float) -> bool:
        """Take the batch; False when the client wants no more (see ``overflowed``)."""
        ...

    def close(self) -> None:
        """End the client's stream: the hub will not feed it again."""
        ...


class QueueClient:
    """A :class:`Feed`'s live side: a bounded queue of events."""

    def __init__(self, flt: EventFilter, buffer: int) -> None:
        self.flt = flt
        self.overflowed = False
        self.queue: asyncio.Queue[JournalEvent | None] = asyncio.Queue(maxsize=buffer)
        self.joined_at_seq = 0

    def offer(self, batch: Batch, now: float) -> bool:
        for event in batch.events:
            try:
                self.queue.put_nowait(event)
            except asyncio.QueueFull:
                self.overflowed = True
                # Wake the consumer so it notices at once; the sentinel may not fit either.
                with contextlib.suppress(asyncio.QueueFull):
                    self.queue.put_nowait(None)
                return False
        return True

    def close(self) -> None:
        # The reader sees the end as an overflow: reconnect from its cursor.
        self.overflowed = True
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)


MAX_WILDCARD_CHARS = 256
"""Characters of a stream's type globs that need a regular expression (see
:class:`TypeGlobs`), in all: compiling one costs microseconds per character on the event
loop (16 globs of 128 characters took 9 ms), so a stream's share is bounded."""

TypeKey = tuple[str, str | None]
"""What the type globs judge: an event's ``(kind, event_type)``."""

_GLOB_CHARS = frozenset("*?[")


def _plain(text: str) -> bool:
    return _GLOB_CHARS.isdisjoint(text)


def _fast_glob(pattern: str) -> bool:
    """A literal, ``prefix*`` or ``*suffix`` glob: judged by string operations."""
    return _plain(pattern) or (
        len(pattern) >= 1 and (
            (pattern[-1] == "*" and _plain(pattern[:-1]))
            or (pattern[0] == "*" and _plain(pattern[1:]))))


def wildcard_chars(patterns: Sequence[str]) -> int:
    """Characters of ``patterns`` that would go into a regular expression (see
    :class:`TypeGlobs`); a stream may have at most :data:`MAX_WILDCARD_CHARS`."""
    return sum(len(p) for p in patterns if not _fast_glob(p))


@functools.lru_cache(maxsize=256)
def _compiled(patterns: tuple[str, ...]) -> re.Pattern[str]:
    # fnmatch.translate gives "(?s:...)\Z" with no named groups: alternatives join. The
    # cache serves streams that reconnect with the same globs.
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


class TypeGlobs:
    """``fnmatch`` globs (case-sensitive) compiled once for many names: literal globs are a
    set, ``prefix*`` and ``*suffix`` globs a ``startswith``/``endswith`` tuple, the others
    one regular expression. ``match`` is True when any glob matches, as ``fnmatchcase``."""

    __slots__ = ("_exact", "_prefixes", "_regex", "_suffixes")

    def __init__(self, patterns: Sequence[str]) -> None:
        exact: set[str] = set()
        prefixes: list[str] = []
        suffixes: list[str] = []
        others: dict[str, None] = {}
        for pattern in patterns:
            if _plain(pattern):
                exact.add(pattern)
            elif pattern[-1] == "*" and _plain(pattern[:-1]):
                prefixes.append(pattern[:-1])
            elif pattern[0] == "*" and _plain(pattern[1:]):
                suffixes.append(pattern[1:])
            else:
                others[pattern] = None
        self._exact = frozenset(exact)
        self._prefixes = tuple(prefixes)
        self._suffixes = tuple(suffixes)
        self._regex = _compiled(tuple(others)) if others else None

    def match(self, name: str) -> bool:
        return (name in self._exact
                or (bool(self._prefixes) and name.startswith(self._prefixes))
                or (bool(self._suffixes) and name.endswith(self._suffixes))
                or (self._regex is not None and self._regex.match(name) is not None))


class GroupMatcher:
    """A group's filter, compiled once when the group forms (its type globs as one
    :class:`TypeGlobs`), and the verdict for each (kind, event_type) pair is remembered. A
    hub pass asks once per distinct pair in the pass (:meth:`select`), so a group costs one
    lookup per distinct type, or for a pair not seen yet one compiled match per field,
    whatever the number of globs. Judges exactly as ``EventFilter.matches`` does."""

    __slots__ = ("_others", "_types", "_verdicts", "flt", "type_matches")

    def __init__(self, flt: EventFilter) -> None:
        self.flt = flt
        self._types = TypeGlobs(flt.types) if flt.types else None
        # Any rule but the types (a read scope's ``visible`` too): then each event is asked.
        self._others = dataclasses.replace(flt, types=()) != EventFilter()
        self._verdicts: dict[TypeKey, bool] = {}
        self.type_matches = 0
        """Compiled matches run (verdicts not found in the memo), for tests and benches."""

    def matches(self, event: JournalEvent) -> bool:
        if self._types is not None and not self._verdict((event.kind, event.event_type)):
            return False
        return not self._others or self.flt.matches_besides_types(event)

    def select(self, events: list[JournalEvent], keys: list[TypeKey],
               distinct: dict[TypeKey, None]) -> list[JournalEvent]:
        """The ``events`` this filter matches, in order; ``keys`` are their type keys and
        ``distinct`` the distinct ones (computed once per pass for every group)."""
        wanted = events
        if self._types is not None:
            verdicts = {key: self._verdict(key) for key in distinct}
            hits = sum(verdicts.values())
            if not hits:
                return []
            if hits < len(verdicts):
                wanted = [e for e, key in zip(events, keys, strict=True) if verdicts[key]]
        if not self._others:
            return wanted
        return [e for e in wanted if self.flt.matches_besides_types(e)]

    def _verdict(self, key: TypeKey) -> bool:
        verdict = self._verdicts.get(key)
        if verdict is None:
            types = self._types
            assert types is not None
            self.type_matches += 1
            kind, event_type = key
            verdict = types.match(kind) or (event_type is not None and types.match(event_type))
            if len(self._verdicts) >= TYPE_VERDICTS:
                self._verdicts.clear()
            self._verdicts[key] = verdict
        return verdict


def group_key(flt: EventFilter) -> EventFilter:
    """``flt`` in a hashable form: clients with equal filters share one group."""
    if isinstance(flt.types, tuple):
        return flt
    return dataclasses.replace(flt, types=tuple(flt.types))


class StreamHub:
    def __init__(
        self, journal: Journal, bus: Bus, *, max_clients: int = 2000, buffer: int = 1000,
        max_per_owner: int = 16,
        pass_s_per_client: float = PASS_S_PER_CLIENT,
        max_pass_interval_s: float = MAX_PASS_INTERVAL_S,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._journal = journal
        self._bus = bus
        self._clients: set[Subscriber] = set()
        # Live clients by filter; a client leaves its group when it overflows or is gone.
        self._groups: dict[EventFilter, dict[Subscriber, None]] = {}
        # Each group's filter compiled once, while the group has members.
        self._matchers: dict[EventFilter, GroupMatcher] = {}
        # Open streams per owner (a token), for max_per_owner.
        self._owned: dict[str, int] = {}
        self._owner_of: dict[Subscriber, str] = {}
        # The head as the bus knows it now: clients that join before run() first wakes must
        # already see this as the live start, or the events up to it would be skipped.
        self._cursor = bus.head
        self._pass_s_per_client = pass_s_per_client
        self._max_pass_interval_s = max_pass_interval_s
        self._sleep = sleep
        self.max_clients = max_clients
        self.max_per_owner = max_per_owner
        self.buffer = buffer
        self.overflows = 0
        self.passes = 0
        """Passes that handed events to clients."""

    @property
    def clients(self) -> int:
        return len(self._clients)

    @property
    def groups(self) -> int:
        """Distinct filters among the live clients."""
        return len(self._groups)

    @property
    def type_matches(self) -> int:
        """Compiled type matches the live groups have run (see :class:`GroupMatcher`)."""
        return sum(m.type_matches for m in self._matchers.values())

    def owned(self, owner: str) -> int:
        """Streams ``owner`` has open."""
        return self._owned.get(owner, 0)

    def pass_interval(self) -> float:
        """Seconds from one pass's start to the next one's, for the clients there are now."""
        return min(self._max_pass_interval_s, len(self._clients) * self._pass_s_per_client)

    async def run(self) -> None:
        """Follow the journal head for as long as the daemon runs."""
        loop = asyncio.get_running_loop()
        next_pass = loop.time()
        while True:
            head = await self._bus.wait_beyond(self._cursor)
            if not self._clients:
                # Nobody listens: move on without reading (new clients catch up from the
                # journal anyway), so an idle hub costs the ingress nothing.
                self._cursor = head
                continue
            delay = next_pass - loop.time()
            if delay >= MIN_SLEEP_S:
                await self._sleep(delay)  # events committed meanwhile join this pass
            next_pass = loop.time() + self.pass_interval()
            try:
                events = await self._journal.list(EventFilter(), after_seq=self._cursor,
                                                  limit=PAGE)
            except JournalUnavailable as exc:
                log.warning("stream_read_failed", error=str(exc), retry_in_s=READ_RETRY_S)
                await self._sleep(READ_RETRY_S)
                continue
            if events:
                self._cursor = events[-1].seq
                self._fan_out(events, loop.time())

    def _fan_out(self, events: list[JournalEvent], now: float) -> None:
        self.passes += 1
        frames: dict[int, bytes] = {}  # each event is encoded at most once per pass
        dropped: list[Subscriber] = []
        keys = [(e.kind, e.event_type) for e in events]  # once per pass, for every group
        distinct = dict.fromkeys(keys)
        for flt, members in self._groups.items():
            matching = self._matchers[flt].select(events, keys, distinct)
            if not matching:
                continue
            batch = Batch(matching, frames)
            for client in members:
                try:
                    if client.offer(batch, now):
                        continue
                except Exception:  # one broken connection must not stop every stream
                    log.exception("stream_client_failed")
                    client.close()
                dropped.append(client)
        for client in dropped:
            self._leave_group(client)
            if client.overflowed:
                self.overflows += 1

    def _join(self, client: Subscriber, owner: str | None = None) -> int:
        if owner is not None and self._owned.get(owner, 0) >= self.max_per_owner:
            raise TooManyOwnerStreams(f"at most {self.max_per_owner} streams per token")
        if len(self._clients) >= self.max_clients:
            raise TooManyClients(f"at most {self.max_clients} stream clients")
        if client.flt not in self._matchers:
            self._matchers[client.flt] = GroupMatcher(client.flt)
        self._clients.add(client)
        self._groups.setdefault(client.flt, {})[client] = None
        if owner is not None:
            self._owned[owner] = self._owned.get(owner, 0) + 1
            self._owner_of[client] = owner
        # Every event after this point reaches the client live; every event before it
        # comes from the journal, and seq order removes any overlap.
        return self._cursor

    def _leave_group(self, client: Subscriber) -> None:
        members = self._groups.get(client.flt)
        if members is not None:
            members.pop(client, None)
            if not members:
                del self._groups[client.flt]
                self._matchers.pop(client.flt, None)

    def _leave(self, client: Subscriber) -> None:
        self._clients.discard(client)
        self._leave_group(client)
        owner = self._owner_of.pop(client, None)
        if owner is not None:
            left = self._owned[owner] - 1
            if left:
                self._owned[owner] = left
            else:
                del self._owned[owner]

    @contextlib.asynccontextmanager
    async def subscribe(self, flt: EventFilter, after_seq: int,
                        owner: str | None = None) -> AsyncIterator[Feed]:
        """A :class:`Feed` of matching events with ``seq > after_seq``, read one by one
        (the WebSocket stream, ``palyra_py.stream.ws``). Raises
        :class:`TooManyOwnerStreams` when ``owner`` (a token; None: unbounded) has
        ``max_per_owner`` streams open, :class:`TooManyClients` at ``max_clients``."""
        client = QueueClient(group_key(flt), self.buffer)
        client.joined_at_seq = self._join(client, owner)
        try:
            yield Feed(self._journal, client, after_seq, self.buffer)
        finally:
            self._leave(client)

    @contextlib.asynccontextmanager
    async def open_sse(self, flt: EventFilter, after_seq: int,
                       owner: str | None = None) -> AsyncIterator[SseClient]:
        """An :class:`SseClient` of matching events with ``seq > after_seq``, written by the
        hub once its ``serve`` runs (held until then, at most ``buffer`` events). Raises
        :class:`TooManyOwnerStreams` when ``owner`` (a token; None: unbounded) has
        ``max_per_owner`` streams open, :class:`TooManyClients` at ``max_clients``, before
        anything is sent."""
        client = SseClient(self._journal, group_key(flt), after_seq, self._cursor, self.buffer)
        self._join(client, owner)
        try:
            yield client
        finally:
            self._leave(client)
            client.close()


class Feed:
    """One client's events in seq order: first from the journal, then live."""

    def __init__(self, journal: Journal, client: QueueClient, after_seq: int,
                 buffer: int) -> None:
        self._journal = journal
        self._client = client
        self._buffer = buffer
        self.last_seq = after_seq
        self._backlog: list[JournalEvent] = []
        self._caught_up = after_seq >= client.joined_at_seq

    def pending(self) -> int:
        """Events already waiting (live part only), for callers that batch their writes."""
        return self._client.queue.qsize() if self._caught_up else len(self._backlog)

    async def next(self, timeout: float) -> JournalEvent | None:  # noqa: ASYNC109
        """The next event, or ``None`` when none came within ``timeout`` seconds (time for a
        heartbeat). Raises :class:`Overflow` when the client could not keep up."""
        client = self._client
        while not self._caught_up:
            if self._backlog:
                event = self._backlog.pop(0)
                self.last_seq = event.seq
                return event
            page = await self._journal.list(client.flt, after_seq=self.last_seq, limit=PAGE)
            self._backlog = [e for e in page if e.seq <= client.joined_at_seq]
            if not self._backlog:
                self._caught_up = True
        while True:
            if client.overflowed:
                raise Overflow(f"fell {self._buffer} events behind after seq {self.last_seq}")
            try:
                # Most calls find an event waiting: no task or timer for those.
                queued = client.queue.get_nowait()
            except asyncio.QueueEmpty:
                try:
                    queued = await asyncio.wait_for(client.queue.get(), timeout)
                except TimeoutError:
                    return None
            if queued is not None and queued.seq > self.last_seq:
                self.last_seq = queued.seq
                return queued
