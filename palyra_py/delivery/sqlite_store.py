"""The SQLite engine of the delivery store (``DeliveryQueue`` and ``DeliveryLog``):
``deliveries.db`` (WAL, synchronous=FULL, 0600), a cursor per subscription, the delivery
queue and its attempt log, subscription health and the figures ``deliveries stats`` shows.

One writer thread owns the write connection; every write is a job on its queue, and the
jobs queued together share one transaction (one fsync), each inside a savepoint so that a
job that refuses (``ValueError``, ``LookupError``) undoes only its own writes. When a
write coroutine returns, its transaction is committed. Reads run on a second, query-only
connection in a worker thread. The store has no clock: every time is a unix-ms ``int``
passed in by the caller. Every ``sqlite3.Error`` becomes ``DeliveryStoreUnavailable``.
The records and rows are in ``records``, the rules in ``attempts`` and ``figures``, the
SQL in ``sqlite`` (and ``sqlite_stats``, ``sqlite_attempts``), the writer thread in
``sqlite_writer``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from palyra_py.delivery.attempt_batches import AttemptBatcher, PendingRecord, settle_batch
from palyra_py.delivery.backend import DeliveryStoreUnavailable
from palyra_py.delivery.figures import BUSIEST, LATENCY_SAMPLE, delivery_figures
from palyra_py.delivery.records import (
    STATUSES,
    SUBSCRIPTION_REMOVED,
    AttemptRecord,
    AttemptRow,
    Delivery,
    DeliveryRow,
    DeliveryStatus,
    NewDelivery,
    NewDeliveryRow,
    attempt_from_row,
    attempt_row,
    check_limit,
    delivery_from_row,
)
from palyra_py.delivery.sqlite import DeliverySql, describe_error, restrict_permissions
from palyra_py.delivery.sqlite_attempts import record_batch
from palyra_py.delivery.sqlite_writer import DeliveryWriter, WriteJob
from palyra_py.ids import UlidSource

__all__ = ["DEFAULT_BUSY_TIMEOUT_MS", "DEFAULT_MAX_PENDING", "DELIVERIES_FILE", "DeliveryStore"]

_T = TypeVar("_T")

DELIVERIES_FILE = "deliveries.db"
DEFAULT_BUSY_TIMEOUT_MS = 5000
DEFAULT_MAX_PENDING = 10_000
_PRUNE_CHUNK = 2000


# -- the store ------------------------------------------------------------------------


class DeliveryStore:
    """The delivery store of one state root. Use it from the event loop that ran
    ``start``. A write whose caller is cancelled may still be committed."""

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        batch_max: int = 256,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        """``path`` is the database file (``<state dir>/deliveries.db``). ``max_pending``
        bounds writes waiting for the writer; beyond it they raise
        ``DeliveryStoreUnavailable``."""
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._batch_max = batch_max
        self._max_pending = max_pending
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: DeliveryWriter | None = None
        self._batcher: AttemptBatcher | None = None
        self._reader: DeliverySql | None = None
        # Used only on the writer thread, inside jobs, so ids follow commit order.
        self._ids = UlidSource()
        self._read_lock = threading.Lock()
        self._pending = 0
        self._closed = False
        self.on_unavailable: Callable[[str], None] | None = None
        """Called in the event loop once, when the file is found removed or replaced
        (set before ``start``)."""

    @property
    def unavailable_reason(self) -> str | None:
        """Why every write is refused until a restart (the file removed or replaced)."""
        return None if self._writer is None else self._writer.unavailable_reason

    def check_file(self) -> str | None:
        """Check now that the path still names the file written (as every write does);
        the reason writes are refused, if any."""
        return None if self._writer is None else self._writer.check_file()

    @property
    def down_reason(self) -> str | None:
        """Always ``None``: a file is there or it is not (``check_file``)."""
        return None

    async def resume_seq(self) -> int | None:
        """The first journal seq from which re-delivering loses nothing: the lowest of any
        pending delivery's seq and every cursor + 1 (``None``: no cursor, nothing pending).
        Read from the file open, even when it was removed since."""

        def read(sql: DeliverySql) -> int | None:
            pending, cursor = sql.lowest_pending_seq(), sql.min_cursor()
            found = [s for s in (pending, None if cursor is None else cursor + 1)
                     if s is not None]
            return min(found) if found else None

        return await self._read(read)

    @property
    def commits(self) -> int:
        """Write transactions committed so far (one fsync each), for tests and metrics."""
        return 0 if self._writer is None else self._writer.commits

    @property
    def write_jobs(self) -> int:
        """Writer jobs committed so far (attempts recorded together are one), for tests."""
        return 0 if self._writer is None else self._writer.jobs

    async def start(self) -> None:
        """Create or open the file (0600, WAL, schema) and start the writer thread.
        Raises ``DeliveryStoreUnavailable`` if the file cannot be used."""
        if self._closed:
            raise DeliveryStoreUnavailable("delivery store is closed")
        if self._writer is not None:
            return
        try:
            writer_sql, reader_sql, last_id = await asyncio.to_thread(self._open)
        except (sqlite3.Error, OSError) as exc:
            raise DeliveryStoreUnavailable(describe_error(exc, "open")) from exc
        self._loop = asyncio.get_running_loop()
        self._reader = reader_sql
        self._ids = UlidSource(last_id)
        self._writer = DeliveryWriter(writer_sql, loop=self._loop, batch_max=self._batch_max,
                                      path=self.path)
        self._writer.on_unavailable = self.on_unavailable
        self._batcher = AttemptBatcher(self._submit_records)
        self._writer.start()

    def _open(self) -> tuple[DeliverySql, DeliverySql, str | None]:
        kwargs = {"busy_timeout_ms": self._busy_timeout_ms}
        writer = DeliverySql.open(self.path, create=True, **kwargs)
        try:
            writer.ensure_schema()
            last_id = writer.max_delivery_id()
            restrict_permissions(self.path)
            reader = DeliverySql.open(self.path, create=False, **kwargs)
        except BaseException:
            writer.close()
            raise
        return writer, reader, last_id

    async def close(self) -> None:
        """Finish every write already queued, stop the writer, close the connections.
        Later calls raise ``DeliveryStoreUnavailable``."""
        if self._closed:
            return
        self._closed = True
        # Every attempt recorded so far is in a job already queued: it goes before the stop.
        if self._writer is not None:
            self._writer.stop()
            await asyncio.to_thread(self._writer.join)
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def _writable(self) -> tuple[asyncio.AbstractEventLoop, AttemptBatcher]:
        if self._writer is None or self._loop is None or self._batcher is None or self._closed:
            raise DeliveryStoreUnavailable("delivery store is closed")
        if self._pending >= self._max_pending:
            raise DeliveryStoreUnavailable("delivery store write queue is full")
        return self._loop, self._batcher

    async def _write(self, run: Callable[[DeliverySql], _T]) -> _T:
        loop, _ = self._writable()
        assert self._writer is not None
        future: asyncio.Future[_T] = loop.create_future()
        self._pending += 1
        try:
            self._writer.submit(WriteJob.for_future(run, future))
            return await future
        finally:
            self._pending -= 1

    async def _read(self, fn: Callable[[DeliverySql], _T], *, snapshot: bool = False) -> _T:
        def run() -> _T:
            with self._read_lock:
                if self._reader is None:
                    raise DeliveryStoreUnavailable("delivery store is closed")
                if not snapshot:
                    return fn(self._reader)
                self._reader.begin_read()
                try:
                    return fn(self._reader)
                finally:
                    self._reader.rollback()

        try:
            return await asyncio.to_thread(run)
        except sqlite3.Error as exc:
            raise DeliveryStoreUnavailable(describe_error(exc, "read")) from exc

    # -- cursors -----------------------------------------------------------------------

    async def cursor(self, subscription_id: str) -> int | None:
        """The last journal seq considered for the subscription; ``None`` if it has none
        (a new or forgotten subscription)."""
        return await self._read(lambda sql: sql.cursor(subscription_id))

    async def set_cursor(self, subscription_id: str, seq: int) -> None:
        """Set the cursor to exactly ``seq``, backwards too (a new subscription starting at
        the head, or a catch-up choice)."""
        await self._write(lambda sql: sql.set_cursor(subscription_id, int(seq)))

    async def enqueue(
        self,
        subscription_id: str,
        new_cursor: int,
        deliveries: Sequence[NewDelivery],
        *,
        now_ms: int,
    ) -> int:
        """In ONE transaction: create ``deliveries`` as pending (``created_ms`` = ``now_ms``)
        and move the cursor to ``new_cursor`` (never backwards). A delivery whose
        ``(subscription_id, event_id)`` already exists is skipped, so enqueueing again
        after a crash is harmless. Returns how many were created. Every delivery must be
        for ``subscription_id`` (``ValueError`` otherwise)."""
        created = await self.enqueue_created(subscription_id, new_cursor, deliveries,
                                             now_ms=now_ms)
        return len(created)

    async def enqueue_created(
        self,
        subscription_id: str,
        new_cursor: int,
        deliveries: Sequence[NewDelivery],
        *,
        now_ms: int,
    ) -> list[Delivery]:
        """``enqueue``, returning the deliveries it created, in the order given (those
        skipped as already existing left out), as ``get`` would show them."""
        if any(d.subscription_id != subscription_id for d in deliveries):
            raise ValueError("every delivery must be for the subscription being enqueued")
        items = tuple(deliveries)
        ids = self._ids

        def run(sql: DeliverySql) -> list[Delivery]:
            rows = [
                NewDeliveryRow(ids.new(now_ms), subscription_id, d.event_seq, d.event_id,
                               d.event_type, d.next_attempt_ms, now_ms)
                for d in items
            ]
            inserted = sql.insert_pending(rows)
            sql.advance_cursor(subscription_id, int(new_cursor))
            if inserted < len(rows):  # some existed: keep the ids that went in
                present = {found.delivery_id for found in
                           sql.deliveries_by_id([row.delivery_id for row in rows])}
                rows = [row for row in rows if row.delivery_id in present]
            return [Delivery(row.delivery_id, subscription_id, row.event_seq, row.event_id,
                             row.event_type, "pending", 0, row.next_attempt_ms, now_ms,
                             now_ms, None, None) for row in rows]

        return await self._write(run)

    # -- the queue ---------------------------------------------------------------------

    async def due(
        self, now_ms: int, limit: int, exclude_subscriptions: Sequence[str] = ()
    ) -> list[Delivery]:
        """Pending deliveries with ``next_attempt_ms <= now_ms``, not of the excluded
        subscriptions: earliest ``next_attempt_ms`` first, then lowest ``event_seq``."""
        check_limit(limit)
        exclude = tuple(exclude_subscriptions)
        rows = await self._read(lambda sql: sql.due(now_ms, limit, exclude))
        return [delivery_from_row(row) for row in rows]

    async def next_due_ms(self, exclude_subscriptions: Sequence[str] = ()) -> int | None:
        """The earliest ``next_attempt_ms`` of a pending delivery (of a subscription not
        excluded), or ``None`` when nothing is pending."""
        exclude = tuple(exclude_subscriptions)
        return await self._read(lambda sql: sql.next_due_ms(exclude))

    async def due_page(
        self, now_ms: int, limit: int, subscriptions: Sequence[str]
    ) -> tuple[list[Delivery], int | None]:
        """In one read: the pending deliveries of ``subscriptions`` due at ``now_ms`` (in
        ``due`` order, at most ``limit``), and the earliest ``next_attempt_ms`` after
        ``now_ms`` of any pending delivery of any subscription (``None``: none)."""
        check_limit(limit)
        subs = tuple(subscriptions)

        def read(sql: DeliverySql) -> tuple[list[DeliveryRow], int | None]:
            return (sql.due_of(now_ms, limit, subs) if subs else []), sql.next_due_after(now_ms)

        rows, next_due = await self._read(read)
        return [delivery_from_row(row) for row in rows], next_due

    async def oldest_pending_of(self, subscriptions: Sequence[str]) -> dict[str, Delivery]:
        """``oldest_pending`` of each of ``subscriptions`` (those with one), in one read."""
        subs = tuple(subscriptions)

        def read(sql: DeliverySql) -> list[DeliveryRow]:
            return [row for row in map(sql.oldest_pending, subs) if row is not None]

        return {str(row.subscription_id): delivery_from_row(row)
                for row in await self._read(read)}

    async def oldest_pending(self, subscription_id: str) -> Delivery | None:
        """The subscription's pending delivery with the lowest ``event_seq``, whether due
        or not: for an ordered subscription, the only one that may be attempted."""
        row = await self._read(lambda sql: sql.oldest_pending(subscription_id))
        return None if row is None else delivery_from_row(row)

    async def pending_count(self, subscription_id: str | None = None) -> int:
        return await self._read(lambda sql: sql.pending_count(subscription_id))

    async def oldest_pending_age_ms(self, now_ms: int) -> int | None:
        """``now_ms`` minus the creation time of the oldest pending delivery (never below
        0), or ``None`` when nothing is pending."""
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
        """In one transaction: log ``attempt``; count it on its delivery and set the
        delivery's ``status`` (``pending`` = retry at ``next_attempt_ms``, required then;
        it is stored as ``None`` otherwise), last status code and error class; update the
        subscription's health (``succeeded``: last success = ``now_ms`` and no longer
        failing; otherwise failing since the first failure after the last success).

        An attempt on a delivery that is no longer pending (``forget_subscription`` ended
        it meanwhile) is logged and a ``succeeded`` outcome kept, but it never makes the
        delivery pending again and leaves health alone. Raises ``DeliveryNotFound``, or
        ``ValueError`` for an unknown status or an attempt number already recorded.

        ``on_committed(delivery)``, if given, is called in the loop as soon as the attempt
        is committed, before this coroutine resumes (a turn of a busy loop earlier)."""
        if status not in STATUSES:
            raise ValueError(f"unknown delivery status {status!r}")
        if status == "pending" and next_attempt_ms is None:
            raise ValueError("a pending delivery needs next_attempt_ms")
        loop, batcher = self._writable()
        future: asyncio.Future[Delivery] = loop.create_future()
        # Recorded in one writer job with the attempts that come until the writer starts it
        # (attempt_batches); the transaction is still committed before this returns.
        batcher.add(PendingRecord(attempt_row(attempt), status, next_attempt_ms, now_ms, future,
                                  on_committed))
        self._pending += 1
        try:
            return await future
        finally:
            self._pending -= 1

    def _submit_records(self, items: list[PendingRecord]) -> None:
        writer, batcher = self._writer, self._batcher
        assert writer is not None and batcher is not None, "_writable checked it"

        def run(sql: DeliverySql) -> list[Delivery | Exception]:
            # Closed when the writer starts it: what comes from now on makes the next job.
            return record_batch(sql, batcher.close(items))

        def settle(outcome: list[Delivery | Exception] | BaseException) -> None:
            # Closed here too, for a job the writer refused without running it.
            settle_batch(batcher.close(items), outcome)

        writer.submit(WriteJob(run, settle))

    async def health(self, subscription_id: str) -> tuple[int | None, int | None]:
        """``(last_success_ms, failing_since_ms)``; ``(None, None)`` before any attempt."""
        return await self._read(lambda sql: sql.health(subscription_id))

    async def get(self, delivery_id: str) -> tuple[Delivery, list[AttemptRecord]] | None:
        """The delivery and its attempts in ``attempt_no`` order, or ``None``."""

        def fetch(sql: DeliverySql) -> tuple[DeliveryRow | None, list[AttemptRow]]:
            return sql.delivery(delivery_id), sql.attempts_of(delivery_id)

        row, attempts = await self._read(fetch, snapshot=True)
        if row is None:
            return None
        return delivery_from_row(row), [attempt_from_row(a) for a in attempts]

    # -- operator actions --------------------------------------------------------------

    async def retry(self, delivery_id: str, now_ms: int) -> Delivery | None:
        """Make a delivery pending and due at ``now_ms``, whatever its status (a succeeded
        one is sent again: a redelivery, with the same event and delivery id), keeping its
        attempt count and last error; ``None`` if there is no such delivery."""

        def run(sql: DeliverySql) -> Delivery | None:
            if sql.delivery(delivery_id) is None:
                return None
            sql.make_pending(delivery_id, now_ms)
            current = sql.delivery(delivery_id)
            assert current is not None
            return delivery_from_row(current)

        return await self._write(run)

    async def replay(self, subscription_id: str, deliveries: Sequence[NewDelivery],
                     now_ms: int) -> int:
        """In one transaction: create each of ``deliveries`` as pending (``created_ms`` =
        ``now_ms``), or, where that event's delivery to the subscription exists, make it
        pending and due at the given ``next_attempt_ms`` (sent again: a redelivery). The
        cursor does not move: the journal's later events are enqueued as before, and one
        replayed here is not created twice. Returns how many were written."""
        if any(d.subscription_id != subscription_id for d in deliveries):
            raise ValueError("every delivery must be for the subscription being replayed")
        items = tuple(deliveries)
        ids = self._ids
        return await self._write(lambda sql: sql.replay([
            NewDeliveryRow(ids.new(now_ms), subscription_id, d.event_seq, d.event_id,
                           d.event_type, d.next_attempt_ms, now_ms) for d in items]))

    async def recover(
        self, subscription_id: str, since_ms: int, until_ms: int | None, now_ms: int
    ) -> int:
        """Make every failed delivery of the subscription created in ``[since_ms,
        until_ms)`` pending and due at ``now_ms``, and every pending one of them that has
        failed attempts and waits for a later retry due at ``now_ms``; returns how many."""
        return await self._write(
            lambda sql: sql.recover(subscription_id, since_ms, until_ms, now_ms)
        )

    async def forget_subscription(self, subscription_id: str, now_ms: int) -> int:
        """For a removed subscription: delete its cursor and health, and end its pending
        deliveries as ``failed`` with ``last_error_class`` ``subscription_removed``.
        The delivery log itself stays (history; ``prune`` ages it out). Health goes so
        that a subscription added again under the same id does not inherit an old
        ``failing_since``. Returns how many pending deliveries were ended."""
        return await self._write(
            lambda sql: sql.forget_subscription(subscription_id, SUBSCRIPTION_REMOVED,
                                                      now_ms)
        )

    async def prune(self, before_ms: int) -> int:
        """Delete succeeded and failed deliveries last updated before ``before_ms``, with
        their attempts; pending ones always stay. Runs in bounded transactions so other
        writes go on between them. Returns how many deliveries were deleted."""
        total = 0
        while True:
            removed = await self._write(
                lambda sql: sql.prune_chunk(before_ms, _PRUNE_CHUNK)
            )
            total += removed
            if removed < _PRUNE_CHUNK:
                return total

    # -- figures -----------------------------------------------------------------------

    async def stats(
        self, *, subscription_id: str | None = None, since_ms: int | None = None
    ) -> dict[str, Any]:
        """Figures over deliveries created and attempts started at or after ``since_ms``
        (all time when ``None``), of one subscription or all, from one snapshot:

        ``deliveries`` (count per status), ``attempts``, ``success_rate`` (attempts
        without an error class / attempts; ``None`` without attempts), ``latency_ms``
        ``{p50, p95}`` (nearest rank over the durations of the last 10,000 attempts;
        ``None`` without attempts), ``failures_by_class`` (failed attempts per error
        class, most frequent first) and ``busiest`` (top 5 subscriptions by deliveries:
        ``[{subscription_id, deliveries}]``)."""

        def gather(sql: DeliverySql) -> dict[str, Any]:
            attempts, succeeded = sql.attempt_counts(subscription_id, since_ms)
            return delivery_figures(
                status_counts=sql.status_counts(subscription_id, since_ms),
                attempts=attempts,
                succeeded=succeeded,
                durations=sql.recent_durations(subscription_id, since_ms, LATENCY_SAMPLE),
                failures_by_class=sql.failures_by_class(subscription_id, since_ms),
                busiest=sql.busiest(subscription_id, since_ms, BUSIEST),
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
        """Deliveries matching every filter given, OLDEST FIRST (by ``delivery_id``, a
        ULID: creation order), at most ``limit`` (1..1000). ``since_ms`` is inclusive and
        ``until_ms`` exclusive on ``created_ms``. Page on with ``after`` = the last
        ``delivery_id`` returned: oldest-first keeps pages stable while new deliveries
        are being created (they only ever append to the end)."""
        check_limit(limit)
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown delivery status {status!r}")
        rows = await self._read(
            lambda sql: sql.list_deliveries(
                subscription_id=subscription_id, status=status, since_ms=since_ms,
                until_ms=until_ms, after=after, limit=limit,
            )
        )
        return [delivery_from_row(row) for row in rows]
