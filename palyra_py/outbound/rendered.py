"""The published events the dispatcher sends, by journal seq: each built (and its bodies
rendered) once for every subscription and retry, kept for the most recent seqs, and
fetched from the journal in few reads when a page of due deliveries needs them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from palyra_py.events import from_journal
from palyra_py.journal.journal import EventFilter, Journal, JournalEvent
from palyra_py.outbound.formats import PreparedEvent

EVENT_CACHE = 2048
"""Prepared events kept (most recently used)."""
EVENT_SPAN = 1000
"""Most seqs one journal read spans when fetching the events of a page."""


class PreparedEvents:
    def __init__(self, journal: Journal, size: int = EVENT_CACHE) -> None:
        self._journal = journal
        self._size = size
        self._events: OrderedDict[int, PreparedEvent] = OrderedDict()

    def prepared(self, event: JournalEvent) -> PreparedEvent | None:
        """The prepared form of a journal event just read; ``None`` for one that is not
        published (``delivery.*``)."""
        cached = self._events.get(event.seq)
        if cached is not None:
            return cached
        published = from_journal(event)
        if published is None:
            return None
        prepared = self._events[event.seq] = PreparedEvent(published)
        while len(self._events) > self._size:
            self._events.popitem(last=False)
        return prepared

    async def get(self, seq: int) -> PreparedEvent | None:
        """The event of ``seq``; ``None`` when it is no longer in the journal."""
        found = await self.get_many((seq,))
        return found.get(seq)

    async def get_many(self, seqs: Iterable[int]) -> dict[int, PreparedEvent]:
        """The events of ``seqs`` still in the journal: one read per span of seqs."""
        found: dict[int, PreparedEvent] = {}
        missing: list[int] = []
        for seq in seqs:
            cached = self._events.get(seq)
            if cached is not None:
                found[seq] = cached
            else:
                missing.append(seq)
        missing.sort()
        start = 0
        while start < len(missing):
            end = start
            while end + 1 < len(missing) and missing[end + 1] - missing[start] < EVENT_SPAN:
                end += 1
            first, last = missing[start], missing[end]
            for event in await self._journal.list(EventFilter(), after_seq=first - 1,
                                                  limit=last - first + 1):
                prepared = self.prepared(event)
                if prepared is not None:
                    found[event.seq] = prepared
            start = end + 1
        return found
