"""Copying a journal from one engine to another (``palyra storage copy``): every row with
its seq, hash and previous hash exactly as stored, the retention checkpoint, the live
replay keys, and the chain's head, so that ``palyra system events verify`` passes on the
copy and a provider's retry of an event delivered before the move is still a duplicate.

The engines' sides are small: the source (``sqlite_export.JournalExport``) reads rows by
seq, the target (``postgres_import.JournalImport``) writes a batch of them and moves its
head in one transaction. The head is how far a copy got: a copy killed at any point
resumes after the target's head, once the source's row at that seq is found to have the
same hash (the same installation, unchanged up to there).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

from palyra_py.journal.backend import ChainHead, EventRow
from palyra_py.journal.chain import ZERO_HASH
from palyra_py.storage.copying import CopyDone, CopyRefused

__all__ = ["BATCH_ROWS", "JournalCopier", "JournalSource", "JournalTarget", "ReplayKeyRow",
           "source_identity"]

BATCH_ROWS = 2000
"""Rows per transaction: a batch is lost at most when the copy is killed."""


class ReplayKeyRow(NamedTuple):
    """One replay key, as both engines store it."""

    integration_id: str
    delivery_id: str
    seq: int
    event_id: str
    expires_at_ms: int


class JournalSource(Protocol):
    """The journal being copied; not written meanwhile (its daemon is stopped)."""

    async def checkpoint(self) -> ChainHead | None: ...

    async def head(self) -> ChainHead:
        """The newest row's seq and hash, else the checkpoint's, else ``(0, ZERO_HASH)``."""
        ...

    async def first(self) -> ChainHead | None:
        """The oldest row's seq and hash (``None`` without rows)."""
        ...

    async def count_after(self, seq: int) -> int: ...

    async def row_hash(self, seq: int) -> str | None: ...

    async def rows_after(self, seq: int, limit: int) -> list[EventRow]: ...

    async def live_keys(self, now_ms: int) -> list[ReplayKeyRow]: ...

    def close(self) -> None: ...


class JournalTarget(Protocol):
    async def head(self) -> ChainHead:
        """The target's head (``(0, ZERO_HASH)`` when nothing was copied)."""
        ...

    async def write(self, rows: Sequence[EventRow], *, after: ChainHead,
                    checkpoint: ChainHead | None) -> ChainHead:
        """In one transaction: the checkpoint (if given), ``rows`` and the new head, only
        if the head is still ``after`` (else ``CopyRefused``)."""
        ...

    async def write_keys(self, keys: Sequence[ReplayKeyRow]) -> None:
        """Put the keys (a key already there is replaced)."""
        ...


def source_identity(first: ChainHead | None, checkpoint: ChainHead | None) -> str:
    """What names an installation: where its chain starts (the first row ever written, or
    the retention checkpoint the chain now starts from). A journal without a row is named
    by nothing it holds: ``empty``."""
    start = checkpoint if checkpoint is not None else first
    if start is None:
        return "empty"
    return f"{start.seq}:{start.hash}"


class JournalCopier:
    """The journal's ``Copier``."""

    store = "journal"
    unit = "events"

    def __init__(self, source: JournalSource, target: JournalTarget, *,
                 now_ms: Callable[[], int], batch_rows: int = BATCH_ROWS) -> None:
        self._source = source
        self._target = target
        self._now_ms = now_ms
        self._batch_rows = batch_rows

    async def total(self) -> int:
        checkpoint = await self._source.checkpoint()
        return await self._source.count_after(0 if checkpoint is None else checkpoint.seq)

    async def copy(self, advance: Callable[[int], None]) -> CopyDone:
        source, target = self._source, self._target
        checkpoint = await source.checkpoint()
        head = await target.head()
        already = 0
        if head.seq > 0:
            if await source.row_hash(head.seq) != head.hash and head != checkpoint:
                raise CopyRefused(
                    f"the target's journal ends at seq {head.seq} with a row this"
                    " installation does not hold: it is a copy of something else")
            floor = 0 if checkpoint is None else checkpoint.seq
            already = max(0, head.seq - floor)
            advance(already)
        pending_checkpoint = checkpoint if head.seq == 0 else None
        if head.seq == 0 and checkpoint is not None:
            # The chain starts at the checkpoint: write it with the first batch.
            head = ChainHead(0, ZERO_HASH)
        copied = 0
        after_seq = max(head.seq, 0 if checkpoint is None else checkpoint.seq)
        rows = await source.rows_after(after_seq, self._batch_rows)
        while rows:
            # The next batch is read (in SQLite's thread) while this one is written.
            following = asyncio.ensure_future(
                source.rows_after(int(rows[-1].seq), self._batch_rows))
            try:
                head = await target.write(rows, after=head, checkpoint=pending_checkpoint)
            except BaseException:
                following.cancel()
                await asyncio.gather(following, return_exceptions=True)
                raise
            pending_checkpoint = None
            copied += len(rows)
            advance(len(rows))
            rows = await following
        if pending_checkpoint is not None:  # a checkpoint and no row after it
            head = await target.write((), after=head, checkpoint=pending_checkpoint)
        # The keys last: a key names its event's seq, so the event is there first. A run
        # after an interruption puts them again (they are few: one window's worth).
        await target.write_keys(await source.live_keys(self._now_ms()))
        return CopyDone(self.store, copied, already)

    async def close(self) -> None:
        self._source.close()
