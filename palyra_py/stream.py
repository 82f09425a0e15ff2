"""Live fan-out of journal events to stream clients (SSE, ``system events tail -f``).

One reader task follows the journal head and hands each new event to every live client's
bounded queue, so N clients cost one journal read per commit, not N. A client that falls a
whole buffer behind is sent ``stream.overflow`` and closed: memory never grows with a slow
reader. A client joining with a cursor (``Last-Event-ID``) first catches up from the journal,
then switches to its live queue without a gap or a repeat (events are ordered by ``seq``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import structlog

from palyra_py.bus import SeqBus
from palyra_py.journal import EventFilter, Journal, JournalEvent, JournalUnavailable

log = structlog.get_logger("palyra.stream")

PAGE = 500


class TooManyClients(Exception):
    """The stream client limit is reached."""


class Overflow(Exception):
    """The client fell more than its buffer behind; it must reconnect with its cursor."""


@dataclass(eq=False)
class StreamClient:
    flt: EventFilter
    queue: asyncio.Queue[JournalEvent | None]
    overflowed: bool = False
    last_seq: int = 0
    joined_at_seq: int = field(default=0)


class StreamHub:
    def __init__(
        self, journal: Journal, bus: SeqBus, *, max_clients: int = 2000, buffer: int = 1000
    ) -> None:
        self._journal = journal
        self._bus = bus
        self._clients: set[StreamClient] = set()
        # The head as the bus knows it now: clients that join before run() first wakes must
        # already see this as the live start, or the events up to it would be skipped.
        self._cursor = bus.head
        self.max_clients = max_clients
        self.buffer = buffer
        self.overflows = 0

    @property
    def clients(self) -> int:
        return len(self._clients)

    async def run(self) -> None:
        """Follow the journal head for as long as the daemon runs."""
        while True:
            head = await self._bus.wait_beyond(self._cursor)
            if not self._clients:
                # Nobody listens: move on without reading (new clients catch up from the
                # journal anyway), so an idle hub costs the ingress nothing.
                self._cursor = head
                continue
            try:
                events = await self._journal.list(EventFilter(), after_seq=self._cursor,
                                                  limit=PAGE)
            except JournalUnavailable as exc:  # pragma: no cover - logged, retried next wake
                log.warning("stream_read_failed", error=str(exc))
                continue
            for event in events:
                self._cursor = event.seq
                for client in tuple(self._clients):
                    self._offer(client, event)

    def _offer(self, client: StreamClient, event: JournalEvent) -> None:
        if client.overflowed or not client.flt.matches(event):
            return
        try:
            client.queue.put_nowait(event)
        except asyncio.QueueFull:
            client.overflowed = True
            self.overflows += 1
            # Wake the consumer so it notices at once; the sentinel may not fit either.
            with contextlib.suppress(asyncio.QueueFull):
                client.queue.put_nowait(None)

    @contextlib.asynccontextmanager
    async def subscribe(self, flt: EventFilter, after_seq: int) -> AsyncIterator[Feed]:
        """A :class:`Feed` of matching events with ``seq > after_seq``."""
        if len(self._clients) >= self.max_clients:
            raise TooManyClients(f"at most {self.max_clients} stream clients")
        client = StreamClient(flt, asyncio.Queue(maxsize=self.buffer))
        # Join the live fan-out first, then catch up to the point where it joined: every
        # event after that point is in the queue, every event before it comes from the
        # journal, and seq order removes any overlap.
        self._clients.add(client)
        client.joined_at_seq = self._cursor
        try:
            yield Feed(self._journal, client, after_seq, self.buffer)
        finally:
            self._clients.discard(client)


class Feed:
    """One client's events in seq order: first from the journal, then live."""

    def __init__(self, journal: Journal, client: StreamClient, after_seq: int, buffer: int) -> None:
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
