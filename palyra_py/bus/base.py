"""What every reader of the bus relies on (``Bus``): "the journal's head is now N".

The journal is the truth; the bus only says the head moved. A reader that wakes reads the
journal from its own cursor, so a notice that never arrives (a process restarting, a
dropped datagram, a lost connection) costs a delay, never an event: engines that can lose
notices pair them with a poll of the journal's head (the poll backstop), and readers that
cannot wait for it read the journal after a bounded wait. Engines: ``bus.local`` (one
process), fed by ``bus.socket`` (the processes of one node) and ``bus.postgres`` (every
node on one PostgreSQL).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Bus"]


class Bus(Protocol):
    """The head as told so far, and a way to wait for it to move. Use it from one event
    loop."""

    @property
    def head(self) -> int:
        """The newest seq told so far (0 before any); it never goes back."""
        ...

    def publish(self, seq: int) -> None:
        """Tell every waiter that ``seq`` is committed; a seq not above the head is
        ignored."""
        ...

    async def wait_beyond(self, seq: int, timeout: float | None = None) -> int:  # noqa: ASYNC109
        """Return the head as soon as it is greater than ``seq`` (at once if it already
        is), or the unchanged head after ``timeout`` seconds (``None``: no limit)."""
        ...
