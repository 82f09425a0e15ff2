"""Recording a batch of attempts in PostgreSQL: ONE job of the store's writer, applying the
rules of ``delivery.attempts`` to the items in order, inside the writer's transaction, in
two statements whatever the number of attempts: the deliveries locked and read with the
attempt numbers already taken, then the attempts, the deliveries' new state and the
subscriptions' health written together.
"""

from __future__ import annotations

from collections.abc import Sequence

from palyra_py.delivery.attempt_batches import PendingRecord
from palyra_py.delivery.attempts import (
    HealthOutcome,
    after_attempt,
    counts_for_health,
    health_change,
)
from palyra_py.delivery.postgres import DeliveryPgSql, HealthWrite
from palyra_py.delivery.records import (
    AttemptRow,
    Delivery,
    DeliveryNotFound,
    DeliveryRow,
    DeliveryUpdate,
    delivery_from_row,
)


async def record_batch(sql: DeliveryPgSql, items: Sequence[PendingRecord]
                       ) -> list[Delivery | Exception]:
    """Run inside the writer's transaction: each item's attempt logged, its delivery and the
    subscription's health updated as if the items were recorded one after another, in
    order. Returns one result per item: the updated delivery, or the refusal
    (``DeliveryNotFound``, ``ValueError`` for an attempt number already recorded) that
    wrote nothing of that item. Another writer of the same deliveries waits for the
    commit (their rows are locked first)."""
    rows, taken = await sql.lock_for_attempts(
        [(item.row.delivery_id, item.row.attempt_no) for item in items])
    current = {row.delivery_id: row for row in rows}
    results: list[Delivery | Exception] = []
    logged: list[AttemptRow] = []
    final: dict[str, DeliveryRow] = {}  # each delivery's row after all its attempts
    health: dict[str, list[HealthOutcome]] = {}
    for item in items:
        delivery_id = item.row.delivery_id
        row = current.get(delivery_id)
        if row is None:
            results.append(DeliveryNotFound(delivery_id))
            continue
        key = (delivery_id, item.row.attempt_no)
        if key in taken:  # recorded before, or earlier in this batch
            results.append(ValueError(
                f"attempt {item.row.attempt_no} of {delivery_id} is already recorded"))
            continue
        taken.add(key)
        logged.append(item.row)
        if counts_for_health(row):
            health.setdefault(row.subscription_id, []).append(
                HealthOutcome(item.status == "succeeded", item.now_ms))
        updated = after_attempt(row, item.row, item.status, item.next_attempt_ms, item.now_ms)
        current[delivery_id] = final[delivery_id] = updated  # a later item sees this one
        results.append(delivery_from_row(updated))
    if logged:
        await sql.write_attempts(
            logged,
            [DeliveryUpdate(r.delivery_id, r.status, r.attempts, r.next_attempt_ms,
                            r.last_status_code, r.last_error_class, r.updated_ms)
             for r in final.values()],
            [HealthWrite(subscription_id, health_change(outcomes))
             for subscription_id, outcomes in health.items()],
        )
    return results
