"""The PostgreSQL engine of the journal (``JournalBackend``): one writer connection whose
task group-commits the appends queued meanwhile (one transaction, one commit for the lot),
a small pool for reads, and a connection of its own for each ``verify``.

Every driver error becomes ``JournalUnavailable`` here, worded without values
(``storage.postgres.describe_pg_error``): a lost connection fails the batch in flight
(nothing of it acknowledged) and the next batch connects again, so the journal recovers by
itself once the server is back. Nothing is ever "unavailable until a restart" and nothing
is "damaged": PostgreSQL keeps its own files; ``verify`` checks the chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import asyncpg

from palyra_py.events import AppendResult, EventFilter
from palyra_py.journal.backend import (
    ChainHead,
    ChainWalk,
    DuplicateEventId,
    EventRow,
    JournalUnavailable,
    PendingRow,
    Stored,
)
from palyra_py.journal.postgres import (
    MIGRATIONS,
    STORE,
    JournalSql,
    like_for_fnmatch,
    where_clause,
)
from palyra_py.storage.postgres import (
    CONNECT_TIMEOUT_S,
    DRIVER_ERRORS,
    connect,
    describe_pg_error,
    is_connection_lost,
    migrate,
    settings_unless_in_uri,
)
from palyra_py.storage.postgres_writer import (
    close_connections,
    drain_batch,
    next_job,
    open_read_pool,
    resolve_dsn,
)

__all__ = ["PostgresJournal"]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
_SIZE_EVERY_COMMITS = 256
_WRITE_ERRORS: tuple[type[BaseException], ...] = (*DRIVER_ERRORS, RuntimeError)
SESSION_SETTINGS = {"plan_cache_mode": "force_custom_plan"}
"""On every connection of the journal, unless the URI sets it. After five runs of a
prepared statement PostgreSQL may keep a generic plan, made without the values: for the
replay-key check (``unnest`` of the batch's keys joined to ``replay_keys``) that plan was
a sequential scan of the table, so the server's CPU per append grew with the number of
live keys (0.057 to 0.15 ms over the first 18,000; BENCHMARKS.md, issue 11)."""


@dataclass(frozen=True, slots=True)
class _Append:
    row: PendingRow
    future: asyncio.Future[AppendResult]


@dataclass(frozen=True, slots=True)
class _Retention:
    max_age_s: float | None
    max_bytes: int | None
    future: asyncio.Future[int]


@dataclass(frozen=True, slots=True)
class _Probe:
    """Try the server now: the writer's connection was closed under it."""


_Job = _Append | _Retention | _Probe


class PostgresJournal:
    """The journal's rows in PostgreSQL (``dsn``). Use it from the event loop that ran
    ``start``. Any number of instances, in any processes and nodes, may share the
    database: each append transaction locks the chain head first."""

    def __init__(
        self,
        dsn: str | Callable[[], str],
        *,
        clock: Callable[[], float] = time.time,
        batch_max: int = 512,
        on_commit: Callable[[int, int], None] | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        """``dsn``: the URI, or a function that gives it at ``start`` (a secret read
        then; whatever it raises is ``JournalUnavailable``, with its message). ``on_commit
        (last_seq, events)`` runs in the event loop after each commit that wrote rows (``events``:
        how many this commit wrote), before any of
        its appenders resumes."""
        self._dsn_source = dsn
        self._dsn = dsn if isinstance(dsn, str) else ""
        self._settings: dict[str, str] = {}
        """The session settings: ``SESSION_SETTINGS`` less what the URI sets."""
        self._clock = clock
        self._batch_max = batch_max
        self._on_commit = on_commit
        self._connect_timeout_s = connect_timeout_s
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._writer: asyncpg.Connection | None = None
        self._readers: asyncpg.Pool | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False
        self._commits = 0
        self._failed_batches = 0
        self._size = 0
        self._reached_commit = False
        self._down: str | None = None
        self.reachable = asyncio.Event()
        """Set while the server answers (from ``start``); cleared when it is found
        unreachable, set again by the first append or probe that reaches it."""

    # -- state -------------------------------------------------------------------------

    @property
    def unavailable_reason(self) -> str | None:
        """Always ``None``: a lost server fails appends only while it is lost."""
        return None

    @property
    def damaged(self) -> bool:
        return False

    @property
    def commits(self) -> int:
        return self._commits

    @property
    def failed_batches(self) -> int:
        return self._failed_batches

    @property
    def start_check(self) -> str:
        """PostgreSQL checks its own pages; ``verify`` checks the chain."""
        return "skipped"

    def check_file(self) -> str | None:
        """Why appends fail now (the server unreachable since the last try), else
        ``None``; cleared by the next append or probe that reaches it."""
        return None if self._closed else self._down

    def size_bytes(self) -> int:
        """Bytes of the journal's tables and indexes, as last measured (at start, after
        retention and every few hundred commits)."""
        return self._size

    # -- life --------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, apply the schema's migrations (under the advisory lock every node
        takes), open the read pool and start the writer. Raises ``JournalUnavailable``."""
        if self._closed:
            raise JournalUnavailable("journal is closed")
        if self._started:
            return
        self._dsn = resolve_dsn(self._dsn_source, JournalUnavailable, "journal")
        try:
            self._settings = settings_unless_in_uri(self._dsn, SESSION_SETTINGS)
            self._writer = await self._connect_writer()
            await migrate(self._writer, STORE, MIGRATIONS)
            self._size = await JournalSql(self._writer).size_bytes()
            self._readers = await open_read_pool(
                self._dsn, timeout_s=self._connect_timeout_s, settings=self._settings,
                command_timeout_s=30)
        except DRIVER_ERRORS as exc:
            await self._release()
            raise JournalUnavailable(describe_pg_error(exc, "journal", "start")) from exc
        except RuntimeError as exc:  # a schema newer than this code
            await self._release()
            raise JournalUnavailable(str(exc)) from exc
        except BaseException:
            await self._release()
            raise
        self._started = True
        self.reachable.set()
        self._task = asyncio.create_task(self._run(), name="palyra-journal-pg-writer")

    async def close(self) -> None:
        """Commit every append already queued, stop the writer, close the connections.
        Later appends raise ``JournalUnavailable``."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._queue.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._release()

    async def _release(self) -> None:
        writer, readers = self._writer, self._readers
        self._writer = self._readers = None
        await close_connections(writer, readers)

    # -- appends -----------------------------------------------------------------------

    def _live_loop(self) -> asyncio.AbstractEventLoop:
        if not self._started or self._closed:
            raise JournalUnavailable("journal is closed")
        return asyncio.get_running_loop()

    def append(self, row: PendingRow) -> Awaitable[AppendResult]:
        """Queue ``row`` for the writer's next batch; the future settles after its
        commit."""
        future: asyncio.Future[AppendResult] = self._live_loop().create_future()
        self._queue.put_nowait(_Append(row, future))
        return future

    async def apply_retention(self, *, max_age_s: float | None, max_bytes: int | None) -> int:
        """Runs between append batches on the writer's connection; another node's run in
        progress makes this one remove nothing."""
        loop = self._live_loop()
        if max_age_s is None and max_bytes is None:
            return 0
        future: asyncio.Future[int] = loop.create_future()
        self._queue.put_nowait(_Retention(max_age_s, max_bytes, future))
        return await future

    async def _probe(self) -> None:
        try:
            conn = await self._connection()
            await conn.fetchval("SELECT 1")
        except DRIVER_ERRORS as exc:
            self._lost(exc)
            self._unreachable(describe_pg_error(exc, "journal", "write"))
            return
        self._recovered()

    def _recovered(self) -> None:
        if self._down is not None:
            _log.warning("journal: PostgreSQL reachable again")
        self._down = None
        self.reachable.set()

    def _unreachable(self, reason: str) -> None:
        self._down = reason
        self.reachable.clear()

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            job: _Job | None = await next_job(
                self._queue, down=lambda: self._down is not None, probe=self._probe)
            if job is None:
                break
            batch: list[_Job]
            batch, stopping = drain_batch(self._queue, job, self._batch_max)
            appends: list[_Append] = []
            for item in batch:
                if isinstance(item, _Append):
                    appends.append(item)
                    continue
                if appends:  # queue order holds: appends queued before retention first
                    await self._commit(appends)
                    appends = []
                if isinstance(item, _Probe):
                    await self._probe()
                else:
                    await self._retain(item)
            if appends:
                await self._commit(appends)

    async def _connection(self) -> asyncpg.Connection:
        if self._writer is None or self._writer.is_closed():
            if self._writer is not None:
                self._writer.terminate()
            self._writer = None
            self._writer = await self._connect_writer()
        return self._writer

    async def _connect_writer(self) -> asyncpg.Connection:
        conn = await connect(self._dsn, timeout_s=self._connect_timeout_s,
                             settings=self._settings)
        conn.add_termination_listener(self._writer_closed)
        return conn

    def _writer_closed(self, _conn: object) -> None:
        """The writer's connection closed (the server stopping or restarting, the
        connection terminated, or we dropped it): try the server at once, so that
        readiness is false while it is away even when nothing is appended."""
        if not self._closed and self._down is None and self._task is not None:
            self._queue.put_nowait(_Probe())

    def _lost(self, exc: BaseException) -> None:
        """After a failure: drop a connection that cannot be trusted any more."""
        if self._writer is not None and (is_connection_lost(exc) or self._writer.is_closed()):
            self._writer.terminate()
            self._writer = None

    async def _commit(self, jobs: list[_Append]) -> None:
        rows = [job.row for job in jobs]
        try:
            try:
                stored, head = await self._append_once(rows)
            except _WRITE_ERRORS as exc:
                # A connection found dead before the COMMIT was sent wrote nothing (a
                # server restart, pg_terminate_backend): once more on a new one.
                if not (is_connection_lost(exc) and not self._reached_commit):
                    raise
                self._lost(exc)
                stored, head = await self._append_once(rows)
        except _WRITE_ERRORS as exc:
            # A commit whose answer was lost may have happened: not acknowledged either
            # way; a retry of the same webhook is then a duplicate by its replay key.
            self._lost(exc)
            self._failed_batches += 1
            error = JournalUnavailable(describe_pg_error(exc, "journal", "write"))
            if self._writer is None:
                self._unreachable(str(error))
            _log.warning("journal append failed: %s", error)
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        self._commits += 1
        self._recovered()
        if self._commits % _SIZE_EVERY_COMMITS == 0:
            await self._measure()
        written = sum(1 for result in stored if result.status == "new")
        if written and self._on_commit is not None:
            self._on_commit(head.seq, written)
        for job, result in zip(jobs, stored, strict=True):
            if job.future.done():  # its caller was cancelled
                continue
            if result.status == "id_conflict":
                job.future.set_exception(DuplicateEventId("event_id already journaled"))
            else:
                job.future.set_result(
                    AppendResult(result.seq, result.event_id, result.status == "duplicate"))

    async def _append_once(self, rows: list[PendingRow]) -> tuple[list[Stored], ChainHead]:
        self._reached_commit = False
        conn = await self._connection()
        sql = JournalSql(conn)
        try:
            return await sql.append_batch(rows, now_ms=int(self._clock() * 1000))
        finally:
            self._reached_commit = sql.reached_commit

    async def _measure(self) -> None:
        with contextlib.suppress(*DRIVER_ERRORS):
            if self._writer is not None:
                self._size = await JournalSql(self._writer).size_bytes()

    async def _retain(self, job: _Retention) -> None:
        try:
            conn = await self._connection()
            now_ms = int(self._clock() * 1000)
            removed = await JournalSql(conn).apply_retention(
                older_than_ms=(None if job.max_age_s is None
                               else now_ms - int(job.max_age_s * 1000)),
                max_bytes=job.max_bytes,
            )
        except DRIVER_ERRORS as exc:
            self._lost(exc)
            if not job.future.done():
                job.future.set_exception(
                    JournalUnavailable(describe_pg_error(exc, "journal", "retention")))
            return
        await self._measure()
        if not job.future.done():
            job.future.set_result(removed)

    # -- reads -------------------------------------------------------------------------

    async def _read(self, fn: Callable[[JournalSql], Awaitable[_T]]) -> _T:
        readers = self._readers
        if readers is None or self._closed:
            raise JournalUnavailable("journal is closed")
        for attempt in (1, 2):
            try:
                async with readers.acquire() as conn:
                    return await fn(JournalSql(conn))
            except DRIVER_ERRORS as exc:
                # A pooled connection the server dropped meanwhile: reads are safe to repeat.
                if attempt == 1 and is_connection_lost(exc):
                    continue
                raise JournalUnavailable(describe_pg_error(exc, "journal", "read")) from exc
        raise AssertionError("unreachable")

    def filters_exactly(self, types: Sequence[str]) -> bool:
        """LIKE matches ``*``, ``?`` and literals as fnmatch does, not ``[...]``."""
        return all(like_for_fnmatch(pattern)[1] for pattern in types)

    async def read_events(
        self, flt: EventFilter, *, after_seq: int, limit: int
    ) -> list[EventRow]:
        where = where_clause(
            first=3,
            types=tuple(flt.types),
            integration_id=flt.integration_id,
            source=flt.source,
            since_ms=flt.since_ms,
            until_ms=flt.until_ms,
        )
        return await self._read(
            lambda sql: sql.select_events(where, after_seq=after_seq, limit=limit))

    async def last_seq(self) -> int:
        """The head row's seq: retention never moves it back."""
        async def head(sql: JournalSql) -> int:
            return (await sql.head()).seq

        return await self._read(head)

    async def verify(self) -> ChainWalk:
        """On a connection of its own, in one snapshot, so appends go on meanwhile; also
        after ``close``."""
        try:
            conn = await connect(self._dsn, timeout_s=self._connect_timeout_s,
                                 settings=self._settings)
        except DRIVER_ERRORS as exc:
            raise JournalUnavailable(describe_pg_error(exc, "journal", "verify")) from exc
        try:
            return await JournalSql(conn).walk_chain()
        except DRIVER_ERRORS as exc:
            raise JournalUnavailable(describe_pg_error(exc, "journal", "verify")) from exc
        finally:
            with contextlib.suppress(*DRIVER_ERRORS):
                await conn.close(timeout=2)
