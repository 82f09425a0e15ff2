"""One attempt of a delivery, for the dispatcher: what the outcome means for the delivery
(done, retry when, or failed for good), and running it: hand it to the subscription's
destination (``outbound.destinations``: HTTP or command), record, count, and act on the
outcome. What it keeps per subscription is ``outbound.substate.SubState``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from palyra_py.delivery.backend import DeliveryQueue
from palyra_py.delivery.records import AttemptRecord, Delivery, DeliveryStatus
from palyra_py.metrics import Metrics
from palyra_py.outbound.destinations import Destinations
from palyra_py.outbound.email import EmailSettings
from palyra_py.outbound.formats import PreparedEvent
from palyra_py.outbound.http import AttemptOutcome, Sender
from palyra_py.outbound.retry import next_attempt_delay, parse_retry_after
from palyra_py.outbound.substate import SubState, UrlUnavailable, prepare_request
from palyra_py.registry.subscriptions import Subscription
from palyra_py.secrets.store import SecretStore

__all__ = [
    "AttemptRunner", "DisableHook", "DispatcherStats", "JournalHook", "SubState",
    "UrlUnavailable", "decide", "prepare_request",
]

JournalHook = Callable[[str, dict[str, Any]], Awaitable[None]]
DisableHook = Callable[[str, str], Awaitable[None]]
EventLookup = Callable[[int], Awaitable[PreparedEvent | None]]
THROTTLE_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(slots=True)
class DispatcherStats:
    attempts: int = 0
    succeeded: int = 0
    failed: int = 0
    waiters: dict[str, asyncio.Future[AttemptRecord]] = field(default_factory=dict)


def decide(schedule: tuple[float, ...], attempt_no: int, outcome: AttemptOutcome, now: float,
           rand: random.Random) -> tuple[DeliveryStatus, int | None]:
    """The delivery's status after attempt ``attempt_no`` and, while ``pending``, when
    (unix ms) the next attempt is due: ``succeeded`` on 2xx; ``failed`` on 410 or when the
    schedule is spent; otherwise the schedule's next delay (jittered), at least what a
    ``Retry-After`` on 429/502/503/504 asks."""
    if outcome.ok:
        return "succeeded", None
    if outcome.status_code == 410:
        return "failed", None
    delay = next_attempt_delay(schedule, attempt_no, rand)
    if delay is None:
        return "failed", None
    if outcome.status_code in THROTTLE_STATUSES:
        asked = parse_retry_after(outcome.retry_after, now)
        if asked is not None:
            delay = max(delay, asked)
    return "pending", int(now * 1000) + int(delay * 1000)


class AttemptRunner:
    """Runs attempts and records them. ``stats`` and the waits count recorded attempts."""

    def __init__(
        self,
        *,
        store: DeliveryQueue,
        sender: Sender,
        secrets: SecretStore,
        journal_event: JournalHook,
        disable_subscription: DisableHook,
        clock: Callable[[], float],
        metrics: Metrics | None,
        rand: random.Random,
        disable_after_ms: int,
        event: EventLookup,
        https_only: bool = False,
        email: EmailSettings | None = None,
    ) -> None:
        self._store = store
        self._destinations = Destinations(sender=sender, secrets=secrets, event=event,
                                          https_only=https_only, email=email, clock=clock)
        self._journal_event = journal_event
        self._disable = disable_subscription
        self._clock = clock
        self._metrics = metrics
        self._rand = rand
        self._disable_after_ms = disable_after_ms
        self.stats = DispatcherStats()
        self._recorded = asyncio.Condition()
        self._attempt_waiters = 0

    def first_attempt(self, event_id: str) -> asyncio.Future[AttemptRecord]:
        fut = self.stats.waiters.get(event_id)
        if fut is None:
            fut = self.stats.waiters[event_id] = asyncio.get_running_loop().create_future()
        return fut

    async def wait_for_attempts(self, count: int, timeout: float) -> None:  # noqa: ASYNC109
        self._attempt_waiters += 1
        try:
            async with self._recorded:
                await asyncio.wait_for(
                    self._recorded.wait_for(lambda: self.stats.attempts >= count), timeout)
        finally:
            self._attempt_waiters -= 1

    async def run(self, delivery: Delivery, prepared: PreparedEvent | None, state: SubState,
                  *, answered: Callable[[], None], settled: Callable[[int | None], None]
                  ) -> None:
        """One attempt with the subscription as launched (``state``: its secrets and
        headers, even if the registry has changed since). ``answered()`` once the request
        is over (answer, error or timeout), before its outcome is recorded;
        ``settled(next_attempt_ms)`` as soon as the outcome is committed (``None``: no retry
        pending), before what follows from it (journaling an exhausted delivery, disabling,
        waking waiters)."""
        started_ms, outcome = await self._send(delivery, prepared, state)
        answered()
        await self._record(delivery, state.subscription, outcome, started_ms, settled)

    async def _send(self, delivery: Delivery, prepared: PreparedEvent | None,
                    state: SubState) -> tuple[int, AttemptOutcome]:
        now = self._clock()
        destination = self._destinations.of(state.subscription)
        return int(now * 1000), await destination.attempt(delivery, prepared, state, now)

    async def _record(self, delivery: Delivery, sub: Subscription, outcome: AttemptOutcome,
                      started_ms: int, settled: Callable[[int | None], None]) -> None:
        attempt_no = delivery.attempts + 1
        record = AttemptRecord(
            delivery.delivery_id, attempt_no, started_ms, outcome.duration_ms,
            outcome.status_code, outcome.error_class, outcome.error_detail, outcome.excerpt,
        )
        now = self._clock()
        now_ms = int(now * 1000)
        gone = outcome.status_code == 410
        status, next_ms = decide(sub.retry_schedule, attempt_no, outcome, now, self._rand)
        # settled as soon as the commit is seen, not when this coroutine's turn comes.
        updated = await self._store.record_attempt(
            record, status=status, next_attempt_ms=next_ms, now_ms=now_ms,
            on_committed=lambda _: settled(next_ms))
        self._count(sub, outcome, status)
        waiter = self.stats.waiters.pop(delivery.event_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(record)
        if status == "failed" and not gone:
            await self._journal_event("delivery.exhausted", {
                "delivery_id": delivery.delivery_id, "subscription_id": sub.subscription_id,
                "event_id": delivery.event_id, "event_type": delivery.event_type,
                "attempts": updated.attempts, "last_status_code": outcome.status_code,
                "last_error_class": outcome.error_class,
            })
        if gone:
            await self._disable(sub.subscription_id, "the endpoint answered 410 Gone")
        elif not outcome.ok:
            _, failing_since = await self._store.health(sub.subscription_id)
            if failing_since is not None and now_ms - failing_since >= self._disable_after_ms:
                days = self._disable_after_ms / 86_400_000
                await self._disable(sub.subscription_id,
                                    f"no successful delivery for {days:g} days")
        # Last: whoever waits for this attempt sees all of its consequences.
        if self._attempt_waiters:
            async with self._recorded:
                self._recorded.notify_all()

    def _count(self, sub: Subscription, outcome: AttemptOutcome, status: str) -> None:
        self.stats.attempts += 1
        if outcome.ok:
            self.stats.succeeded += 1
        elif status == "failed":
            self.stats.failed += 1
        if self._metrics is not None:
            result = "succeeded" if outcome.ok else (outcome.error_class or "failed")
            self._metrics.delivery_attempted(sub.subscription_id, result,
                                             outcome.duration_ms / 1000)
