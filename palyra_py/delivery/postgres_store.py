"""The PostgreSQL engine of the delivery store (``DeliveryBackend``): deliveries, attempts,
cursors and subscription health in the tables of ``delivery.postgres``, shared by every
node of a cluster.

One writer connection, owned by one task: every write is a job on its queue, and the jobs
queued meanwhile share one transaction (one commit); the attempts recorded while the
writer is busy are one job (``attempt_batches``). Reads use a small pool; ``get`` and
``stats`` read one snapshot. The store has no clock: every time is a unix-ms ``int``
passed in by the caller.

Every driver error becomes ``DeliveryStoreUnavailable``, worded without values
(``storage.postgres.describe_pg_error``). A connection lost before a batch's COMMIT was
sent wrote nothing: the batch runs once more on a new connection; one lost during the
COMMIT fails the batch (it may or may not be committed: enqueueing again skips what
exists, and the dispatcher reads the queue back from the store). The next write connects
again, so the store recovers by itself once the server is back: nothing is ever
"unavailable until a restart", and there is no file to check. While the server is lost
(a write or read found it unreachable), ``down_reason`` says so and the writer tries it
every ``storage.postgres_writer.PROBE_INTERVAL_S``, so that readiness comes back without waiting
for a write; the loss and the recovery are logged once each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from palyra_py.delivery.attempt_batches import AttemptBatcher, PendingRecord, settle_batch
from palyra_py.delivery.backend import DeliveryStoreUnavailable
from palyra_py.delivery.figures import BUSIEST, LATENCY_SAMPLE, delivery_figures
from palyra_py.delivery.postgres import MIGRATIONS, STORE, DeliveryPgSql
from palyra_py.delivery.postgres_attempts import record_batch
from palyra_py.delivery.records import (
    STATUSES,
    SUBSCRIPTION_REMOVED,
    AttemptRecord,
    Delivery,
    DeliveryStatus,
    NewDelivery,
    NewDeliveryRow,
    attempt_from_row,
    attempt_row,
    check_limit,
    delivery_from_row,
)
from palyra_py.ids import UlidSource
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

__all__ = ["PostgresDeliveries"]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
_PRUNE_CHUNK = 2000
DEFAULT_MAX_PENDING = 10_000
SESSION_SETTINGS = {"plan_cache_mode": "force_custom_plan"}
"""On every connection of the store, unless the URI sets it (``?plan_cache_mode=auto``).
Every statement is planned for its own values: after five runs of a prepared statement
PostgreSQL may keep a generic plan, made without the values, and the store's statements
take arrays of ids whose length varies with each batch (BENCHMARKS.md, issue 11)."""
_WHAT = "delivery store"


@dataclass(frozen=True, slots=True)
class _Job:
    """``run`` is awaited inside the writer's open transaction; ``settle`` is called with
    its result, or the exception that ended it, once the transaction is over."""

    run: Callable[[DeliveryPgSql], Awaitable[Any]]
    settle: Callable[[Any], None]


def _settle_future(future: asyncio.Future[Any]) -> Callable[[Any], None]:
    def settle(value: Any) -> None:
        if future.done():  # its caller gave up
            return
        if isinstance(value, BaseException):
            future.set_exception(value)
        else:
            future.set_result(value)

    return settle


class _Broken(Exception):
    """A shared transaction failed on a job's account: run each job alone."""


