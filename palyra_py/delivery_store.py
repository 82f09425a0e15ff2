"""The durable store of outbound deliveries: ``deliveries.db`` (SQLite, WAL,
synchronous=FULL, 0600), a cursor per subscription, the delivery queue and its attempt
log, subscription health and the figures ``deliveries stats`` shows.

One writer thread owns the write connection; every write is a job on its queue, and the
jobs queued together share one transaction (one fsync), each inside a savepoint so that a
job that refuses (``ValueError``, ``LookupError``) undoes only its own writes. When a
write coroutine returns, its transaction is committed. Reads run on a second, query-only
connection in a worker thread. The store has no clock: every time is a unix-ms ``int``
passed in by the caller. The SQL is in ``delivery_store_sql``.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import ulid

from palyra_py.delivery_store_sql import (
    MAX_ERROR_DETAIL_CHARS,
    MAX_RESPONSE_EXCERPT_BYTES,
    DeliverySql,
    DeliveryStoreUnavailable,
    DeliveryWriter,
    Row,
    WriteJob,
    describe_error,
    restrict_permissions,
)

__all__ = [
    "DELIVERIES_FILE",
    "LATENCY_SAMPLE",
    "MAX_LIMIT",
    "STATUSES",
    "SUBSCRIPTION_REMOVED",
    "AttemptRecord",
    "Delivery",
    "DeliveryNotFound",
    "DeliveryStatus",
    "DeliveryStore",
    "DeliveryStoreUnavailable",
    "NewDelivery",
    "clip_utf8",
    "format_time_ms",
    "response_excerpt",
]

_T = TypeVar("_T")

DELIVERIES_FILE = "deliveries.db"
DEFAULT_BUSY_TIMEOUT_MS = 5000
DEFAULT_MAX_PENDING = 10_000
MAX_LIMIT = 1000
"""Largest ``limit`` that ``due`` and ``list`` accept."""
LATENCY_SAMPLE = 10_000
"""``stats`` computes latency percentiles from at most this many recent attempts."""
SUBSCRIPTION_REMOVED = "subscription_removed"
"""``last_error_class`` of the deliveries ``forget_subscription`` ended."""
_PRUNE_CHUNK = 2000

DeliveryStatus = Literal["pending", "succeeded", "failed"]
STATUSES: tuple[DeliveryStatus, ...] = get_args(DeliveryStatus)


class DeliveryNotFound(LookupError):
    """No delivery with that id."""


def format_time_ms(ts_unix_ms: int) -> str:
    """RFC 3339, UTC, milliseconds, ``Z``: ``2024-05-01T12:00:00.123Z``."""
    moment = datetime.fromtimestamp(ts_unix_ms // 1000, UTC)
    moment += timedelta(milliseconds=ts_unix_ms % 1000)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _time_or_none(ts_unix_ms: int | None) -> str | None:
    return None if ts_unix_ms is None else format_time_ms(ts_unix_ms)


def clip_utf8(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8 on a character boundary; lone
    surrogates (which have no UTF-8 form) become ``?``."""
    data = text.encode("utf-8", "replace")[:max_bytes]
    return data.decode("utf-8", "ignore")


def response_excerpt(body: bytes) -> str:
    """The stored excerpt of a response body: its first 4 KiB as text (invalid UTF-8
    replaced), never more than 4096 bytes."""
    text = body[:MAX_RESPONSE_EXCERPT_BYTES].decode("utf-8", "replace")
    return clip_utf8(text, MAX_RESPONSE_EXCERPT_BYTES)


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """A delivery to create: one published event for one subscription."""

    subscription_id: str
    event_seq: int
    event_id: str
    event_type: str
    next_attempt_ms: int


