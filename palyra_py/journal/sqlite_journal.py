"""The SQLite engine of the journal (``JournalBackend``): one file (WAL, synchronous=FULL,
0600), its writer thread with group commit (``sqlite_writer``), a query-only reader
connection, and verification on a connection of its own. Every ``sqlite3.Error`` becomes
``JournalUnavailable`` or, for a damaged file, ``JournalDamaged`` here.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from palyra_py.events import AppendResult, EventFilter
from palyra_py.journal.backend import (
    ChainWalk,
    EventRow,
    JournalDamaged,
    JournalUnavailable,
    PendingRow,
)
from palyra_py.journal.sqlite import (
    JournalStore,
    glob_for_fnmatch,
    related_files,
    restrict_permissions,
    where_clause,
)
from palyra_py.journal.sqlite_writer import (
    AppendJob,
    GroupCommitWriter,
    RetentionJob,
    damaged_message,
    describe_failure,
)
from palyra_py.storage.sqlite import header_problem, is_corruption

__all__ = ["DEFAULT_BUSY_TIMEOUT_MS", "DEFAULT_START_CHECK_S", "SqliteJournal"]

_T = TypeVar("_T")

DEFAULT_BUSY_TIMEOUT_MS = 5000
DEFAULT_START_CHECK_S = 10.0


class SqliteJournal:
    """The journal's rows in one SQLite file. Use it from the event loop that ran
    ``start``."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        batch_max: int = 512,
        on_commit: Callable[[int, int], None] | None = None,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        start_check_s: float = DEFAULT_START_CHECK_S,
        on_unavailable: Callable[[str], None] | None = None,
        several_appenders: bool = False,
    ) -> None:
        """``on_commit(last_seq, events)`` runs in the event loop after each commit of this
        instance that wrote rows: the new head, and how many events that commit wrote (with
        other appenders, not the distance from the head of its previous commit).
        ``start`` runs ``PRAGMA quick_check`` for at most ``start_check_s`` seconds (0: not
        at all). ``on_unavailable(reason)`` runs in the event loop once, when the
        file is found removed, replaced or damaged while open. ``several_appenders``: other
        processes append to this file too; the writers then take turns on
        ``<path>-writer.lock`` (see ``GroupCommitWriter``). Each batch reads the chain head
        and the next seq inside its own write transaction either way, so several instances
        keep seqs gap-free and the chain linked."""
        self.path = Path(path)
        self._several_appenders = several_appenders
        self._clock = clock
        self._batch_max = batch_max
        self._on_commit = on_commit
        self._busy_timeout_ms = busy_timeout_ms
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: GroupCommitWriter | None = None
        self._reader: JournalStore | None = None
        self._read_lock = threading.Lock()
        self._closed = False
        self._start_check_s = start_check_s
        self._on_unavailable = on_unavailable
        self._start_check = "not run"
        # Appends of the current event-loop pass, handed to the writer together at its end.
        self._tick: list[AppendJob] = []

    @property
    def start_check(self) -> str:
        """``ok``, ``incomplete`` (stopped after ``start_check_s``), ``skipped`` or
        ``not run``."""
        return self._start_check

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
        """Append transactions committed so far (one fsync each)."""
        return 0 if self._writer is None else self._writer.commits

    @property
    def failed_batches(self) -> int:
        """Append batches answered with ``JournalUnavailable`` so far."""
        return 0 if self._writer is None else self._writer.failed_batches

    async def start(self) -> None:
        """Create or open the file (0600, WAL, schema) and start the writer thread.
        Raises ``JournalUnavailable`` (``JournalDamaged``) if the file cannot be used."""
        if self._closed:
            raise JournalUnavailable("journal is closed")
        if self._writer is not None:
            return
        try:
            writer_store, reader_store = await asyncio.to_thread(self._open)
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
            path=self.path,
            writer_lock=(self.path.with_name(f"{self.path.name}-writer.lock")
                         if self._several_appenders else None),
        )
        self._writer.on_unavailable = self._on_unavailable
        self._writer.start()

    def _open(self) -> tuple[JournalStore, JournalStore]:
        # Sizes only without a WAL to replay: a crash inside a checkpoint may leave the
        # header ahead of the file while the WAL still holds the pages.
        wal = related_files(self.path)[1]
        problem = header_problem(self.path, sizes=not wal.exists() or wal.stat().st_size == 0)
        if problem is not None:
            raise JournalDamaged(damaged_message(self.path, problem))
        writer = JournalStore.open(self.path, busy_timeout_ms=self._busy_timeout_ms, create=True)
        try:
            writer.ensure_schema()
            self._quick_check(writer)
            restrict_permissions(self.path)
            reader = JournalStore.open(
                self.path, busy_timeout_ms=self._busy_timeout_ms, create=False
            )
        except BaseException:
            writer.close()
            raise
        return writer, reader

    def _quick_check(self, store: JournalStore) -> None:
        if self._start_check_s <= 0:
            self._start_check = "skipped"
            return
        problem, complete = store.quick_check(budget_s=self._start_check_s)
        if problem is not None:
            raise JournalDamaged(damaged_message(self.path, f"quick check: {problem}"))
        self._start_check = "ok" if complete else "incomplete"

    async def close(self) -> None:
        """Finish every append already queued, stop the writer, close the connections.
        Later appends raise ``JournalUnavailable``."""
        if self._closed:
            return
        self._flush()
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

    def append(self, row: PendingRow) -> asyncio.Future[AppendResult]:
        """Queue ``row`` for the writer's next batch; the future settles after its
        commit."""
        _, loop = self._live_writer()
        job = AppendJob(row, loop.create_future())
        tick = self._tick
        tick.append(job)
        if len(tick) == 1:
            # The appends made until the loop's next pass go to the writer as one item: it
            # wakes once for them and commits them together, rather than waking (and
            # taking the GIL from the loop) for the first one alone.
            loop.call_soon(self._flush)
        return job.future

    def _flush(self) -> None:
        """Hand the appends of this pass to the writer (close and retention call it too, so
        that queue order holds)."""
        jobs, self._tick = self._tick, []
        if jobs and self._writer is not None:
            self._writer.submit(jobs)

    async def apply_retention(self, *, max_age_s: float | None, max_bytes: int | None) -> int:
        """Runs on the writer thread between append batches, so appends never fail
        because of it; the freed pages go back to the file system."""
        writer, loop = self._live_writer()
        if max_age_s is None and max_bytes is None:
            return 0
        job = RetentionJob(max_age_s, max_bytes, loop.create_future())
        self._flush()
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

    def filters_exactly(self, types: Sequence[str]) -> bool:
        """SQLite's GLOB matches ``*``, ``?`` and literals as fnmatch does, not ``[...]``."""
        return all(glob_for_fnmatch(pattern)[1] for pattern in types)

    async def read_events(
        self, flt: EventFilter, *, after_seq: int, limit: int
    ) -> list[EventRow]:
        where = where_clause(
            types=tuple(flt.types),
            integration_id=flt.integration_id,
            source=flt.source,
            since_ms=flt.since_ms,
            until_ms=flt.until_ms,
        )
        return await self._read(
            lambda store: store.select_events(where, after_seq=after_seq, limit=limit)
        )

    async def last_seq(self) -> int:
        """Retention never removes the newest row, so this never goes back."""
        return await self._read(lambda store: store.head().seq)

    async def verify(self) -> ChainWalk:
        """From the retention checkpoint, if any, on a connection of its own and in one
        snapshot, so appends and listing go on meanwhile. Also works on a closed journal."""
        try:
            return await asyncio.to_thread(self._walk_chain)
        except sqlite3.Error as exc:
            raise self._read_failure(exc) from exc

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
