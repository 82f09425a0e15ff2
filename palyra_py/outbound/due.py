"""The scheduler's in-memory view of due deliveries: per unordered subscription, a queue
of due deliveries read from the store in pages, and topped up with the deliveries the
enqueuer creates, so that a scheduling pass launches from memory instead of reading the
store again for every attempt that finishes. The store stays the truth: the rules below
only decide when the scheduler must read it again.

- A queue is *complete* when a read of the store found no more due deliveries of its
  subscription than the queue holds; the deliveries the enqueuer creates are appended only
  to complete queues (the others get them from the store, in order, when they run dry).
  Those created while a read of their subscription runs are held, and added after it
  unless the read brought them already. A read may also show them before the enqueuer
  hears of its own commit (readers see a commit before the committer resumes): the
  enqueuer's add skips what is queued or in flight already.
- Time makes deliveries due (retries): ``next_due_ms`` is the earliest future
  ``next_attempt_ms`` the store reported, lowered by every retry recorded since; once it
  has passed, or after ``invalidate`` (the operator, a registry change, a clock the tests
  moved), the next pass reads everything again.
- Bug 7 (RELIABILITY.md): a read that ran while an attempt was being recorded can show
  that delivery still pending. What a read brings is kept only if its delivery is not in
  flight when the read ends and was not recorded while the read ran; a delivery has at
  most one queued entry, popped when it is launched, so no older entry can be stale.
- Each queue keeps the set of its delivery ids beside it, so that what the enqueuer adds
  is checked against it in O(page), not O(queue) (a backlog of ``QUEUE_MAX`` entries,
  scanned for every page the enqueuer added, cost most of the latency at 1,000 events/s).

Pure: no I/O, no clock; used from the event loop only, one read at a time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from palyra_py.delivery.store import Delivery

QUEUE_MAX = 1000
"""Most due deliveries held per subscription; beyond, the store keeps them until read."""

E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class ReadyEntry(Generic[E]):
    delivery: Delivery
    extra: E | None
    """Whatever the caller attached (the dispatcher: the prepared event)."""


class _Queue(Generic[E]):
    """One subscription's due entries in order, and the set of their delivery ids."""

    __slots__ = ("entries", "ids")

    def __init__(self) -> None:
        self.entries: deque[ReadyEntry[E]] = deque()
        self.ids: set[str] = set()

    def __len__(self) -> int:
        return len(self.entries)

    def append(self, entry: ReadyEntry[E]) -> None:
        """Queues the entry unless its delivery is queued already."""
        delivery_id = entry.delivery.delivery_id
        if delivery_id not in self.ids:
            self.ids.add(delivery_id)
            self.entries.append(entry)

    def popleft(self) -> None:
        self.ids.discard(self.entries.popleft().delivery.delivery_id)