@dataclass(frozen=True, slots=True)
class Delivery:
    delivery_id: str
    """A ULID stamped with the creation time; ids sort in creation order."""
    subscription_id: str
    event_seq: int
    event_id: str
    event_type: str
    status: DeliveryStatus
    attempts: int
    next_attempt_ms: int | None
    """Set while pending, ``None`` once succeeded or failed."""
    created_ms: int
    updated_ms: int
    last_status_code: int | None
    last_error_class: str | None

    def to_dict(self) -> dict[str, Any]:
        """Every field, plus ``created_at``, ``updated_at`` and ``next_attempt_at`` as
        RFC 3339 (ms, UTC; ``None`` where the ms field is)."""
        fields = {name: getattr(self, name) for name in self.__slots__}
        return {
            **fields,
            "created_at": format_time_ms(self.created_ms),
            "updated_at": format_time_ms(self.updated_ms),
            "next_attempt_at": _time_or_none(self.next_attempt_ms),
        }


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One HTTP attempt. ``error_class`` is ``None`` exactly for a successful (2xx)
    attempt: ``stats`` counts successes that way. The store keeps ``error_detail`` to 512
    characters and ``response_excerpt`` to 4096 bytes of UTF-8 (longer ones are cut)."""

    delivery_id: str
    attempt_no: int
    started_ms: int
    duration_ms: int
    status_code: int | None
    error_class: str | None
    error_detail: str | None
    response_excerpt: str | None

    def to_dict(self) -> dict[str, Any]:
        """Every field, plus ``started_at`` as RFC 3339."""
        fields = {name: getattr(self, name) for name in self.__slots__}
        return {**fields, "started_at": format_time_ms(self.started_ms)}


def _delivery(row: Row) -> Delivery:
    return Delivery(
        str(row[0]), str(row[1]), int(row[2]), str(row[3]), str(row[4]), row[5], int(row[6]),
        row[7], int(row[8]), int(row[9]), row[10], row[11],
    )


def _attempt(row: Row) -> AttemptRecord:
    return AttemptRecord(
        str(row[0]), int(row[1]), int(row[2]), int(row[3]), row[4], row[5], row[6], row[7]
    )


def _attempt_row(attempt: AttemptRecord) -> Row:
    detail = attempt.error_detail
    if detail is not None:
        # "replace" maps a lone surrogate to one "?": the length in characters holds.
        detail = detail[:MAX_ERROR_DETAIL_CHARS].encode("utf-8", "replace").decode("utf-8")
    excerpt = attempt.response_excerpt
    if excerpt is not None:
        excerpt = clip_utf8(excerpt, MAX_RESPONSE_EXCERPT_BYTES)
    return (
        attempt.delivery_id, attempt.attempt_no, attempt.started_ms, attempt.duration_ms,
        attempt.status_code, attempt.error_class, detail, excerpt,
    )


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")


def _nearest_rank(ordered: Sequence[int], q: float) -> int | None:
    """The nearest-rank percentile ``q`` (0 < q ≤ 1) of an ascending sequence."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class _DeliveryIds:
    """ULIDs stamped with the caller's time and strictly increasing in the order rows are
    created, even for several rows in one ms or a clock that stepped back: ``list`` pages
    by id and must see creation order."""

    def __init__(self, last: str | None) -> None:
        self._last = -1 if last is None else int(ulid.ULID.from_str(last))

    def next(self, now_ms: int) -> str:
        candidate = int(ulid.ULID.from_timestamp(int(now_ms)))
        if candidate <= self._last:
            candidate = self._last + 1
        self._last = candidate
        return str(ulid.ULID.from_int(candidate))


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
        self._reader: DeliverySql | None = None
        # Used only on the writer thread, inside jobs, so ids follow commit order.
        self._ids = _DeliveryIds(None)
        self._read_lock = threading.Lock()
        self._pending = 0
        self._closed = False

    @property
    def commits(self) -> int:
        """Write transactions committed so far (one fsync each), for tests and metrics."""
        return 0 if self._writer is None else self._writer.commits

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
        self._ids = _DeliveryIds(last_id)
        self._writer = DeliveryWriter(writer_sql, loop=self._loop, batch_max=self._batch_max)
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
        if self._writer is not None:
            self._writer.stop()
            await asyncio.to_thread(self._writer.join)
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    async def _write(self, run: Callable[[DeliverySql], _T]) -> _T:
        if self._writer is None or self._loop is None or self._closed:
            raise DeliveryStoreUnavailable("delivery store is closed")
        if self._pending >= self._max_pending:
            raise DeliveryStoreUnavailable("delivery store write queue is full")
        future: asyncio.Future[_T] = self._loop.create_future()
        self._pending += 1
        try:
            self._writer.submit(WriteJob(run, future))
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
        if any(d.subscription_id != subscription_id for d in deliveries):
            raise ValueError("every delivery must be for the subscription being enqueued")
        items = tuple(deliveries)
        ids = self._ids

        def run(sql: DeliverySql) -> int:
            rows = [
                (ids.next(now_ms), subscription_id, d.event_seq, d.event_id, d.event_type,
                 d.next_attempt_ms, now_ms)
                for d in items
            ]
            inserted = sql.insert_pending(rows)
            sql.advance_cursor(subscription_id, int(new_cursor))
            return inserted

        return await self._write(run)

    # -- the queue ---------------------------------------------------------------------

    async def due(
        self, now_ms: int, limit: int, exclude_subscriptions: Sequence[str] = ()
    ) -> list[Delivery]:
        """Pending deliveries with ``next_attempt_ms <= now_ms``, not of the excluded
        subscriptions: earliest ``next_attempt_ms`` first, then lowest ``event_seq``."""
        _check_limit(limit)
        exclude = tuple(exclude_subscriptions)
        rows = await self._read(lambda sql: sql.due(now_ms, limit, exclude))
        return [_delivery(row) for row in rows]

    async def next_due_ms(self, exclude_subscriptions: Sequence[str] = ()) -> int | None:
        """The earliest ``next_attempt_ms`` of a pending delivery (of a subscription not
        excluded), or ``None`` when nothing is pending."""
        exclude = tuple(exclude_subscriptions)
        return await self._read(lambda sql: sql.next_due_ms(exclude))

    async def oldest_pending(self, subscription_id: str) -> Delivery | None:
        """The subscription's pending delivery with the lowest ``event_seq``, whether due
        or not: for an ordered subscription, the only one that may be attempted."""
        row = await self._read(lambda sql: sql.oldest_pending(subscription_id))
        return None if row is None else _delivery(row)

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
    ) -> Delivery:
        """In one transaction: log ``attempt``; count it on its delivery and set the
        delivery's ``status`` (``pending`` = retry at ``next_attempt_ms``, required then;
        it is stored as ``None`` otherwise), last status code and error class; update the
        subscription's health (``succeeded``: last success = ``now_ms`` and no longer
        failing; otherwise failing since the first failure after the last success).

        An attempt on a delivery that is no longer pending (``forget_subscription`` ended
        it meanwhile) is logged and a ``succeeded`` outcome kept, but it never makes the
        delivery pending again and leaves health alone. Raises ``DeliveryNotFound``, or
        ``ValueError`` for an unknown status or an attempt number already recorded."""
        if status not in STATUSES:
            raise ValueError(f"unknown delivery status {status!r}")
        if status == "pending" and next_attempt_ms is None:
            raise ValueError("a pending delivery needs next_attempt_ms")
        row = _attempt_row(attempt)
        delivery_id = attempt.delivery_id

        def run(sql: DeliverySql) -> Delivery:
            current = sql.delivery(delivery_id)
            if current is None:
                raise DeliveryNotFound(delivery_id)
            try:
                sql.insert_attempt(row)
            except sqlite3.IntegrityError as exc:
                raise ValueError(
                    f"attempt {attempt.attempt_no} of {delivery_id} is already recorded"
                ) from exc
            was_pending = current[5] == "pending"
            new_status = status if was_pending or status == "succeeded" else current[5]
            sql.update_after_attempt(
                delivery_id,
                status=new_status,
                next_attempt_ms=next_attempt_ms if new_status == "pending" else None,
                status_code=attempt.status_code,
                error_class=attempt.error_class,
                now_ms=now_ms,
            )
            if was_pending:
                if status == "succeeded":
                    sql.health_success(current[1], now_ms)
                else:
                    sql.health_failure(current[1], now_ms)
            updated = sql.delivery(delivery_id)
            assert updated is not None
            return _delivery(updated)

        return await self._write(run)

    async def health(self, subscription_id: str) -> tuple[int | None, int | None]:
        """``(last_success_ms, failing_since_ms)``; ``(None, None)`` before any attempt."""
        return await self._read(lambda sql: sql.health(subscription_id))

    async def get(self, delivery_id: str) -> tuple[Delivery, list[AttemptRecord]] | None:
        """The delivery and its attempts in ``attempt_no`` order, or ``None``."""

        def fetch(sql: DeliverySql) -> tuple[Row | None, list[Row]]:
            return sql.delivery(delivery_id), sql.attempts_of(delivery_id)

        row, attempts = await self._read(fetch, snapshot=True)
        if row is None:
            return None
        return _delivery(row), [_attempt(a) for a in attempts]

    # -- operator actions --------------------------------------------------------------

    async def retry(self, delivery_id: str, now_ms: int) -> Delivery | None:
        """Make a failed (or pending) delivery pending and due at ``now_ms``, keeping its
        attempt count and last error. A succeeded delivery is returned unchanged (the
        caller tells by its status); ``None`` if there is no such delivery."""

        def run(sql: DeliverySql) -> Delivery | None:
            current = sql.delivery(delivery_id)
            if current is None:
                return None
            if current[5] != "succeeded":
                sql.make_pending(delivery_id, now_ms)
                current = sql.delivery(delivery_id)
                assert current is not None
            return _delivery(current)

        return await self._write(run)

    async def recover(
        self, subscription_id: str, since_ms: int, until_ms: int | None, now_ms: int
    ) -> int:
        """Make every failed delivery of the subscription created in ``[since_ms,
        until_ms)`` pending and due at ``now_ms``; returns how many."""
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
            return {
                "counts": sql.status_counts(subscription_id, since_ms),
                "attempts": sql.attempt_counts(subscription_id, since_ms),
                "durations": sql.recent_durations(subscription_id, since_ms, LATENCY_SAMPLE),
                "failures": sql.failures_by_class(subscription_id, since_ms),
                "busiest": sql.busiest(subscription_id, since_ms, 5),
            }

        raw = await self._read(gather, snapshot=True)
        attempts, succeeded = raw["attempts"]
        durations = sorted(raw["durations"])
        return {
            "deliveries": {status: raw["counts"].get(status, 0) for status in STATUSES},
            "attempts": attempts,
            "success_rate": succeeded / attempts if attempts else None,
            "latency_ms": {
                "p50": _nearest_rank(durations, 0.50),
                "p95": _nearest_rank(durations, 0.95),
            },
            "failures_by_class": raw["failures"],
            "busiest": [{"subscription_id": s, "deliveries": n} for s, n in raw["busiest"]],
        }

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
        _check_limit(limit)
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown delivery status {status!r}")
        rows = await self._read(
            lambda sql: sql.list_deliveries(
                subscription_id=subscription_id, status=status, since_ms=since_ms,
                until_ms=until_ms, after=after, limit=limit,
            )
        )
        return [_delivery(row) for row in rows]
