"""The rules of recording an attempt, which every engine applies inside its transaction:
what an attempt makes of its delivery, and what a run of outcomes makes of a
subscription's health. Pure: no I/O, no store, no clock (``now_ms`` is passed in). The
SQLite side is ``sqlite_attempts``; the batching of ``record_attempt`` calls is
``attempt_batches``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from palyra_py.delivery.records import AttemptRow, DeliveryRow, DeliveryStatus


def after_attempt(row: DeliveryRow, attempt: AttemptRow, status: DeliveryStatus,
                  next_attempt_ms: int | None, now_ms: int) -> DeliveryRow:
    """The delivery after one more attempt whose caller asked for ``status`` (``pending``:
    retried at ``next_attempt_ms``): counted, stamped ``now_ms``, with the attempt's status
    code and error class. A delivery no longer pending (``forget_subscription`` ended it)
    is never made pending again, but a success is kept."""
    was_pending = row.status == "pending"
    final = status if was_pending or status == "succeeded" else row.status
    return DeliveryRow(
        row.delivery_id, row.subscription_id, row.event_seq, row.event_id, row.event_type,
        final, int(row.attempts) + 1, next_attempt_ms if final == "pending" else None,
        row.created_ms, now_ms, attempt.status_code, attempt.error_class,
    )


def counts_for_health(row: DeliveryRow) -> bool:
    """Whether an attempt on the delivery ``row`` (as it was before it) changes the
    subscription's health: only while it is pending."""
    return row.status == "pending"


class HealthOutcome(NamedTuple):
    succeeded: bool
    now_ms: int


class HealthChange(NamedTuple):
    """What a run of outcomes does to a subscription's health, applied in this order:
    ``success_ms`` sets the last success and clears ``failing_since``; ``failure_ms`` sets
    ``failing_since`` unless it is already set. ``None``: no such write."""

    success_ms: int | None
    failure_ms: int | None


def health_change(outcomes: Sequence[HealthOutcome]) -> HealthChange:
    """The end state of applying each outcome in turn (a success sets the last success and
    clears ``failing_since``; a failure sets ``failing_since`` unless already set), as at
    most two writes: the last success, then the first failure after it."""
    last_success = max((i for i, (ok, _) in enumerate(outcomes) if ok), default=-1)
    success_ms = outcomes[last_success].now_ms if last_success >= 0 else None
    failure_ms = next((now for ok, now in outcomes[last_success + 1:] if not ok), None)
    return HealthChange(success_ms, failure_ms)
