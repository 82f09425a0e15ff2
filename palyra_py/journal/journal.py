"""Append-only journal: SQLite (WAL, synchronous=FULL), one writer thread, group commit,
SHA-256 hash chain, replay keys in the same commit, retention with a checkpoint.

Every system event is appended with a contiguous, increasing ``seq``; when ``append``
returns, the event is durable (its commit was fsync'd). The writer thread is in
``journal_writer``, the SQL in ``journal_store`` and ``journal_chain``; every public name
of the journal can be imported from here.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import orjson
import ulid

from palyra_py.events import (
    AppendResult,
    EncodedPayload,
    EventFilter,
    JournalEvent,
    NewEvent,
    ReplayKey,
    VerifyResult,
    format_time_ms,
)
from palyra_py.journal.chain import ChainWalk, Row
from palyra_py.journal.sqlite import (
    JournalStore,
    PendingRow,
    encode_payload,
    is_storable_text,
    related_files,
    restrict_permissions,
    where_clause,
)
from palyra_py.journal.sqlite_writer import (
    AppendJob,
    DuplicateEventId,
    GroupCommitWriter,
    JournalDamaged,
    JournalUnavailable,
    RetentionJob,
    damaged_message,
    describe_failure,
)
from palyra_py.storage.sqlite import header_problem, is_corruption

__all__ = [
    "DEFAULT_BUSY_TIMEOUT_MS",
    "DEFAULT_MAX_PENDING",
    "AppendResult",
    "DuplicateEventId",
    "EncodedPayload",
    "EventFilter",
    "GroupCommitWriter",
    "Journal",
    "JournalDamaged",
    "JournalEvent",
    "JournalUnavailable",
    "NewEvent",
    "ReplayKey",
    "VerifyResult",
    "format_time_ms",
]

_T = TypeVar("_T")

DEFAULT_BUSY_TIMEOUT_MS = 5000
DEFAULT_MAX_PENDING = 10_000
DEFAULT_START_CHECK_S = 10.0
_LIST_CHUNK_MIN = 256
_LIST_CHUNK_MAX = 4096


_LONG_DIGITS = re.compile(r"[0-9]{20}")


def _event_from_row(row: Row) -> JournalEvent:
    try:
        # orjson turns integers past 64 bits into floats; a run of 20 digits may be one, so
        # such payloads take the exact (slower) parser.
        payload = json.loads(row[9]) if _LONG_DIGITS.search(row[9]) else orjson.loads(row[9])
    except (TypeError, ValueError):
        try:  # orjson refuses escaped lone surrogates, which encode_payload may keep
            payload = json.loads(row[9])
        except (TypeError, ValueError):
            payload = None
    if not isinstance(payload, dict):
        # Only a row altered behind the daemon's back gets here; verify names it.
        payload = {"_unreadable_payload": True}
    return JournalEvent(
        int(row[0]), str(row[1]), int(row[2]), str(row[3]), str(row[4]), row[5], row[6],
        row[7], str(row[8]), payload, bool(row[10]), str(row[11]), str(row[12]),
    )


_TEXT_FIELDS = ("kind", "source", "actor", "integration_id", "event_type", "severity")


def _storable(value: object) -> bool:
    return isinstance(value, str) and (value.isascii() or is_storable_text(value))


def _pending_row(event: NewEvent) -> PendingRow:
    """Check and serialize on the caller's side, so that a bad event fails its own append
    and never the batch it would have joined."""
    texts = (event.kind, event.source, event.actor, event.integration_id, event.event_type,
             event.severity)
    try:
        plain = "".join([text for text in texts if text is not None]).isascii()
    except TypeError:  # not all text: the loop below names the field
        plain = False
    if not plain:
        for name, value in zip(_TEXT_FIELDS, texts, strict=True):
            if value is not None and not _storable(value):
                raise ValueError(f"NewEvent.{name} must be valid Unicode text")
    key = event.replay_key
    replay_key = None
    content_key = None
    if key is not None:
        # Checked here too: the writer binds them, and a bad one would fail the batch.
        if not (_storable(key.integration_id) and _storable(key.delivery_id)
                and (key.content_key is None or _storable(key.content_key))):
            raise ValueError("NewEvent.replay_key must be valid Unicode text")
        replay_key = (key.integration_id, key.delivery_id, int(key.window_s * 1000))
        if key.content_key is not None and key.content_key != key.delivery_id:
            content_key = key.content_key
    return PendingRow(
        event.event_id if event.event_id is not None else str(ulid.ULID()),
        event.kind,
        event.source,
        event.actor,
        event.integration_id,
        event.event_type,
        event.severity,
        (event.payload.text if isinstance(event.payload, EncodedPayload)
         else encode_payload(event.payload)),
        event.redacted,
        replay_key,
        content_key,
    )


# -- the journal ----------------------------------------------------------------------


class Journal:
    """The journal of one state root. Use it from the event loop that ran ``start``."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        batch_max: int = 512,
        on_commit: Callable[[int], None] | None = None,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        max_pending: int = DEFAULT_MAX_PENDING,
        start_check_s: float = DEFAULT_START_CHECK_S,
        on_unavailable: Callable[[str], None] | None = None,
    ) -> None:
        """``on_commit(last_seq)`` runs in the event loop after each commit that wrote
        rows. ``max_pending`` bounds appends waiting for the writer; beyond it, append
        raises ``JournalUnavailable``. ``start`` runs ``PRAGMA quick_check`` for at most
        ``start_check_s`` seconds (0: not at all). ``on_unavailable(reason)`` runs in the
        event loop once, when the file is found removed, replaced or damaged while open."""
        self.path = Path(path)
        self._clock = clock
        self._batch_max = batch_max
        self._on_commit = on_commit
        self._busy_timeout_ms = busy_timeout_ms
        self._max_pending = max_pending
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: GroupCommitWriter | None = None
        self._reader: JournalStore | None = None
        self._read_lock = threading.Lock()
        self._pending = 0
        self._closed = False
        self._start_check_s = start_check_s
        self._on_unavailable = on_unavailable
        self.start_check = "not run"
        """``ok``, ``incomplete`` (stopped after ``start_check_s``) or ``skipped``."""

    @property
    def unavailable_reason(self) -> str | None:
        """Why every append is refused until a restart (the file removed, replaced or
        damaged), else ``None``."""
        return None if self._writer is None else self._writer.unavailable_reason

    @property
    def damaged(self) -> bool:
        """Whether the file was found damaged (see ``unavailable_reason``)."""
        return self._writer is not None and self._writer.damaged

    def check_file(self) -> str | None:
        """Check now that the path still names the open file and its header is sound (as
        after every commit, but for the file's size: only the writer compares it, between
        its commits); the reason appends are refused, if any."""
        if self._writer is None or self._closed:
            return None if self._writer is None else self._writer.unavailable_reason
        return self._writer.check_file()

    @property
    def commits(self) -> int:
        """Append transactions committed so far (one fsync each), for tests and metrics."""
        return 0 if self._writer is None else self._writer.commits

    @property
    def failed_batches(self) -> int:
        """Append batches answered with ``JournalUnavailable`` so far."""
        return 0 if self._writer is None else self._writer.failed_batches

    async def start(self) -> None:
        """Create or open the file (0600, WAL, schema) and start the writer thread.
        Raises ``JournalUnavailable`` if the file cannot be used."""
        if self._closed:
            raise JournalUnavailable("journal is closed")
        if self._writer is not None:
            return
        try:
            writer_store, reader_store, head = await asyncio.to_thread(self._open)
        except sqlite3.Error as exc:
            if is_corruption(exc):
                raise JournalDamaged(damaged_message(self.path, describe_failure(exc, "open"))
                                     ) from exc
            raise JournalUnavailable(describe_failure(exc, "open")) from exc
        except OSError as exc:
            raise JournalUnavailable(describe_failure(exc, "open")) from exc
        self._loop = asyncio.get_running_loop()
        self._reader = reader_store
        self._writer = GroupCommitWriter(
            writer_store,
            loop=self._loop,
            clock=self._clock,
            batch_max=self._batch_max,
            on_commit=self._on_commit,
            head=head,
            path=self.path,
        )
        self._writer.on_unavailable = self._on_unavailable
        self._writer.start()

    def _open(self) -> tuple[JournalStore, JournalStore, tuple[int, str]]:
        # Sizes only without a WAL to replay: a crash inside a checkpoint may leave the
        # header ahead of the file while the WAL still holds the pages.
        wal = related_files(self.path)[1]
        problem = header_problem(self.path, sizes=not wal.exists() or wal.stat().st_size == 0)
        if problem is not None:
            raise JournalDamaged(damaged_message(self.path, problem))
        writer = JournalStore.open(self.path, busy_timeout_ms=self._busy_timeout_ms, create=True)
        try:
            writer.ensure_schema()
            head = writer.head()
            self._quick_check(writer)
            restrict_permissions(self.path)
            reader = JournalStore.open(
                self.path, busy_timeout_ms=self._busy_timeout_ms, create=False
            )
        except BaseException:
            writer.close()
            raise
        return writer, reader, head

    def _quick_check(self, store: JournalStore) -> None:
        if self._start_check_s <= 0:
            self.start_check = "skipped"
            return
        problem, complete = store.quick_check(budget_s=self._start_check_s)
        if problem is not None:
            raise JournalDamaged(damaged_message(self.path, f"quick check: {problem}"))
        self.start_check = "ok" if complete else "incomplete"

    async def close(self) -> None:
        """Finish every append already queued, stop the writer, close the connections.
        Later appends raise ``JournalUnavailable``."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._writer.stop()
            await asyncio.to_thread(self._writer.join)
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        if self._writer is not None:
            self._writer.release_file()

    def _live_writer(self) -> tuple[GroupCommitWriter, asyncio.AbstractEventLoop]:
        if self._writer is None or self._loop is None or self._closed:
            raise JournalUnavailable("journal is closed")
        return self._writer, self._loop

    async def append(self, event: NewEvent) -> AppendResult:
        """Append ``event``; return once it is durable, or is a duplicate of a live replay
        key. Raises ``JournalUnavailable`` (nothing written), ``DuplicateEventId``, or
        ``ValueError``/``TypeError`` for an event that cannot be stored (e.g. NaN)."""
        writer, loop = self._live_writer()
        if self._pending >= self._max_pending:
            raise JournalUnavailable("journal write queue is full")
        job = AppendJob(_pending_row(event), loop.create_future())
        self._pending += 1
        try:
            writer.submit(job)
            return await job.future
        finally:
            self._pending -= 1

    async def apply_retention(self, *, max_age_s: float | None, max_bytes: int | None) -> int:
        """Remove the oldest rows older than ``max_age_s`` and/or beyond ``max_bytes`` of
        estimated row size, never the newest row, keeping the chain verifiable through a
        checkpoint. Runs on the writer thread between append batches, so appends never
        fail because of it. Returns the number of rows removed."""
        writer, loop = self._live_writer()
        if max_age_s is None and max_bytes is None:
            return 0
        job = RetentionJob(max_age_s, max_bytes, loop.create_future())
        writer.submit(job)
        return await job.future

    async def _read(self, fn: Callable[[JournalStore], _T]) -> _T:
        def run() -> _T:
            with self._read_lock:
                if self._reader is None:
                    raise JournalUnavailable("journal is closed")
                return fn(self._reader)

        try:
            return await asyncio.to_thread(run)
        except sqlite3.Error as exc:
            raise self._read_failure(exc) from exc

    def _read_failure(self, exc: sqlite3.Error) -> JournalUnavailable:
        """A read failed: a damaged file also stops every append from now on."""
        reason = describe_failure(exc, "read")
        if not is_corruption(exc):
            return JournalUnavailable(reason)
        if self._writer is not None:
            self._writer.mark_damaged(reason)
            if self._writer.damaged and self._writer.unavailable_reason is not None:
                return JournalDamaged(self._writer.unavailable_reason)
        return JournalDamaged(damaged_message(self.path, reason))

    async def list(
        self, flt: EventFilter, *, after_seq: int = 0, limit: int = 100
    ) -> list[JournalEvent]:
        """Events with ``seq > after_seq`` matching ``flt``, in seq order, at most
        ``limit`` (no other cap). Page on with ``after_seq`` = the last seq returned."""
        where = where_clause(
            types=tuple(flt.types),
            integration_id=flt.integration_id,
            source=flt.source,
            since_ms=flt.since_ms,
            until_ms=flt.until_ms,
        )
        found: list[JournalEvent] = []
        cursor = after_seq
        while len(found) < limit:
            want = limit - len(found)
            # An exact SQL filter reads only what is needed; a coarse one (glob classes)
            # reads bigger chunks and the rest of the filtering happens here.
            exact = where.exact and flt.visible is None
            chunk = want if exact else min(max(want, _LIST_CHUNK_MIN), _LIST_CHUNK_MAX)

            def page(store: JournalStore, after: int = cursor, size: int = chunk) -> list[Row]:
                return store.select_events(where, after_seq=after, limit=size)

            rows = await self._read(page)
            for row in rows:
                event = _event_from_row(row)
                if flt.matches(event):
                    found.append(event)
                    if len(found) >= limit:
                        break
            if len(rows) < chunk:
                break
            cursor = int(rows[-1][0])
        return found

    async def last_seq(self) -> int:
        """The newest seq (0 for an empty journal; retention never removes the newest)."""
        return await self._read(lambda store: store.head()[0])

    async def verify(self) -> VerifyResult:
        """Walk the whole chain (from the retention checkpoint, if any) recomputing every
        hash, on a connection of its own and in one snapshot, so appends and listing go
        on meanwhile. Also works on a closed journal."""
        try:
            walk = await asyncio.to_thread(self._walk_chain)
        except sqlite3.Error as exc:
            raise self._read_failure(exc) from exc
        return VerifyResult(walk.first_broken_seq is None, *walk)

    def _walk_chain(self) -> ChainWalk:
        store = JournalStore.open(self.path, busy_timeout_ms=self._busy_timeout_ms, create=False)
        try:
            store.begin_read()
            return store.walk_chain()
        finally:
            store.rollback()
            store.close()

    def size_bytes(self) -> int:
        """Bytes on disk of the database file and its write-ahead log."""
        total = 0
        for file in related_files(self.path)[:2]:
            try:
                total += file.stat().st_size
            except FileNotFoundError:
                continue
        return total
