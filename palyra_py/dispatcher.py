"""Outbound delivery: journal events → subscriptions' HTTP endpoints, signed, retried.

Two loops share one wake-up event:
- the *enqueuer* follows the journal head and, per subscription, turns matching events into
  pending deliveries while moving that subscription's durable cursor in the same commit;
- the *scheduler* starts attempts for due deliveries, within each subscription's in-flight
  cap, rate limit and order, and records every outcome.
Time comes from the injected clock only; tests move it and call :meth:`Dispatcher.wake`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from palyra_py.bus import SeqBus
from palyra_py.delivery_store import (
    AttemptRecord,
    Delivery,
    DeliveryStore,
    DeliveryStoreUnavailable,
    NewDelivery,
)
from palyra_py.filters import EventMatcher
from palyra_py.journal import EventFilter, Journal, JournalEvent, JournalUnavailable
from palyra_py.metrics import Metrics
from palyra_py.outbound_formats import render
from palyra_py.published import PublishedEvent, from_journal, is_reserved, target_subscription
from palyra_py.retry import RateLimiter, next_attempt_delay, parse_retry_after
from palyra_py.secrets import SecretNotFound, SecretRefError, SecretStore
from palyra_py.sender import AttemptOutcome, Sender
from palyra_py.signing import GITHUB_SIGNATURE_HEADER, StandardWebhooksSigner, github_signature
from palyra_py.subscriptions import Subscription

log = structlog.get_logger("palyra.dispatcher")

PAGE = 500
RETRY_S = 1.0  # after a failed store read or write; a wall-clock pause, not the event clock
THROTTLE_STATUSES = frozenset({429, 502, 503, 504})
EVENT_CACHE = 2048

JournalHook = Callable[[str, dict[str, Any]], Awaitable[None]]
DisableHook = Callable[[str, str], Awaitable[None]]


@dataclass(slots=True)
class _SubState:
    matcher: EventMatcher
    limiter: RateLimiter
    in_flight: int = 0
    secrets: tuple[str, ...] | None = field(default=None, repr=False)  # never in a repr/log
    secrets_until: float = float("inf")
    subscription: Subscription | None = None


@dataclass(slots=True)
class DispatcherStats:
    attempts: int = 0
    succeeded: int = 0
    failed: int = 0
    waiters: dict[str, asyncio.Future[AttemptRecord]] = field(default_factory=dict)


class Dispatcher:
    def __init__(
        self,
        *,
        journal: Journal,
        bus: SeqBus,
        store: DeliveryStore,
        sender: Sender,
        subscriptions: Callable[[], Mapping[str, Subscription]],
        secrets: SecretStore,
        journal_event: JournalHook,
        disable_subscription: DisableHook,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        rand: random.Random | None = None,
        disable_after_s: float = 5 * 86400,
        max_in_flight_total: int = 256,
    ) -> None:
        self._journal = journal
        self._bus = bus
        self._store = store
        self._sender = sender
        self._subscriptions = subscriptions
        self._secrets = secrets
        self._journal_event = journal_event
        self._disable = disable_subscription
        self._clock = clock
        self._metrics = metrics
        self._rand = rand or random.Random()  # noqa: S311 (jitter, not cryptography)
        self._disable_after_ms = int(disable_after_s * 1000)
        self._max_total = max_in_flight_total
        self._wake = asyncio.Event()
        self._states: dict[str, _SubState] = {}
        self._cursors: dict[str, int] = {}
        self._events: OrderedDict[int, PublishedEvent] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight_ids: set[str] = set()
        # Attempts finished while a read of due deliveries was running make that read stale:
        # the store still said "pending". Each finish is stamped with a pass number, and a
        # pass skips what finished since it began (it was attempted already).
        self._pass = 0
        self._finished_at_pass: dict[str, int] = {}
        self._gauges_at = 0.0
        self.stats = DispatcherStats()
        self._recorded = asyncio.Condition()

    # -- control -------------------------------------------------------------------------

    def wake(self) -> None:
        """Re-check everything now (after the clock moved, a registry change, a retry)."""
        self._wake.set()

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    def first_attempt(self, event_id: str) -> asyncio.Future[AttemptRecord]:
        """A future for the first attempt of any delivery of ``event_id`` (subscription test)."""
        fut = self.stats.waiters.get(event_id)
        if fut is None:
            fut = self.stats.waiters[event_id] = asyncio.get_running_loop().create_future()
        return fut

    async def wait_for_attempts(self, count: int, timeout: float = 15.0) -> None:  # noqa: ASYNC109
        """Until ``count`` attempts have been recorded since start (tests, ``test``)."""
        async with self._recorded:
            await asyncio.wait_for(
                self._recorded.wait_for(lambda: self.stats.attempts >= count), timeout)

    async def start_at_head(self, subscription_id: str) -> None:
        """A new (or re-enabled without catch-up) subscription starts with the next event."""
        head = await self._journal.last_seq()
        await self._store.set_cursor(subscription_id, head)
        self._cursors[subscription_id] = head
        self.wake()

    async def run(self) -> None:
        """Run until cancelled; in-flight attempts are cancelled with it (they stay pending
        and are attempted again after a restart: at most one extra attempt)."""
        try:
            await asyncio.gather(self._enqueue_forever(), self._schedule_forever())
        finally:
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # -- enqueuer ------------------------------------------------------------------------

    def _state(self, sub: Subscription) -> _SubState:
        state = self._states.get(sub.subscription_id)
        if state is None or state.subscription != sub:
            previous = state
            state = _SubState(EventMatcher(sub.events, sub.filter),
                              RateLimiter(sub.rate_limit_per_s), subscription=sub)
            if previous is not None:
                state.in_flight = previous.in_flight
            self._states[sub.subscription_id] = state
        return state

    async def _cursor(self, subscription_id: str) -> int:
        cursor = self._cursors.get(subscription_id)
        if cursor is None:
            stored = await self._store.cursor(subscription_id)
            if stored is None:
                stored = await self._journal.last_seq()
                await self._store.set_cursor(subscription_id, stored)
            cursor = self._cursors[subscription_id] = stored
        return cursor

    def forget_cursor(self, subscription_id: str) -> None:
        self._cursors.pop(subscription_id, None)
        self._states.pop(subscription_id, None)

    async def _enqueue_forever(self) -> None:
        while True:
            try:
                progressed = await self.enqueue_once()
            except (DeliveryStoreUnavailable, JournalUnavailable) as exc:
                # Nothing moved (deliveries and cursor commit together): try again shortly.
                log.warning("delivery_enqueue_failed", error=str(exc), retry_in_s=RETRY_S)
                await self._pause()
                continue
            if not progressed:
                await self._bus.wait_beyond(self._lowest_cursor())

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), RETRY_S)

    def _lowest_cursor(self) -> int:
        active = [self._cursors.get(s.subscription_id, 0)
                  for s in self._subscriptions().values() if s.enabled]
        return min(active) if active else self._bus.head

    async def enqueue_once(self) -> bool:
        """Turn the next page of journal events into deliveries; True if anything moved."""
        subs = [s for s in self._subscriptions().values() if s.enabled]
        if not subs:
            return False
        cursors = {s.subscription_id: await self._cursor(s.subscription_id) for s in subs}
        low = min(cursors.values())
        page = await self._journal.list(EventFilter(), after_seq=low, limit=PAGE)
        if not page:
            return False
        published = [(e, self._published(e)) for e in page]
        now_ms = self.now_ms()
        writes = []
        enqueued = False
        for sub in subs:
            cursor = cursors[sub.subscription_id]
            if cursor >= page[-1].seq:
                continue
            state = self._state(sub)
            new = [
                NewDelivery(sub.subscription_id, e.seq, e.event_id, p.type, now_ms)
                for e, p in published
                if e.seq > cursor and p is not None and self._wanted(sub, state, e, p)
            ]
            enqueued = enqueued or bool(new)
            writes.append(self._store.enqueue(sub.subscription_id, page[-1].seq, new,
                                              now_ms=now_ms))
        # Issued together, the store's writer commits them as one transaction (one fsync),
        # instead of one fsync per subscription in turn.
        await asyncio.gather(*writes)
        for sub in subs:
            self._cursors[sub.subscription_id] = max(cursors[sub.subscription_id], page[-1].seq)
        if enqueued:
            self.wake()
        return bool(writes)

    def _published(self, event: JournalEvent) -> PublishedEvent | None:
        published = from_journal(event)
        if published is not None:
            self._events[event.seq] = published
            while len(self._events) > EVENT_CACHE:
                self._events.popitem(last=False)
        return published

    @staticmethod
    def _wanted(sub: Subscription, state: _SubState, event: JournalEvent,
                published: PublishedEvent) -> bool:
        target = target_subscription(event)
        if target is not None:
            return target == sub.subscription_id
        if not sub.events and is_reserved(published.type):
            # No patterns means "application events and received webhooks"; the daemon's own
            # events (integration.*, subscription.*, daemon.* ...) go only where named.
            return False
        return state.matcher.matches(published)

    # -- scheduler -----------------------------------------------------------------------

    async def _schedule_forever(self) -> None:
        while True:
            self._wake.clear()
            try:
                next_ms = await self.schedule_once()
            except (DeliveryStoreUnavailable, JournalUnavailable) as exc:
                log.warning("delivery_schedule_failed", error=str(exc), retry_in_s=RETRY_S)
                await self._pause()
                continue
            timeout = None if next_ms is None else max(0.0, (next_ms - self.now_ms()) / 1000)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def schedule_once(self) -> int | None:
        """Start every attempt that may start now; return when to look again (ms)."""
        subs = self._subscriptions()
        now_ms = self.now_ms()
        self._pass += 1
        this_pass = self._pass
        self._finished_at_pass = {k: v for k, v in self._finished_at_pass.items()
                                  if v >= this_pass - 1}
        busy = {sid for sid, st in self._states.items()
                if st.subscription is not None and st.in_flight >= self._cap(st.subscription)}
        wait_until: int | None = None
        capacity = self._max_total - len(self._tasks)
        if capacity > 0:
            due = await self._store.due(now_ms, min(capacity, PAGE), tuple(busy))
            for delivery in due:
                if (delivery.delivery_id in self._in_flight_ids
                        or self._finished_at_pass.get(delivery.delivery_id, 0) >= this_pass):
                    continue
                sub = subs.get(delivery.subscription_id)
                if sub is None or not sub.enabled:
                    continue
                state = self._state(sub)
                if state.in_flight >= self._cap(sub):
                    continue
                if sub.ordered:
                    oldest = await self._store.oldest_pending(sub.subscription_id)
                    if oldest is None or oldest.delivery_id != delivery.delivery_id:
                        continue
                delay = state.limiter.take(now_ms / 1000)
                if delay > 0:
                    at = now_ms + int(delay * 1000) + 1
                    wait_until = at if wait_until is None else min(wait_until, at)
                    continue
                self._launch(delivery, sub, state)
        due_next = await self._store.next_due_ms(tuple(busy))
        await self._update_gauges(now_ms)
        candidates = [t for t in (due_next, wait_until) if t is not None]
        return min(candidates) if candidates else None

    @staticmethod
    def _cap(sub: Subscription) -> int:
        return 1 if sub.ordered else sub.max_in_flight

    def _launch(self, delivery: Delivery, sub: Subscription, state: _SubState) -> None:
        state.in_flight += 1
        self._in_flight_ids.add(delivery.delivery_id)
        task = asyncio.create_task(self._attempt(delivery, sub))
        self._tasks.add(task)

        def finished(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            self._in_flight_ids.discard(delivery.delivery_id)
            self._finished_at_pass[delivery.delivery_id] = self._pass
            current = self._states.get(sub.subscription_id)
            if current is not None:
                current.in_flight = max(0, current.in_flight - 1)
            if not t.cancelled() and t.exception() is not None:
                log.error("delivery_attempt_crashed", delivery_id=delivery.delivery_id,
                          error=repr(t.exception()))
            self.wake()

        task.add_done_callback(finished)

    async def _update_gauges(self, now_ms: int) -> None:
        # Both queries walk the pending rows: at most once a second, not once a pass.
        if self._metrics is None or time.monotonic() - self._gauges_at < 1.0:
            return
        self._gauges_at = time.monotonic()
        self._metrics.deliveries_pending.set(await self._store.pending_count())
        age = await self._store.oldest_pending_age_ms(now_ms)
        self._metrics.delivery_oldest_pending_seconds.set((age or 0) / 1000)

    # -- one attempt ---------------------------------------------------------------------

    async def _event(self, seq: int) -> PublishedEvent | None:
        cached = self._events.get(seq)
        if cached is not None:
            return cached
        page = await self._journal.list(EventFilter(), after_seq=seq - 1, limit=1)
        if not page or page[0].seq != seq:
            return None
        return self._published(page[0])

    async def _signing_secrets(self, sub: Subscription, now: float) -> tuple[str, ...]:
        state = self._states[sub.subscription_id]
        if state.secrets is not None and now < state.secrets_until:
            return state.secrets
        if sub.secret_ref is None:
            raise SecretNotFound("no secret_ref set")
        found = [await asyncio.to_thread(self._secrets.resolve, sub.secret_ref)]
        until = float("inf")
        if sub.previous_secret_ref and sub.previous_valid_until is not None:
            valid_until = sub.previous_valid_until.timestamp()
            if now < valid_until:
                with contextlib.suppress(SecretNotFound, SecretRefError):
                    found.append(
                        await asyncio.to_thread(self._secrets.resolve, sub.previous_secret_ref)
                    )
                    until = valid_until
        state.secrets, state.secrets_until = tuple(found), until
        return state.secrets

    def _headers(self, sub: Subscription, secrets: tuple[str, ...], event: PublishedEvent,
                 body: bytes, now: float) -> dict[str, str]:
        headers = dict(sub.headers)
        headers["Content-Type"] = "application/json"
        headers.update(StandardWebhooksSigner(secrets).headers(event.id, int(now), body))
        if sub.signature_format == "github":
            headers[GITHUB_SIGNATURE_HEADER] = github_signature(secrets[0], body)
        return headers

    async def _attempt(self, delivery: Delivery, sub: Subscription) -> None:
        now = self._clock()
        started_ms = int(now * 1000)
        event = await self._event(delivery.event_seq)
        if event is None:
            outcome = AttemptOutcome(None, "connect", "event no longer in the journal", None,
                                     0, None)
        else:
            try:
                secrets = await self._signing_secrets(sub, now)
            except (SecretNotFound, SecretRefError) as exc:
                outcome = AttemptOutcome(None, "connect", f"signing secret unavailable: {exc}",
                                         None, 0, None)
            else:
                body = render(sub.format, event)
                headers = self._headers(sub, secrets, event, body, now)
                outcome = await self._sender.post(sub.url, body, headers, sub.timeout_s)
        await self._record(delivery, sub, outcome, started_ms)

    async def _record(self, delivery: Delivery, sub: Subscription, outcome: AttemptOutcome,
                      started_ms: int) -> None:
        attempt_no = delivery.attempts + 1
        record = AttemptRecord(
            delivery.delivery_id, attempt_no, started_ms, outcome.duration_ms,
            outcome.status_code, outcome.error_class, outcome.error_detail, outcome.excerpt,
        )
        now = self._clock()
        now_ms = int(now * 1000)
        gone = outcome.status_code == 410
        if outcome.ok:
            status, next_ms = "succeeded", None
        elif gone:
            status, next_ms = "failed", None
        else:
            delay = next_attempt_delay(sub.retry_schedule, attempt_no, self._rand)
            if delay is not None and outcome.status_code in THROTTLE_STATUSES:
                asked = parse_retry_after(outcome.retry_after, now)
                if asked is not None:
                    delay = max(delay, asked)
            status = "pending" if delay is not None else "failed"
            next_ms = None if delay is None else now_ms + int(delay * 1000)
        updated = await self._store.record_attempt(record, status=status,  # type: ignore[arg-type]
                                                   next_attempt_ms=next_ms, now_ms=now_ms)
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
            self._metrics.deliveries.labels(sub.subscription_id, result).inc()
            self._metrics.delivery_attempt_seconds.labels(sub.subscription_id).observe(
                outcome.duration_ms / 1000)
