"""Recording attempts in batches: the rules of ``DeliveryStore.record_attempt`` applied to
the attempts recorded together (see ``AttemptBatcher``), as ONE job of the store's writer.

Attempts finish in bursts (a receiver answers many requests at once); one job for a burst
costs one read of the deliveries, one statement for the attempt rows and one for the
deliveries' updates, instead of seven statements, a future and a queue hand-off per
attempt on the writer thread, which must win the GIL back from the busy event loop after
each statement.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from palyra_py.delivery.records import (
    Delivery,
    DeliveryNotFound,
    DeliveryStatus,
    delivery_from_row,
)
from palyra_py.delivery.sqlite import DeliverySql, Row

_log = logging.getLogger(__name__)


@dataclass(slots=True)
class PendingRecord:
    """One ``record_attempt`` call waiting for its batch: the stored attempt row and what
    the caller asked for."""

    row: Row
    status: DeliveryStatus
    next_attempt_ms: int | None
    now_ms: int
    future: asyncio.Future[Delivery]
    on_committed: Callable[[Delivery], None] | None = None


def record_batch(sql: DeliverySql, items: Sequence[PendingRecord]) -> list[Delivery | Exception]:
    """Run inside the writer's transaction: each item's attempt logged, its delivery and the
    subscription's health updated as if the items were recorded one after another, in
    order. Returns one result per item: the updated delivery, or the refusal
    (``DeliveryNotFound``, ``ValueError``) that left that item's rows untouched."""
    current = {row[0]: row for row in sql.deliveries_by_id([item.row[0] for item in items])}
    logged = _log_attempts(sql, [item.row for item in items if item.row[0] in current])
    results: list[Delivery | Exception] = []
    final: dict[str, Row] = {}  # each delivery's row after all its attempts of the batch
    health: dict[str, list[tuple[bool, int]]] = {}
    for item in items:
        delivery_id, attempt_no = item.row[0], item.row[1]
        row = current.get(delivery_id)
        if row is None:
            results.append(DeliveryNotFound(delivery_id))
            continue
        if not logged:
            try:
                # The first write of the item: a refusal here leaves nothing of it behind.
                sql.insert_attempt(item.row)
            except sqlite3.IntegrityError:
                results.append(ValueError(
                    f"attempt {attempt_no} of {delivery_id} is already recorded"))
                continue
            except ValueError as exc:  # text SQLite cannot take (never our own records)
                results.append(exc)
                continue
        was_pending = row[5] == "pending"
        # A delivery ended meanwhile (forget_subscription) is never made pending again; a
        # success is kept.
        status = item.status if was_pending or item.status == "succeeded" else row[5]
        next_ms = item.next_attempt_ms if status == "pending" else None
        code, error_class = item.row[4], item.row[5]
        if was_pending:
            health.setdefault(row[1], []).append((item.status == "succeeded", item.now_ms))
        updated = (*row[:5], status, int(row[6]) + 1, next_ms, row[8], item.now_ms, code,
                   error_class)
        current[delivery_id] = final[delivery_id] = updated  # a later item sees this one
        results.append(delivery_from_row(updated))
    if final:
        sql.update_after_attempts([(r[0], r[5], r[6], r[7], r[10], r[11], r[9])
                                   for r in final.values()])
    for subscription_id, outcomes in health.items():
        _apply_health(sql, subscription_id, outcomes)
    return results


def _log_attempts(sql: DeliverySql, rows: Sequence[Row]) -> bool:
    """Insert all the attempt rows at once; False (and none inserted) when one is refused,
    so that the caller inserts them one by one to tell which."""
    if not rows:
        return True
    try:
        sql.insert_attempts(rows)
    except (sqlite3.IntegrityError, ValueError):
        return False
    return True


def _apply_health(sql: DeliverySql, subscription_id: str,
                  outcomes: Sequence[tuple[bool, int]]) -> None:
    """The end state of applying each outcome in turn (a success sets the last success and
    clears ``failing_since``; a failure sets ``failing_since`` unless already set), in at
    most two statements: the last success, then the first failure after it."""
    last_success = max((i for i, (ok, _) in enumerate(outcomes) if ok), default=-1)
    if last_success >= 0:
        sql.health_success(subscription_id, outcomes[last_success][1])
    later_failure = next((now for ok, now in outcomes[last_success + 1:] if not ok), None)
    if later_failure is not None:
        sql.health_failure(subscription_id, later_failure)


def settle_batch(items: Sequence[PendingRecord],
                 outcome: list[Delivery | Exception] | BaseException) -> None:
    """In the loop, after the commit: hand each item its result (or the batch's failure)
    and call its ``on_committed``; skip the futures of callers that gave up."""
    results: Sequence[Delivery | BaseException] = (
        [outcome] * len(items) if isinstance(outcome, BaseException) else outcome)
    for item, result in zip(items, results, strict=True):
        if isinstance(result, BaseException):
            if not item.future.done():
                item.future.set_exception(result)
            continue
        if not item.future.done():
            item.future.set_result(result)
        if item.on_committed is not None:
            try:
                item.on_committed(result)
            except Exception:  # one caller's bug must not leave the others unsettled
                _log.exception("delivery store: on_committed failed")


class AttemptBatcher:
    """Collects ``PendingRecord``s into writer jobs: straight away while the writer has
    none of ours (nothing to wait for), else all those of the current turn of the event
    loop in one job, queued behind it. ``submit(items)`` must make the job call
    ``settled()`` once it is settled; ``flush`` submits what is collected at once (before
    the writer stops)."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 submit: Callable[[list[PendingRecord]], None]) -> None:
        self._loop = loop
        self._submit = submit
        self._items: list[PendingRecord] = []
        self._outstanding = 0

    def add(self, item: PendingRecord) -> None:
        self._items.append(item)
        if not self._outstanding:
            self.flush()
        elif len(self._items) == 1:
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        items, self._items = self._items, []
        if items:
            self._outstanding += 1
            self._submit(items)

    def settled(self) -> None:
        self._outstanding = max(0, self._outstanding - 1)
