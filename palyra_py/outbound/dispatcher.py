"""Outbound delivery: journal events → subscriptions' destinations (HTTP endpoints, signed;
local commands: ``outbound.destinations``), retried.

Two loops share one wake-up event:
- the *enqueuer* follows the journal head and, per subscription, turns matching events into
  pending deliveries while moving that subscription's durable cursor in the same commit;
- the *scheduler* starts attempts for due deliveries, within each subscription's in-flight
  cap, rate limit and order, and records every outcome. It launches from in-memory queues
  of due deliveries (``dispatch_queue``), reading the store in pages, only when those
  queues may be out of date.

A subscription has at most ``max_in_flight`` requests open at its receiver (a command:
``max_concurrent`` runs; ``Subscription.concurrency``). An attempt's
slot is given back when its answer is in, and goes straight to that subscription's next
queued delivery; the outcome is committed meanwhile (group commit, one fsync for many).
Attempts answered and not yet committed are bounded too: at most ``max_in_flight`` more, so
that a crash re-sends at most ``RESEND_FACTOR`` x ``max_in_flight`` deliveries per
subscription. An ordered subscription launches its next delivery only once the previous
outcome is committed. The global slots (``max_in_flight_total``) are shared fairly between
subscriptions and owners (``dispatch_fair``): a receiver that never answers holds at most
its share of them while others deliver. Time comes from the injected clock only; tests move
it and call :meth:`Dispatcher.wake`.

With several nodes (``leased=True``) the dispatcher delivers only the subscriptions its
node holds a lease on: the cluster calls :meth:`start_delivering` when it acquires one
(delivery resumes from the store's durable cursor and pending deliveries, nothing cached)
and :meth:`stop_delivering` when it releases or loses one. ``peers`` carries notices to
the other nodes: a cursor moved here (``cursor:<id>``) and a retry made here (``wake``),
so that the holder does not go on from what it cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import structlog

from palyra_py.bus.base import Bus
from palyra_py.delivery.backend import DeliveryQueue, DeliveryStoreUnavailable
from palyra_py.delivery.records import AttemptRecord, Delivery, NewDelivery
from palyra_py.journal.journal import EventFilter, Journal, JournalUnavailable
from palyra_py.metrics import Metrics
from palyra_py.outbound.attempt import (
    AttemptRunner,
    DisableHook,
    DispatcherStats,
    JournalHook,
    SubState,
)
from palyra_py.outbound.due import ReadyEntry, ReadyQueues
from palyra_py.outbound.email import EmailSettings
from palyra_py.outbound.fair import FairShare
from palyra_py.outbound.formats import PreparedEvent
from palyra_py.outbound.http import Sender
from palyra_py.outbound.rendered import EVENT_CACHE, PreparedEvents
from palyra_py.registry.subscriptions import Subscription
from palyra_py.secrets.store import SecretStore

__all__ = ["EVENT_CACHE", "PAGE", "Dispatcher", "DispatcherStats"]

log = structlog.get_logger("palyra.dispatcher")

PAGE = 500
ENQUEUE_ROWS = 500
"""Deliveries one enqueue transaction creates at most (a page of events x subscriptions):
the attempts recorded meanwhile wait for it, and keep their places in the record budget."""
RETRY_S = 1.0  # after a failed store read or write; a wall-clock pause, not the event clock
RESEND_FACTOR = 2
"""Attempts launched and not yet recorded per subscription: at most this many times its
``max_in_flight`` (those open at the receiver, and as many answered whose outcome waits for
its commit). What a crash can make again."""


@dataclass(slots=True)
class _Launched:
    """One attempt in progress; settled (and its slot given back) once."""

    delivery_id: str
    sub: Subscription
    answered: bool = False
    settled: bool = False


def _earliest(*times: int | None) -> int | None:
    present = [t for t in times if t is not None]
    return min(present) if present else None


class Dispatcher:
    def __init__(
        self,
        *,
        journal: Journal,
        bus: Bus,
        store: DeliveryQueue,
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
        https_only: bool = False,
        email: EmailSettings | None = None,
        leased: bool = False,
        peers: Callable[[str], None] | None = None,
    ) -> None:
        """``leased``: deliver only the subscriptions given by :meth:`start_delivering`
        (cluster mode); else every enabled one. ``peers``: sends a notice to the other
        nodes (cluster mode)."""
        self._journal = journal
        self._bus = bus
        self._store = store
        self._registry_subs = subscriptions
        self._leased = leased
        self.peers = peers
        self._delivering: set[str] = set()
        self._delivering_version = 0
        self._filtered: Mapping[str, Subscription] = {}
        self._filtered_of: tuple[Mapping[str, Subscription] | None, int] = (None, -1)
        self._clock = clock
        self._metrics = metrics
        self._events = PreparedEvents(journal)
        self._runner = AttemptRunner(
            store=store, sender=sender, secrets=secrets, journal_event=journal_event,
            disable_subscription=disable_subscription, clock=clock, metrics=metrics,
            rand=rand or random.Random(),  # noqa: S311 (jitter, not cryptography)
            disable_after_ms=int(disable_after_s * 1000), event=self._events.get,
            https_only=https_only, email=email,
        )
        self.stats = self._runner.stats
        self._wake = asyncio.Event()
        self._states: dict[str, SubState] = {}
        self._cursors: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Launched and not yet recorded: never launched again meanwhile (bug 7).
        self._in_flight_ids: set[str] = set()
        # Attempts not yet recorded (nor crashed): they hold the global slots, counted per
        # subscription and owner for their fair shares.
        self._slots = FairShare(max_in_flight_total)
        self._parties_of: Mapping[str, Subscription] | None = None
        self._ready: ReadyQueues[PreparedEvent] = ReadyQueues()
        self._ordered_check: set[str] = set()
        self._pass_lock = asyncio.Lock()
        self._gauges_at = 0.0
        self._stopping = False
        self._halted = asyncio.Event()  # never set: a halted loop waits for the stop
        self._task_subs: dict[asyncio.Task[None], str] = {}
        self._enqueue_kick = asyncio.Event()  # cluster mode: a lease was acquired
        self.loop_crashes = 0
        """Times one of the loops crashed and was started again (logged each time)."""
        self._paused: dict[str, str] = {}
        """Per loop (``enqueue``, ``schedule``): why its last pass failed, until one works."""

    # -- control -------------------------------------------------------------------------

    def wake(self, *, everywhere: bool = False) -> None:
        """Re-check everything now (after the clock moved, a registry change, a retry):
        the next pass reads the due deliveries from the store again. ``everywhere``: the
        other nodes too (a retry or recovery made here, for the node that holds the
        subscription's lease)."""
        self._ready.invalidate()
        self._wake.set()
        if everywhere and self.peers is not None:
            self.peers("wake")

    def _subscriptions(self) -> Mapping[str, Subscription]:
        """The subscriptions this dispatcher delivers: the registry's, or with leases
        those of them this node holds (one mapping per registry version and lease change,
        as the passes compare them by identity)."""
        subs = self._registry_subs()
        if not self._leased:
            return subs
        if self._filtered_of != (subs, self._delivering_version):
            self._filtered = {k: v for k, v in subs.items() if k in self._delivering}
            self._filtered_of = (subs, self._delivering_version)
        return self._filtered

    def delivering(self) -> list[str]:
        """With leases: the subscriptions this node delivers now."""
        return sorted(self._delivering)

    def start_delivering(self, subscription_id: str) -> None:
        """Cluster mode: this node holds the lease now. Delivery resumes from the store
        (:meth:`resume_from_store`). Calling it again changes nothing more."""
        if subscription_id not in self._delivering:
            self._delivering.add(subscription_id)
            self._delivering_version += 1
        self.resume_from_store(subscription_id)

    def resume_from_store(self, subscription_id: str) -> None:
        """Forget the cursor and the queued deliveries cached for the subscription: the
        next passes read its durable cursor and its pending deliveries from the store
        (after a lease is acquired, or a cursor moved by another node)."""
        self._cursors.pop(subscription_id, None)
        self._ready.forget(subscription_id)
        self._ordered_check.add(subscription_id)
        self._enqueue_kick.set()
        self.wake()

    async def stop_delivering(self, subscription_id: str, *, grace_s: float) -> None:
        """Cluster mode: launch nothing more for the subscription; give its attempts in
        flight up to ``grace_s`` to be recorded, then cancel those left (they stay
        pending: the next holder attempts them again). Returns once none is left."""
        if subscription_id in self._delivering:
            self._delivering.discard(subscription_id)
            self._delivering_version += 1
        self._cursors.pop(subscription_id, None)
        self._ready.forget(subscription_id)
        self._ordered_check.discard(subscription_id)
        tasks = [t for t, s in self._task_subs.items() if s == subscription_id]
        if tasks and grace_s > 0:
            await asyncio.wait(tasks, timeout=grace_s)
        left = [t for t in tasks if not t.done()]
        for task in left:
            task.cancel()
        for task in left:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if left:
            log.warning("delivery_attempts_cancelled", subscription_id=subscription_id,
                        attempts=len(left), reason="lease given up")

    def _nudge(self) -> None:
        # A slot freed or deliveries were queued: a pass from memory is enough.
        self._wake.set()

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    def first_attempt(self, event_id: str) -> asyncio.Future[AttemptRecord]:
        """A future for the first attempt of any delivery of ``event_id`` (subscription test)."""
        return self._runner.first_attempt(event_id)

    def forget_first_attempt(self, event_id: str) -> None:
        """Drop the future of :meth:`first_attempt` (its event was attempted elsewhere)."""
        waiter = self._runner.stats.waiters.pop(event_id, None)
        if waiter is not None:
            waiter.cancel()

    def delivers(self, subscription_id: str) -> bool:
        """Whether this dispatcher delivers the subscription now: always without leases;
        with them, while its node holds the lease."""
        return not self._leased or subscription_id in self._delivering

    def in_flight(self, subscription_id: str) -> tuple[int, int]:
        """``(unrecorded, open)``: the subscription's attempts launched and not yet recorded,
        and of those the requests still waiting for their answer."""
        state = self._states.get(subscription_id)
        return (0, 0) if state is None else (state.in_flight, state.open)

    async def wait_for_attempts(self, count: int, timeout: float = 15.0) -> None:  # noqa: ASYNC109
        """Until ``count`` attempts have been recorded since start (tests, ``test``)."""
        await self._runner.wait_for_attempts(count, timeout)

    async def start_at_head(self, subscription_id: str) -> None:
        """A new (or re-enabled without catch-up) subscription starts with the next event."""
        head = await self._journal.last_seq()
        await self._store.set_cursor(subscription_id, head)
        self._cursors[subscription_id] = head
        self.wake()
        if self.peers is not None:
            self.peers(f"cursor:{subscription_id}")

    async def run(self) -> None:
        """Run until cancelled; in-flight attempts are cancelled with it (they stay pending
        and are attempted again after a restart: at most one extra attempt)."""
        try:
            await asyncio.gather(self._guarded("enqueuer", self._enqueue_forever),
                                 self._guarded("scheduler", self._schedule_forever))
        finally:
            self._stopping = True  # a cancelled attempt's freed slot starts nothing new
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _guarded(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run ``loop``; one that crashes is logged and started again after a pause (one
        loop dying silently would stop delivery while the other goes on)."""
        while True:
            try:
                await loop()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.loop_crashes += 1
                log.exception("dispatcher_loop_crashed", loop=name, restart_in_s=RETRY_S)
                self._ready.invalidate()
                await self._pause()

    # -- enqueuer ------------------------------------------------------------------------

    def _state(self, sub: Subscription) -> SubState:
        state = self._states.get(sub.subscription_id)
        if state is not None and state.subscription is sub:
            return state
        if state is None or state.subscription != sub:
            previous = state
            state = SubState.build(sub)
            if previous is not None:
                state.in_flight, state.open = previous.in_flight, previous.open
            self._states[sub.subscription_id] = state
        else:
            state.subscription = sub  # an equal copy (a reload): compare by identity next time
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
        """Forget what is cached for the subscription (after an admin edit); with
        ``peers``, its holder forgets its cached cursor too."""
        self._cursors.pop(subscription_id, None)
        self._states.pop(subscription_id, None)
        self._ready.forget(subscription_id)
        self._ordered_check.discard(subscription_id)
        if self.peers is not None:
            self.peers(f"cursor:{subscription_id}")

    def halted(self) -> bool:
        """The delivery store's file was removed or replaced: nothing written to it would be
        kept, so nothing is enqueued or attempted any more (until a restart)."""
        return self._store.check_file() is not None

    def _halted_already(self) -> bool:
        # What the last check found (no stat): the passes check the file themselves.
        return self._store.unavailable_reason is not None

    async def _enqueue_forever(self) -> None:
        while True:
            if self._halted_already():
                await self._halted.wait()
            self._enqueue_kick.clear()
            try:
                progressed = await self.enqueue_once()
            except (DeliveryStoreUnavailable, JournalUnavailable) as exc:
                # Nothing moved (deliveries and cursor commit together): try again shortly.
                self._paused_by("enqueue", exc)
                await self._pause()
                continue
            self._resumed("enqueue")
            if not progressed:
                if self._leased:
                    await self._wait_leased(self._lowest_cursor())
                else:
                    await self._bus.wait_beyond(self._lowest_cursor())

    async def _wait_leased(self, low: int) -> None:
        """Cluster mode: until an event beyond ``low`` is on the bus (journaled here or,
        through the bus across nodes, elsewhere) or a lease is acquired
        (:meth:`start_delivering`): the subscription then has a cursor to catch up from."""
        waits = [asyncio.ensure_future(self._bus.wait_beyond(low)),
                 asyncio.ensure_future(self._enqueue_kick.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), RETRY_S)

    def paused(self) -> dict[str, str]:
        """The loops whose last pass failed on the store or the journal (``enqueue``,
        ``schedule``) and why; each tries again every ``RETRY_S`` until one works."""
        return dict(self._paused)

    def _paused_by(self, loop: str, exc: Exception) -> None:
        # Logged once per pause, not once per try: a server down for an hour is one line.
        if loop not in self._paused:
            log.warning("delivery_paused", loop=loop, error=str(exc), retry_every_s=RETRY_S)
        self._paused[loop] = str(exc)

    def _resumed(self, loop: str) -> None:
        if self._paused.pop(loop, None) is not None:
            log.warning("delivery_resumed", loop=loop)

    def _lowest_cursor(self) -> int:
        active = [self._cursors.get(s.subscription_id, 0)
                  for s in self._subscriptions().values() if s.enabled]
        return min(active) if active else self._bus.head

    async def enqueue_once(self) -> bool:
        """Turn the next page of journal events into deliveries; True if anything moved."""
        subs = [s for s in self._subscriptions().values() if s.enabled]
        if not subs or self.halted():
            return False
        cursors = {s.subscription_id: await self._cursor(s.subscription_id) for s in subs}
        low = min(cursors.values())
        limit = max(1, min(PAGE, ENQUEUE_ROWS // len(subs)))
        page = await self._journal.list(EventFilter(), after_seq=low, limit=limit)
        if not page:
            return False
        published = [(e, self._events.prepared(e)) for e in page]
        by_seq = {e.seq: p for e, p in published if p is not None}
        now_ms = self.now_ms()
        targets: list[Subscription] = []
        writes = []
        for sub in subs:
            cursor = cursors[sub.subscription_id]
            if cursor >= page[-1].seq:
                continue
            state = self._state(sub)
            new = [
                NewDelivery(sub.subscription_id, e.seq, e.event_id, p.event.type, now_ms)
                for e, p in published
                if e.seq > cursor and p is not None and state.wants(e, p.event)
            ]
            targets.append(sub)
            writes.append(self._store.enqueue_created(sub.subscription_id, page[-1].seq, new,
                                                      now_ms=now_ms))
        # Issued together, the store's writer commits them as one transaction (one fsync),
        # instead of one fsync per subscription in turn. All are awaited, so that what was
        # created reaches the scheduler's queues even when another write failed.
        results = await asyncio.gather(*writes, return_exceptions=True)
        failure: BaseException | None = None
        for sub, result in zip(targets, results, strict=True):
            if isinstance(result, BaseException):
                failure = failure or result
                continue
            self._cursors[sub.subscription_id] = max(cursors[sub.subscription_id],
                                                     page[-1].seq)
            if result:
                self._queue_created(sub, result, by_seq)
        if failure is not None:
            self._ready.invalidate()
            raise failure
        return bool(writes)

    def _queue_created(self, sub: Subscription, created: list[Delivery],
                       events: Mapping[int, PreparedEvent]) -> None:
        if sub.ordered:
            self._ordered_check.add(sub.subscription_id)
        else:
            self._ready.add_created(sub.subscription_id, [
                ReadyEntry(d, events.get(d.event_seq)) for d in created],
                in_flight=self._in_flight_ids)
        self._nudge()

    # -- scheduler -----------------------------------------------------------------------

    async def _schedule_forever(self) -> None:
        while True:
            if self._halted_already():
                await self._halted.wait()
            self._wake.clear()
            try:
                next_ms = await self._schedule(refresh=False)
            except (DeliveryStoreUnavailable, JournalUnavailable) as exc:
                self._paused_by("schedule", exc)
                await self._pause()
                continue
            self._resumed("schedule")
            timeout = None if next_ms is None else max(0.0, (next_ms - self.now_ms()) / 1000)
            # asyncio.timeout, not wait_for: no task per wait.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def schedule_once(self) -> int | None:
        """Read the due deliveries from the store, start every attempt that may start now;
        return when to look again (ms)."""
        return await self._schedule(refresh=True)

    async def _schedule(self, *, refresh: bool) -> int | None:
        async with self._pass_lock:
            if self.halted():
                return None
            down = self._store.down_reason
            if down is not None:
                # Nothing launched from memory either: its outcome could not be stored.
                raise DeliveryStoreUnavailable(down)
            if refresh:
                self._ready.invalidate()
            subs = self._subscriptions()
            if subs is not self._parties_of:
                self._count_parties(subs)
            now_ms = self.now_ms()
            if self._ready.needs_full_read(now_ms):
                unordered = [s for s, sub in subs.items() if sub.enabled and not sub.ordered]
                await self._read_due(unordered, now_ms, full=True)
                self._ordered_check.update(s for s, sub in subs.items()
                                           if sub.enabled and sub.ordered)
                subs = self._subscriptions()
            wait_until = self._launch_queued(subs, now_ms)
            hungry = [s for s, sub in subs.items()
                      if sub.enabled and not sub.ordered and self._ready.hungry(s)
                      and self._has_slot(sub, self._state(sub))]
            if hungry and self._slots.free > 0:
                await self._read_due(hungry, now_ms, full=False)
                # Read again after the wait: a lease may have been given up meanwhile.
                wait_until = _earliest(wait_until,
                                       self._launch_queued(self._subscriptions(), now_ms))
            if self._ordered_check:
                wait_until = _earliest(wait_until, await self._launch_ordered(subs, now_ms))
            await self._update_gauges(now_ms)
            return _earliest(self._ready.next_due_ms, wait_until)

    def _count_parties(self, subs: Mapping[str, Subscription]) -> None:
        # Once per registry version (the mapping is replaced on every change), not per pass.
        enabled = [sub for sub in subs.values() if sub.enabled]
        self._slots.set_parties(len(enabled), len({sub.owner for sub in enabled}))
        self._parties_of = subs

    async def _read_due(self, subscriptions: list[str], now_ms: int, *, full: bool) -> None:
        ready = self._ready
        ready.begin_read(subscriptions)
        try:
            due, next_due = await self._store.due_page(now_ms, PAGE, subscriptions)
            events = await self._events.get_many({d.event_seq for d in due})
        except BaseException:
            ready.abort_read()
            raise
        ready.end_read(subscriptions, [ReadyEntry(d, events.get(d.event_seq)) for d in due],
                       in_flight=self._in_flight_ids, truncated=len(due) >= PAGE, full=full,
                       next_due_ms=next_due)

    def _launch_queued(self, subs: Mapping[str, Subscription], now_ms: int) -> int | None:
        """Launch from the queues, earliest head first; returns when a rate limit lets the
        next one go."""
        ready = self._ready
        wait_until: int | None = None
        capacity = self._slots.free
        for subscription_id in ready.subscriptions_ready():
            if capacity <= 0:
                break
            sub = subs.get(subscription_id)
            if sub is None or not sub.enabled or sub.ordered:
                ready.forget(subscription_id)
                continue
            launched, waited = self._launch_from_queue(sub, self._state(sub), now_ms, capacity)
            capacity -= launched
            wait_until = _earliest(wait_until, waited)
        return wait_until

    def _launch_from_queue(self, sub: Subscription, state: SubState, now_ms: int,
                           capacity: int) -> tuple[int, int | None]:
        """Launch queued deliveries of ``sub`` while it has slots (at most ``capacity``);
        how many, and when a rate limit lets the next one go."""
        launched = 0
        if self._leased and sub.subscription_id not in self._delivering:
            return 0, None  # its lease was given up since the pass began
        while launched < capacity and self._has_slot(sub, state):
            entry = self._ready.peek(sub.subscription_id, self._in_flight_ids)
            if entry is None:
                break
            delay = state.limiter.take(now_ms / 1000)
            if delay > 0:
                return launched, now_ms + int(delay * 1000) + 1
            self._ready.pop(sub.subscription_id)
            self._launch(entry.delivery, entry.extra, sub, state)
            launched += 1
        return launched, None

    async def _launch_ordered(self, subs: Mapping[str, Subscription], now_ms: int
                              ) -> int | None:
        """An ordered subscription may only attempt its oldest pending delivery. Checked
        when something may have changed for it (a delivery created or recorded, a full
        read), not on every pass."""
        candidates: list[str] = []
        waiting: list[str] = []
        for subscription_id in self._ordered_check:
            sub = subs.get(subscription_id)
            if sub is not None and sub.enabled and sub.ordered and self._state(sub).in_flight == 0:
                if self._slots.may_take(subscription_id, sub.owner):
                    candidates.append(subscription_id)
                else:
                    waiting.append(subscription_id)  # over its fair share: no read for it
        # Taken out now: what happens during the read (a record, a new delivery) puts a
        # subscription back; below, only those that still wait for a slot go back.
        self._ordered_check.clear()
        self._ordered_check.update(waiting)
        if not candidates:
            return None
        ready = self._ready
        ready.begin_read()
        try:
            oldest = await self._store.oldest_pending_of(candidates)
        except BaseException:
            ready.abort_read()
            raise
        stale = ready.end_read()
        wait_until: int | None = None
        subs = self._subscriptions()
        for subscription_id in candidates:
            delivery = oldest.get(subscription_id)
            sub = subs.get(subscription_id)
            if delivery is None or sub is None or not sub.enabled or not sub.ordered:
                continue
            if delivery.delivery_id in self._in_flight_ids:
                continue  # its record puts the subscription back
            due = delivery.next_attempt_ms is not None and delivery.next_attempt_ms <= now_ms
            if delivery.delivery_id in stale or not due:
                # Recorded during the read (it put the subscription back), or a retry not yet
                # due (the next full read, at that time, puts it back).
                continue
            state = self._state(sub)
            if state.in_flight > 0 or not self._slots.may_take(subscription_id, sub.owner):
                self._ordered_check.add(subscription_id)
                continue
            delay = state.limiter.take(now_ms / 1000)
            if delay > 0:
                wait_until = _earliest(wait_until, now_ms + int(delay * 1000) + 1)
                self._ordered_check.add(subscription_id)
                continue
            self._launch(delivery, None, sub, state)
        return wait_until

    def _has_slot(self, sub: Subscription, state: SubState) -> bool:
        """May ``sub`` launch one more attempt: within its own caps (ordered: none may be
        unrecorded) and its fair share of the global slots?"""
        if sub.ordered:
            own = state.in_flight == 0
        else:
            cap = sub.concurrency
            own = state.open < cap and state.in_flight < RESEND_FACTOR * cap
        return own and self._slots.may_take(sub.subscription_id, sub.owner)

    def _launch(self, delivery: Delivery, prepared: PreparedEvent | None, sub: Subscription,
                state: SubState) -> None:
        launched = _Launched(delivery.delivery_id, sub)
        state.in_flight += 1
        state.open += 1
        self._slots.take(launched.sub.subscription_id, launched.sub.owner)
        self._in_flight_ids.add(launched.delivery_id)
        task = asyncio.create_task(self._runner.run(
            delivery, prepared, state, answered=lambda: self._answered(launched),
            settled=lambda next_ms: self._settled(launched, next_ms)))
        self._tasks.add(task)
        self._task_subs[task] = sub.subscription_id

        def finished(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            self._task_subs.pop(t, None)
            if not launched.settled:  # not recorded (crashed, cancelled)
                self._ready.invalidate()  # the store says whether it is still due
                self._settled(launched, None)  # it starts a pass
            # (Settled before: its slot went to the next delivery, or it started a pass.)
            error = None if t.cancelled() else t.exception()
            if isinstance(error, DeliveryStoreUnavailable):
                # Sent, but its outcome could not be stored: it stays pending in the store
                # and is attempted again (the receiver may see it twice).
                log.warning("delivery_attempt_unrecorded", delivery_id=launched.delivery_id,
                            error=str(error))
            elif error is not None:
                log.error("delivery_attempt_crashed", delivery_id=launched.delivery_id,
                          error=repr(error))

        task.add_done_callback(finished)

    def _answered(self, launched: _Launched, *, launch: bool = True) -> None:
        """The request is over: its slot at the receiver goes back (once), straight to the
        subscription's next queued delivery when the record budget allows."""
        if launched.answered:
            return
        launched.answered = True
        state = self._states.get(launched.sub.subscription_id)
        if state is None:
            return
        state.open = max(0, state.open - 1)
        if not launch or self._launch_next(state):
            return
        sub = state.subscription
        if not sub.ordered and state.in_flight >= RESEND_FACTOR * sub.concurrency:
            return  # no launch before a record: each one launches or starts a pass
        self._nudge()

    def _settled(self, launched: _Launched, next_ms: int | None) -> None:
        """The attempt's outcome is in the store (or never will be): the delivery may be
        launched again by what a read from now on finds. In this order: a read that was
        running may have seen it pending, and ``note_due`` then makes a later one happen.
        Once per attempt: after this, a retry of the delivery may be in flight while the
        task of this attempt still finishes (journaling, disabling)."""
        if launched.settled:
            return
        launched.settled = True
        self._answered(launched, launch=False)  # crashed or cancelled before its answer
        self._in_flight_ids.discard(launched.delivery_id)
        self._ready.recorded(launched.delivery_id)
        if next_ms is not None:
            self._ready.note_due(next_ms)
        if launched.sub.ordered:
            self._ordered_check.add(launched.sub.subscription_id)
        # Its place in the record budget goes back.
        self._slots.give_back(launched.sub.subscription_id, launched.sub.owner)
        state = self._states.get(launched.sub.subscription_id)
        if state is not None:
            state.in_flight = max(0, state.in_flight - 1)
            if self._launch_next(state):
                return
        self._nudge()

    def _launch_next(self, state: SubState) -> bool:
        """The slot just freed goes straight to the subscription's next queued delivery, if
        a pass would launch that one now anyway (no wait for the scheduler's turn: under load
        every hop through it costs a turn of the busy loop). False: leave it to a pass."""
        sub = state.subscription
        # The cheap checks first: under load the record budget is often what says no.
        if (sub.ordered or not sub.enabled or self._stopping
                or self._ready.queued(sub.subscription_id) == 0
                or not self._has_slot(sub, state)
                or self._store.unavailable_reason is not None
                or self._store.down_reason is not None):
            return False
        now_ms = self.now_ms()
        if (self._ready.needs_full_read(now_ms)
                or self._subscriptions().get(sub.subscription_id) is not sub):
            return False
        capacity = self._slots.free
        launched, waited = self._launch_from_queue(sub, state, now_ms, min(capacity, 1))
        return launched > 0 and waited is None

    async def _update_gauges(self, now_ms: int) -> None:
        # Both queries walk the pending rows: at most once a second, not once a pass.
        if self._metrics is None or time.monotonic() - self._gauges_at < 1.0:
            return
        self._gauges_at = time.monotonic()
        self._metrics.deliveries_pending.set(await self._store.pending_count())
        age = await self._store.oldest_pending_age_ms(now_ms)
        self._metrics.delivery_oldest_pending_seconds.set((age or 0) / 1000)
