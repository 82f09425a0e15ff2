"""In-process notification of new journal ``seq`` numbers to live readers.

The journal is the source of truth; the bus only says "the head moved to N". A reader that
wakes reads the journal from its own cursor, so a missed notification never loses an event.
"""

from __future__ import annotations

import asyncio


class SeqBus:
    def __init__(self) -> None:
        self._head = 0
        self._changed = asyncio.Event()

    @property
    def head(self) -> int:
        return self._head

    def publish(self, seq: int) -> None:
        """Called in the loop thread after a commit made ``seq`` the newest event."""
        if seq > self._head:
            self._head = seq
            self._changed.set()
            # Wake every waiter once; later waiters get a fresh event.
            self._changed = asyncio.Event()

    async def wait_beyond(self, seq: int, timeout: float | None = None) -> int:  # noqa: ASYNC109
        """Return the head as soon as it is greater than ``seq`` (at once if it already is),
        or the unchanged head after ``timeout`` seconds."""
        while self._head <= seq:
            changed = self._changed
            # asyncio.timeout, not wait_for: on 3.11 wait_for drops a cancellation that
            # comes as the event is set, and a stopping reader would wait on.
            try:
                async with asyncio.timeout(timeout):
                    await changed.wait()
            except TimeoutError:
                break
        return self._head