class PostgresDeliveries:
    """The delivery store in PostgreSQL (``dsn``). Use it from the event loop that ran
    ``start``. Any number of instances, in any processes and nodes, may share the
    database. A write whose caller is cancelled may still be committed."""

    def __init__(
        self,
        dsn: str | Callable[[], str],
        *,
        batch_max: int = 256,
        max_pending: int = DEFAULT_MAX_PENDING,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        """``dsn``: the URI, or a function that gives it at ``start`` (a secret read then;
        whatever it raises is ``DeliveryStoreUnavailable``, with its message).
        ``max_pending`` bounds writes waiting for the writer; beyond it they raise
        ``DeliveryStoreUnavailable``."""
        self._dsn_source = dsn
        self._dsn = dsn if isinstance(dsn, str) else ""
        self._batch_max = batch_max
        self._max_pending = max_pending
        self._connect_timeout_s = connect_timeout_s
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._writer: asyncpg.Connection | None = None
        self._readers: asyncpg.Pool | None = None
        self._task: asyncio.Task[None] | None = None
        self._batcher = AttemptBatcher(self._submit_records)
        # Used only by the writer task, inside jobs, so that this process's ids follow its
        # commit order. Fresh randomness each new ms: two nodes never count from one value.
        self._ids = UlidSource()
        self._pending = 0
        self._started = False
        self._closed = False
        self._down: str | None = None
        self._settings: dict[str, str] = {}
        self.commits = 0
        """Write transactions committed so far, for tests and benchmarks."""
        self.write_jobs = 0
        """Writer jobs committed so far (attempts recorded together are one)."""
        self.statements = 0
        """Statements the writer sent (BEGIN and COMMIT included): its round trips."""

    # -- state -------------------------------------------------------------------------

    @property
    def unavailable_reason(self) -> str | None:
        """Always ``None``: a lost server fails writes only while it is lost."""
        return None

    def check_file(self) -> str | None:
        """Nothing to check: PostgreSQL keeps its own files, and a lost connection is
        retried by the next call. Always ``None``."""
        return None

    @property
    def down_reason(self) -> str | None:
        """Why the store fails now (the server found unreachable by the last write, read
        or probe), else ``None``; cleared by the next one that reaches it."""
        return None if self._closed else self._down

    def _unreachable(self, reason: str) -> None:
        if self._down is None and not self._closed:
            _log.warning("delivery store: PostgreSQL unreachable: %s", reason)
        self._down = reason

    def _reached(self) -> None:
        if self._down is not None:
            _log.warning("delivery store: PostgreSQL reachable again")
        self._down = None

    # -- life --------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, apply the store's migrations (under the advisory lock every node
        takes), open the read pool and start the writer. Raises
        ``DeliveryStoreUnavailable``."""
        if self._closed:
            raise DeliveryStoreUnavailable("delivery store is closed")
        if self._started:
            return
        self._dsn = resolve_dsn(self._dsn_source, DeliveryStoreUnavailable, _WHAT)
        self._settings = settings_unless_in_uri(self._dsn, SESSION_SETTINGS)
        try:
            self._writer = await self._connect()
            await migrate(self._writer, STORE, MIGRATIONS)
            self._readers = await open_read_pool(
                self._dsn, timeout_s=self._connect_timeout_s, settings=self._settings)
        except DRIVER_ERRORS as exc:
            await self._release()
            raise DeliveryStoreUnavailable(describe_pg_error(exc, _WHAT, "start")) from exc
        except RuntimeError as exc:  # a schema newer than this code
            await self._release()
            raise DeliveryStoreUnavailable(str(exc)) from exc
        except BaseException:
            await self._release()
            raise
        self._started = True
        self._task = asyncio.create_task(self._run(), name="palyra-deliveries-pg-writer")

    async def close(self) -> None:
        """Commit every write already queued, stop the writer, close the connections.
        Later calls raise ``DeliveryStoreUnavailable``."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._queue.put_nowait(None)  # after every job already queued
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._release()

    async def _release(self) -> None:
        writer, readers = self._writer, self._readers
        self._writer = self._readers = None
        await close_connections(writer, readers)

    # -- the writer --------------------------------------------------------------------

    def _writable(self) -> asyncio.AbstractEventLoop:
        if not self._started or self._closed:
            raise DeliveryStoreUnavailable("delivery store is closed")
        if self._pending >= self._max_pending:
            raise DeliveryStoreUnavailable("delivery store write queue is full")
        return asyncio.get_running_loop()

    async def _write(self, run: Callable[[DeliveryPgSql], Awaitable[_T]]) -> _T:
        future: asyncio.Future[_T] = self._writable().create_future()
        self._pending += 1
        try:
            self._queue.put_nowait(_Job(run, _settle_future(future)))
            return await future
        finally:
            self._pending -= 1

    async def _probe(self) -> None:
        try:
            conn = await self._connection()
            await conn.fetchval("SELECT 1")
        except _Unreachable as exc:
            self._unreachable(describe_pg_error(exc.cause, _WHAT, "write"))
            return
        except DRIVER_ERRORS as exc:
            self._drop_writer()
            self._unreachable(describe_pg_error(exc, _WHAT, "write"))
            return
        self._reached()

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            job = await next_job(self._queue, down=lambda: self._down is not None,
                                 probe=self._probe)
            if job is None:
                break
            batch, stopping = drain_batch(self._queue, job, self._batch_max)
            try:
                await self._run_batch(batch)
            except Exception:  # never let the writer die: fail this batch only
                _log.exception("delivery store writer: unexpected error")
                failure = DeliveryStoreUnavailable("delivery store write failed")
                for item in batch:
                    item.settle(failure)

    async def _run_batch(self, jobs: list[_Job]) -> None:
        try:
            outcomes = await self._transaction_retried(jobs)
        except _Broken:
            # One job broke the shared transaction: each on its own, so the others do not
            # fail on its account.
            for job in jobs:
                await self._run_batch([job])
            return
        except DRIVER_ERRORS as exc:
            error = DeliveryStoreUnavailable(describe_pg_error(exc, _WHAT, "write"))
            if is_connection_lost(exc):
                self._unreachable(str(error))  # logged once, until it is reached again
            else:
                _log.warning("delivery store write failed: %s", error)
            outcomes = [error] * len(jobs)
        else:
            self._reached()
        for job, outcome in zip(jobs, outcomes, strict=True):
            job.settle(outcome)

    async def _transaction_retried(self, jobs: list[_Job]) -> list[Any]:
        try:
            return await self._transaction(jobs)
        except _LostBeforeCommit:
            # Nothing of it was written (a server restart, pg_terminate_backend): once more
            # on a new connection.
            self._drop_writer()
        try:
            return await self._transaction(jobs)
        except _LostBeforeCommit as again:
            self._drop_writer()
            raise again.cause from None

    async def _transaction(self, jobs: list[_Job]) -> list[Any]:
        """Run ``jobs`` in one transaction; their outcomes (a refusal is a job's
        ``ValueError`` or ``LookupError``, raised before it wrote anything)."""
        conn = await self._connection()
        sql = DeliveryPgSql(conn)
        outcomes: list[Any] = []
        transaction = conn.transaction()
        try:
            await transaction.start()
            for job in jobs:
                try:
                    outcomes.append(await job.run(sql))
                except (ValueError, LookupError) as exc:
                    outcomes.append(exc)
        except BaseException as exc:
            await self._abandon(transaction, exc)
            if isinstance(exc, DRIVER_ERRORS) and is_connection_lost(exc):
                raise _LostBeforeCommit(exc) from exc
            if len(jobs) > 1 and isinstance(exc, Exception):
                raise _Broken from exc
            raise
        try:
            await transaction.commit()
        except BaseException as exc:
            # Lost with its COMMIT in flight, it may have happened: fail it either way.
            await self._abandon(transaction, exc)
            raise
        self.commits += 1
        self.write_jobs += len(jobs)
        return outcomes

    async def _abandon(self, transaction: Any, exc: BaseException) -> None:
        if isinstance(exc, DRIVER_ERRORS) and is_connection_lost(exc):
            self._drop_writer()
            return
        try:
            await transaction.rollback()
        except DRIVER_ERRORS:
            self._drop_writer()

    async def _connection(self) -> asyncpg.Connection:
        if self._writer is None or self._writer.is_closed():
            self._drop_writer()
            try:
                self._writer = await self._connect()
            except DRIVER_ERRORS as exc:
                # Nothing was sent: the caller's batch fails as unreachable.
                raise _Unreachable(exc) from exc
        return self._writer

    async def _connect(self) -> asyncpg.Connection:
        conn = await connect(self._dsn, timeout_s=self._connect_timeout_s,
                             settings=self._settings)
        conn.add_query_logger(self._sent)
        return conn

    def _sent(self, _query: Any) -> None:
        self.statements += 1

    def _drop_writer(self) -> None:
        if self._writer is not None:
            self._writer.terminate()
            self._writer = None

    # -- reads -------------------------------------------------------------------------

    async def _read(self, fn: Callable[[DeliveryPgSql], Awaitable[_T]], *,
                    snapshot: bool = False) -> _T:
        readers = self._readers
        if readers is None or self._closed:
            raise DeliveryStoreUnavailable("delivery store is closed")
        for attempt in (1, 2):
            try:
                async with readers.acquire() as conn:
                    if not snapshot:
                        found = await fn(DeliveryPgSql(conn))
                    else:
                        async with conn.transaction(isolation="repeatable_read",
                                                    readonly=True):
                            found = await fn(DeliveryPgSql(conn))
            except DRIVER_ERRORS as exc:
                # A pooled connection the server dropped meanwhile: reads are safe to repeat.
                if attempt == 1 and is_connection_lost(exc):
                    continue
                reason = describe_pg_error(exc, _WHAT, "read")
                if is_connection_lost(exc):
                    self._unreachable(reason)
                raise DeliveryStoreUnavailable(reason) from exc
            self._reached()
            return found
        raise AssertionError("unreachable")

    async def resume_seq(self) -> int | None:
        """The first journal seq from which re-delivering loses nothing: the lowest of any
        pending delivery's seq and every cursor + 1 (``None``: no cursor, nothing
        pending)."""
        return await self._read(lambda sql: sql.resume_seq())

    # -- cursors -----------------------------------------------------------------------

    async def cursor(self, subscription_id: str) -> int | None:
        return await self._read(lambda sql: sql.cursor(subscription_id))

    async def set_cursor(self, subscription_id: str, seq: int) -> None:
        await self._write(lambda sql: sql.set_cursor(subscription_id, int(seq)))

    async def enqueue_created(
        self,
        subscription_id: str,
        new_cursor: int,
        deliveries: Sequence[NewDelivery],
        *,
        now_ms: int,
    ) -> list[Delivery]:
        """In ONE transaction (one statement): create ``deliveries`` as pending and move
        the cursor to ``new_cursor`` unless it is further (``GREATEST``, whatever other
        writer moved it meanwhile); one whose ``(subscription_id, event_id)`` exists is
        skipped. Returns those created, in the order given."""
        if any(d.subscription_id != subscription_id for d in deliveries):
            raise ValueError("every delivery must be for the subscription being enqueued")
        items = tuple(deliveries)
        ids = self._ids

        async def run(sql: DeliveryPgSql) -> list[Delivery]:
            rows = [
                NewDeliveryRow(ids.new(now_ms), subscription_id, d.event_seq, d.event_id,
                               d.event_type, d.next_attempt_ms, now_ms)
                for d in items
            ]
            inserted = await sql.enqueue(subscription_id, int(new_cursor), rows)
            return [Delivery(row.delivery_id, subscription_id, row.event_seq, row.event_id,
                             row.event_type, "pending", 0, row.next_attempt_ms, now_ms,
                             now_ms, None, None)
                    for row in rows if row.delivery_id in inserted]

        return await self._write(run)

    # -- the queue ---------------------------------------------------------------------

    async def due_page(
        self, now_ms: int, limit: int, subscriptions: Sequence[str]
    ) -> tuple[list[Delivery], int | None]:
        check_limit(limit)
        subs = tuple(subscriptions)

        async def read(sql: DeliveryPgSql) -> tuple[list[Delivery], int | None]:
            rows = await sql.due_of(now_ms, limit, subs) if subs else []
            return [delivery_from_row(row) for row in rows], await sql.next_due_after(now_ms)

        return await self._read(read)

    async def oldest_pending_of(self, subscriptions: Sequence[str]) -> dict[str, Delivery]:
        subs = tuple(subscriptions)
        if not subs:
            return {}
        rows = await self._read(lambda sql: sql.oldest_pending_of(subs))
        return {str(row.subscription_id): delivery_from_row(row) for row in rows}

    async def oldest_pending(self, subscription_id: str) -> Delivery | None:
        found = await self.oldest_pending_of([subscription_id])
        return found.get(subscription_id)

    async def pending_count(self, subscription_id: str | None = None) -> int:
        return await self._read(lambda sql: sql.pending_count(subscription_id))

    async def oldest_pending_age_ms(self, now_ms: int) -> int | None:
        created = await self._read(lambda sql: sql.oldest_pending_created_ms())
        return None if created is None else max(0, now_ms - created)

    # -- attempts ----------------------------------------------------------------------

    async def record_attempt(
        self,
        attempt: AttemptRecord,
        *,
        status: DeliveryStatus,
        next_attempt_ms: int | None,
        now_ms: int,
        on_committed: Callable[[Delivery], None] | None = None,
    ) -> Delivery:
        """As ``DeliveryQueue.record_attempt``; recorded in one writer job with the
        attempts that come until the writer starts it (``attempt_batches``), committed
        before this returns; ``on_committed`` runs right after the commit."""
        if status not in STATUSES:
            raise ValueError(f"unknown delivery status {status!r}")
        if status == "pending" and next_attempt_ms is None:
            raise ValueError("a pending delivery needs next_attempt_ms")
        future: asyncio.Future[Delivery] = self._writable().create_future()
        self._batcher.add(PendingRecord(attempt_row(attempt), status, next_attempt_ms, now_ms,
                                        future, on_committed))
        self._pending += 1
        try:
            return await future
        finally:
            self._pending -= 1

    def _submit_records(self, items: list[PendingRecord]) -> None:
        batcher = self._batcher

        async def run(sql: DeliveryPgSql) -> list[Delivery | Exception]:
            # Closed when the writer starts it: what comes from now on makes the next job.
            return await record_batch(sql, batcher.close(items))

        def settle(outcome: list[Delivery | Exception] | BaseException) -> None:
            # Closed here too, for a job that failed before it ran.
            settle_batch(batcher.close(items), outcome)

        self._queue.put_nowait(_Job(run, settle))

    async def health(self, subscription_id: str) -> tuple[int | None, int | None]:
        found = await self._read(lambda sql: sql.health(subscription_id))
        return found.last_success_ms, found.failing_since_ms

    async def get(self, delivery_id: str) -> tuple[Delivery, list[AttemptRecord]] | None:
        async def fetch(sql: DeliveryPgSql) -> tuple[Delivery, list[AttemptRecord]] | None:
            row = await sql.delivery(delivery_id)
            if row is None:
                return None
            return delivery_from_row(row), [attempt_from_row(a)
                                            for a in await sql.attempts_of(delivery_id)]

        return await self._read(fetch, snapshot=True)

    # -- operator actions --------------------------------------------------------------

    async def retry(self, delivery_id: str, now_ms: int) -> Delivery | None:
        async def run(sql: DeliveryPgSql) -> Delivery | None:
            row = await sql.make_pending(delivery_id, now_ms)
            return None if row is None else delivery_from_row(row)

        return await self._write(run)

    async def replay(self, subscription_id: str, deliveries: Sequence[NewDelivery],
                     now_ms: int) -> int:
        if any(d.subscription_id != subscription_id for d in deliveries):
            raise ValueError("every delivery must be for the subscription being replayed")
        items = tuple(deliveries)
        ids = self._ids

        async def run(sql: DeliveryPgSql) -> int:
            return await sql.replay([
                NewDeliveryRow(ids.new(now_ms), subscription_id, d.event_seq, d.event_id,
                               d.event_type, d.next_attempt_ms, now_ms) for d in items])

        return await self._write(run)

    async def recover(
        self, subscription_id: str, since_ms: int, until_ms: int | None, now_ms: int
    ) -> int:
        return await self._write(
            lambda sql: sql.recover(subscription_id, since_ms, until_ms, now_ms))

    async def forget_subscription(self, subscription_id: str, now_ms: int) -> int:
        return await self._write(
            lambda sql: sql.forget_subscription(subscription_id, SUBSCRIPTION_REMOVED, now_ms))

    async def prune(self, before_ms: int) -> int:
        """In bounded transactions, so other writes go on between them."""
        total = 0
        while True:
            removed = await self._write(lambda sql: sql.prune_chunk(before_ms, _PRUNE_CHUNK))
            total += removed
            if removed < _PRUNE_CHUNK:
                return total

    # -- figures -----------------------------------------------------------------------

    async def stats(
        self, *, subscription_id: str | None = None, since_ms: int | None = None
    ) -> dict[str, Any]:
        async def gather(sql: DeliveryPgSql) -> dict[str, Any]:
            attempts, succeeded = await sql.attempt_counts(subscription_id, since_ms)
            return delivery_figures(
                status_counts=await sql.status_counts(subscription_id, since_ms),
                attempts=attempts,
                succeeded=succeeded,
                durations=await sql.recent_durations(subscription_id, since_ms,
                                                     LATENCY_SAMPLE),
                failures_by_class=await sql.failures_by_class(subscription_id, since_ms),
                busiest=await sql.busiest(subscription_id, since_ms, BUSIEST),
            )

        return await self._read(gather, snapshot=True)

    # Last, so that ``list`` in the annotations above is still the builtin.
    async def list(
        self,
        *,
        subscription_id: str | None = None,
        status: DeliveryStatus | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[Delivery]:
        check_limit(limit)
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown delivery status {status!r}")
        rows = await self._read(lambda sql: sql.list_deliveries(
            subscription_id=subscription_id, status=status, since_ms=since_ms,
            until_ms=until_ms, after=after, limit=limit,
        ))
        return [delivery_from_row(row) for row in rows]


class _LostBeforeCommit(Exception):
    """The connection was lost before the COMMIT was sent: nothing was written."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(type(cause).__name__)
        self.cause = cause


class _Unreachable(_LostBeforeCommit):
    """No connection could be made: nothing was sent."""
