"""Recording a batch of attempts in SQLite: ONE job of the store's writer, applying the
rules of ``delivery.attempts`` to the items in order, inside the writer's transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from palyra_py.delivery.attempt_batches import PendingRecord
from palyra_py.delivery.attempts import (
    HealthOutcome,
    after_attempt,
    counts_for_health,
    health_change,
)
from palyra_py.delivery.records import (
    AttemptRow,
    Delivery,
    DeliveryNotFound,
    DeliveryRow,
    DeliveryUpdate,
    delivery_from_row,
)
from palyra_py.delivery.sqlite import DeliverySql


def record_batch(sql: DeliverySql, items: Sequence[PendingRecord]) -> list[Delivery | Exception]:
    """Run inside the writer's transaction: each item's attempt logged, its delivery and the
    subscription's health updated as if the items were recorded one after another, in
    order. Returns one result per item: the updated delivery, or the refusal
    (``DeliveryNotFound``, ``ValueError``) that left that item's rows untouched."""
    current = {row.delivery_id: row
               for row in sql.deliveries_by_id([item.row.delivery_id for item in items])}
    logged = _log_attempts(sql, [item.row for item in items if item.row.delivery_id in current])
    results: list[Delivery | Exception] = []
    final: dict[str, DeliveryRow] = {}  # each delivery's row after all its attempts
    health: dict[str, list[HealthOutcome]] = {}
    for item in items:
        delivery_id = item.row.delivery_id
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
                    f"attempt {item.row.attempt_no} of {delivery_id} is already recorded"))
                continue
            except ValueError as exc:  # text SQLite cannot take (never our own records)
                results.append(exc)
                continue
        if counts_for_health(row):
            health.setdefault(row.subscription_id, []).append(
                HealthOutcome(item.status == "succeeded", item.now_ms))
        updated = after_attempt(row, item.row, item.status, item.next_attempt_ms, item.now_ms)
        current[delivery_id] = final[delivery_id] = updated  # a later item sees this one
        results.append(delivery_from_row(updated))
    if final:
        sql.update_after_attempts([
            DeliveryUpdate(r.delivery_id, r.status, r.attempts, r.next_attempt_ms,
                           r.last_status_code, r.last_error_class, r.updated_ms)
            for r in final.values()
        ])
    for subscription_id, outcomes in health.items():
        change = health_change(outcomes)
        if change.success_ms is not None:
            sql.health_success(subscription_id, change.success_ms)
        if change.failure_ms is not None:
            sql.health_failure(subscription_id, change.failure_ms)
    return results


def _log_attempts(sql: DeliverySql, rows: Sequence[AttemptRow]) -> bool:
    """Insert all the attempt rows at once; False (and none inserted) when one is refused,
    so that the caller inserts them one by one to tell which."""
    if not rows:
        return True
    try:
        sql.insert_attempts(rows)
    except (sqlite3.IntegrityError, ValueError):
        return False
    return True
