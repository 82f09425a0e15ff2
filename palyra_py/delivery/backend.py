"""What the consumers of the delivery store need from an engine: ``DeliveryQueue`` (the
dispatcher: cursors, the queue, attempts) and ``DeliveryLog`` (the admin API: the delivery
log, operator actions, figures), and the error an engine raises for a storage failure,
never a driver's own. SQLite: ``delivery.store.DeliveryStore``.

Every time is a unix-ms ``int`` passed in by the caller: engines have no clock. A write
coroutine returns once its transaction is committed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from palyra_py.delivery.records import (
    AttemptRecord,
    Delivery,
    DeliveryStatus,
    NewDelivery,
)

__all__ = ["DeliveryBackend", "DeliveryLog", "DeliveryQueue", "DeliveryStoreUnavailable"]


class DeliveryStoreUnavailable(Exception):
    """The store could not read or make a write durable (disk full, locked, closed, the
    server unreachable...). Nothing of the failed write was committed."""


class DeliveryQueue(Protocol):
    """The dispatcher's side: each subscription's durable cursor, the pending deliveries,
    and the outcome of every attempt with the subscription's health."""

    @property
    def unavailable_reason(self) -> str | None:
        """Why every write is refused until a restart, else ``None``."""
        ...

    def check_file(self) -> str | None:
        """Check now that the storage is still the one written; the reason writes are
        refused, if any."""
        ...

    @property
    def down_reason(self) -> str | None:
        """Why reads and writes fail now for a cause that heals by itself (a database
        server found unreachable), else ``None``. Unlike ``check_file``, nothing stops:
        callers retry."""
        ...

    async def cursor(self, subscription_id: str) -> int | None:
        """The last journal seq considered for the subscription; ``None`` if it has
        none."""
        ...

    async def set_cursor(self, subscription_id: str, seq: int) -> None:
        """Set the cursor to exactly ``seq``, backwards too."""
        ...

    async def enqueue_created(
        self,
        subscription_id: str,
        new_cursor: int,
        deliveries: Sequence[NewDelivery],
        *,
        now_ms: int,
    ) -> list[Delivery]:
        """In ONE transaction: create ``deliveries`` as pending and move the cursor to
        ``new_cursor`` (never backwards); one that exists (same subscription and event
        id) is skipped. Returns those created, in the order given."""
        ...

    async def due_page(
        self, now_ms: int, limit: int, subscriptions: Sequence[str]
    ) -> tuple[list[Delivery], int | None]:
        """In one read: the pending deliveries of ``subscriptions`` due at ``now_ms``
        (earliest ``next_attempt_ms`` first, then lowest seq; at most ``limit``), and the
        earliest ``next_attempt_ms`` after ``now_ms`` of any pending delivery."""
        ...

    async def oldest_pending_of(self, subscriptions: Sequence[str]) -> dict[str, Delivery]:
        """Each subscription's pending delivery with the lowest seq, due or not (those
        with one)."""
        ...

    async def record_attempt(
        self,
        attempt: AttemptRecord,
        *,
        status: DeliveryStatus,
        next_attempt_ms: int | None,
        now_ms: int,
        on_committed: Callable[[Delivery], None] | None = None,
    ) -> Delivery:
        """In one transaction: log ``attempt``, set its delivery's outcome and update the
        subscription's health (``delivery.attempts`` has the rules). Raises
        ``DeliveryNotFound`` or ``ValueError`` (an attempt number already recorded)."""
        ...

    async def health(self, subscription_id: str) -> tuple[int | None, int | None]:
        """``(last_success_ms, failing_since_ms)``; ``(None, None)`` before any attempt."""
        ...

    async def pending_count(self, subscription_id: str | None = None) -> int:
        """Pending deliveries, of one subscription or all."""
        ...

    async def oldest_pending_age_ms(self, now_ms: int) -> int | None:
        """``now_ms`` minus the creation time of the oldest pending delivery (never below
        0), or ``None`` when nothing is pending."""
        ...


class DeliveryLog(Protocol):
    """The admin API's side: the delivery log, the operator's actions on it, figures."""

    def check_file(self) -> str | None:
        """Check now that the storage is still the one written; the reason writes are
        refused, if any."""
        ...

    @property
    def down_reason(self) -> str | None:
        """Why reads and writes fail now for a cause that heals by itself (a database
        server found unreachable), else ``None``. Unlike ``check_file``, nothing stops:
        callers retry."""
        ...

    async def get(self, delivery_id: str) -> tuple[Delivery, list[AttemptRecord]] | None:
        """The delivery and its attempts in ``attempt_no`` order, or ``None``."""
        ...

    async def retry(self, delivery_id: str, now_ms: int) -> Delivery | None:
        """Make a delivery pending and due at ``now_ms``, whatever its status (a
        succeeded one is sent again, same ids); ``None`` if there is no such delivery."""
        ...

    async def recover(
        self, subscription_id: str, since_ms: int, until_ms: int | None, now_ms: int
    ) -> int:
        """Make every failed delivery of the subscription created in ``[since_ms,
        until_ms)`` pending and due at ``now_ms``, and every pending one of them with
        failed attempts waiting for a later retry due at ``now_ms``; returns how many."""
        ...

    async def replay(self, subscription_id: str, deliveries: Sequence[NewDelivery],
                     now_ms: int) -> int:
        """In one transaction: create each of ``deliveries`` as pending, or make the
        existing delivery of that event to the subscription pending and due at the given
        ``next_attempt_ms``; the cursor does not move. Returns how many were written."""
        ...

    async def forget_subscription(self, subscription_id: str, now_ms: int) -> int:
        """For a removed subscription: drop its cursor and health, end its pending
        deliveries as failed (``subscription_removed``); returns how many were ended."""
        ...

    async def stats(
        self, *, subscription_id: str | None = None, since_ms: int | None = None
    ) -> dict[str, Any]:
        """The figures of ``deliveries stats``, from one snapshot."""
        ...

    async def health(self, subscription_id: str) -> tuple[int | None, int | None]:
        """``(last_success_ms, failing_since_ms)``; ``(None, None)`` before any attempt."""
        ...

    async def pending_count(self, subscription_id: str | None = None) -> int:
        """Pending deliveries, of one subscription or all."""
        ...

    async def oldest_pending(self, subscription_id: str) -> Delivery | None:
        """The subscription's pending delivery with the lowest seq, due or not."""
        ...

    async def oldest_pending_age_ms(self, now_ms: int) -> int | None:
        """``now_ms`` minus the creation time of the oldest pending delivery, or
        ``None``."""
        ...

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
        """Deliveries matching every filter given, oldest first (by id), at most ``limit``
        (1..1000); page on with ``after`` = the last id returned."""
        ...


class DeliveryBackend(DeliveryQueue, DeliveryLog, Protocol):
    """A whole engine, as the composition root holds it: both sides, and its lifecycle
    and upkeep."""

    async def start(self) -> None:
        """Open (create if missing) the storage. Raises ``DeliveryStoreUnavailable``."""
        ...

    async def close(self) -> None:
        """Commit every write already queued, then release the storage; later calls raise
        ``DeliveryStoreUnavailable``."""
        ...

    async def resume_seq(self) -> int | None:
        """The first journal seq from which re-delivering loses nothing: the lowest of any
        pending delivery's seq and every cursor + 1 (``None``: no cursor, nothing
        pending)."""
        ...

    async def prune(self, before_ms: int) -> int:
        """Delete finished deliveries last updated before ``before_ms`` with their
        attempts (pending ones stay); returns how many."""
        ...
