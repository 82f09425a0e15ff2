"""What ``palyra storage copy`` asks of each store when it moves an embedded installation
into PostgreSQL: a ``Copier`` per store (``server.store_catalog.copiers`` lists them in
the order they run), and the errors they raise.

A copier reads its store's embedded files (never writing them) and writes the target in
batches, each batch one transaction that also records how far it got, so a copy killed
at any point resumes where its last commit left off and never writes a row twice. It
never logs or returns a secret.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

__all__ = ["Copier", "CopyDone", "CopyFailed", "CopyRefused", "CopyUnreachable"]


class CopyRefused(Exception):
    """The target holds data that is not a copy of this installation (or one made from an
    older state of it); nothing was written. The message says what was found and what to
    do."""


class CopyUnreachable(Exception):
    """The target cannot be reached or the connection was lost; what was committed stays
    and the next run resumes from it. The message holds no URI."""


class CopyFailed(Exception):
    """A store could not be read or written for another reason (the message says which and
    why, without a value)."""


class CopyDone(NamedTuple):
    """What one copier did in this run."""

    store: str
    copied: int
    """Units written in this run (events, deliveries, secrets, documents)."""
    already: int
    """Units a previous, interrupted run had written."""
    notes: tuple[str, ...] = ()
    """Things the operator should know (a secret left as it was, a file to move)."""


class Copier(Protocol):
    """One store's copy. ``total`` first (what the progress bar counts), then ``copy``
    once."""

    store: str
    """The store's name, as in ``palyra_schema`` (``journal``, ``deliveries``, ...)."""
    unit: str
    """What it counts, plural (``events``)."""

    async def total(self) -> int:
        """Units in the source (those already in the target included)."""
        ...

    async def copy(self, advance: Callable[[int], None]) -> CopyDone:
        """Copy what the target lacks; ``advance(n)`` after each committed batch (the first
        call counts what an earlier run had already written). Raises ``CopyRefused``,
        ``CopyUnreachable`` or ``CopyFailed``."""
        ...

    async def close(self) -> None:
        """Let go of what it opened (the caller's connection stays open)."""
        ...