class ReadyQueues(Generic[E]):
    def __init__(self) -> None:
        self.next_due_ms: int | None = None
        self._stale = True  # nothing read yet
        self._queues: dict[str, _Queue[E]] = {}
        self._complete: set[str] = set()
        self._reading: set[str] | None = None  # the subscriptions the running read covers
        self._recorded_during: set[str] = set()
        self._held: dict[str, list[ReadyEntry[E]]] = {}
        self._late_due: int | None = None

    # -- when to read ----------------------------------------------------------------------

    def invalidate(self) -> None:
        """Something outside changed the store: the next pass reads everything again."""
        self._stale = True

    def needs_full_read(self, now_ms: int) -> bool:
        return self._stale or (self.next_due_ms is not None and now_ms >= self.next_due_ms)

    def hungry(self, subscription_id: str) -> bool:
        """Whether the store may hold due deliveries of the subscription that its (empty)
        queue does not."""
        return subscription_id not in self._complete and not self._queues.get(subscription_id)

    def note_due(self, next_attempt_ms: int) -> None:
        """A delivery became (or will become) due at ``next_attempt_ms``: call once its
        record is committed."""
        if self.next_due_ms is None or next_attempt_ms < self.next_due_ms:
            self.next_due_ms = next_attempt_ms
        if self._reading is not None and (
                self._late_due is None or next_attempt_ms < self._late_due):
            self._late_due = next_attempt_ms

    def recorded(self, delivery_id: str) -> None:
        """An attempt of ``delivery_id`` was recorded (its outcome is in the store)."""
        if self._reading is not None:
            self._recorded_during.add(delivery_id)

    def forget(self, subscription_id: str) -> None:
        self._queues.pop(subscription_id, None)
        self._complete.discard(subscription_id)

    # -- reads -----------------------------------------------------------------------------

    def begin_read(self, subscriptions: Iterable[str] = ()) -> None:
        """Call just before reading the store: the due deliveries of ``subscriptions``, or
        (none given) anything else whose result ``end_read`` must vet."""
        self._reading = set(subscriptions)
        self._recorded_during = set()
        self._held = {}
        self._late_due = None

    def end_read(
        self,
        subscriptions: Sequence[str] = (),
        entries: Iterable[ReadyEntry[E]] = (),
        *,
        in_flight: Collection[str] = frozenset(),
        truncated: bool = True,
        full: bool = False,
        next_due_ms: int | None = None,
    ) -> set[str]:
        """Take in what the read found: ``entries`` (in due order) of ``subscriptions``,
        all of them (``truncated``: the read stopped at its limit). A full read replaces
        every queue and ``next_due_ms``; a partial one fills the (empty) queues of
        ``subscriptions``. Returns the ids recorded while the read ran (stale in it)."""
        stale = self._recorded_during
        held = self._held
        self._reading, self._recorded_during, self._held = None, set(), {}
        if full:
            self._queues.clear()
            self._complete.clear()
            self._stale = False
            self.next_due_ms = next_due_ms
            if self._late_due is not None:
                self.note_due(self._late_due)
        for entry in entries:
            delivery_id = entry.delivery.delivery_id
            if delivery_id in in_flight or delivery_id in stale:
                continue  # in flight, or its attempt recorded since the row was read
            self._queue(entry.delivery.subscription_id).append(entry)
        if not truncated:
            self._complete.update(subscriptions)
            for subscription_id, created in held.items():
                # Created while the read ran: in it or not, depending on when they
                # committed. (After a truncated read the store has them.)
                self._extend(subscription_id, created, in_flight)
        return stale

    def abort_read(self) -> None:
        """The read failed: nothing changes, except that everything is read again."""
        self._reading, self._recorded_during, self._held = None, set(), {}
        self._stale = True

    def add_created(self, subscription_id: str, entries: Sequence[ReadyEntry[E]],
                    in_flight: Collection[str] = frozenset()) -> None:
        """Deliveries the enqueuer just created (due now) for the subscription; those a
        read already queued, or that are ``in_flight`` (launched from what it queued), are
        not queued again."""
        if self._reading is not None and subscription_id in self._reading:
            self._held.setdefault(subscription_id, []).extend(entries)
        elif subscription_id in self._complete:
            self._extend(subscription_id, entries, in_flight)

    def _queue(self, subscription_id: str) -> _Queue[E]:
        queue = self._queues.get(subscription_id)
        if queue is None:
            queue = self._queues[subscription_id] = _Queue()
        return queue

    def _extend(self, subscription_id: str, entries: Sequence[ReadyEntry[E]],
                in_flight: Collection[str]) -> None:
        """Appends what is neither queued already nor in flight, in O(len(entries))."""
        queue = self._queue(subscription_id)
        new = [e for e in entries if e.delivery.delivery_id not in queue.ids
               and e.delivery.delivery_id not in in_flight]
        if len(queue) + len(new) > QUEUE_MAX:
            self._complete.discard(subscription_id)  # the store keeps the rest
            return
        for entry in new:
            queue.append(entry)

    # -- launching -------------------------------------------------------------------------

    def subscriptions_ready(self) -> Iterator[str]:
        """Subscriptions with queued entries, earliest head first (due order)."""
        heads = sorted((q.entries[0].delivery.next_attempt_ms or 0,
                        q.entries[0].delivery.event_seq, s)
                       for s, q in self._queues.items() if q)
        return (s for _, _, s in heads)

    def peek(self, subscription_id: str, in_flight: Collection[str] = frozenset()
             ) -> ReadyEntry[E] | None:
        """The next entry of the subscription, if any; it stays queued until ``pop``.
        Entries of deliveries in flight are dropped on the way."""
        queue = self._queues.get(subscription_id)
        while queue:
            entry = queue.entries[0]
            if entry.delivery.delivery_id not in in_flight:
                return entry
            queue.popleft()
        return None

    def pop(self, subscription_id: str) -> None:
        queue = self._queues.get(subscription_id)
        if queue:
            queue.popleft()

    def queued(self, subscription_id: str) -> int:
        queue = self._queues.get(subscription_id)
        return len(queue) if queue else 0
