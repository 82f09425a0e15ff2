"""The scheduler's in-memory queues of due deliveries (``dispatch_queue``): when the store
must be read again, what a read may bring into a queue, and what the enqueuer may add."""

from __future__ import annotations

from typing import cast

from palyra_py.delivery.store import Delivery
from palyra_py.outbound.due import QUEUE_MAX, ReadyEntry, ReadyQueues

T0 = 1_700_000_000_000


def d(n: int, sub: str = "a", next_ms: int = T0) -> Delivery:
    return Delivery(f"D{n:025d}", sub, n, f"evt-{n}", "x.y", "pending", 0, next_ms, T0, T0,
                    None, None)


def entries(*deliveries: Delivery) -> list[ReadyEntry[str]]:
    return [ReadyEntry(x, f"event {x.event_seq}") for x in deliveries]


def drain(q: ReadyQueues[str], sub: str) -> list[int]:
    seqs = []
    while (entry := q.peek(sub)) is not None:
        seqs.append(entry.delivery.event_seq)
        q.pop(sub)
    return seqs


def full_read(q: ReadyQueues[str], subs: list[str], found: list[Delivery], *,
              truncated: bool = False, next_due_ms: int | None = None) -> set[str]:
    q.begin_read(subs)
    return q.end_read(subs, entries(*found), truncated=truncated, full=True,
                      next_due_ms=next_due_ms)


def test_nothing_is_known_before_the_first_read() -> None:
    q: ReadyQueues[str] = ReadyQueues()
    assert q.needs_full_read(T0) and q.hungry("a")
    q.add_created("a", entries(d(1)))  # not complete: the store has it
    assert q.queued("a") == 0


def test_a_complete_read_lets_the_enqueuer_append_in_order() -> None:
    q: ReadyQueues[str] = ReadyQueues()
    full_read(q, ["a", "b"], [d(1, "a"), d(2, "b")])
    assert not q.needs_full_read(T0) and not q.hungry("b")
    q.add_created("a", entries(d(3, "a"), d(4, "a")))
    assert drain(q, "a") == [1, 3, 4]
    assert not q.hungry("a")  # empty, but nothing due in the store either
    q.add_created("a", entries(d(5, "a")))
    assert drain(q, "a") == [5]


def test_a_truncated_read_leaves_the_rest_to_the_store() -> None:
    q: ReadyQueues[str] = ReadyQueues()
    full_read(q, ["a"], [d(1), d(2)], truncated=True)
    q.add_created("a", entries(d(9)))  # the store has it after 1, 2 and what is unread
    assert drain(q, "a") == [1, 2]
    assert q.hungry("a")
    q.begin_read(["a"])
    q.end_read(["a"], entries(d(3), d(9)), truncated=False)
    assert drain(q, "a") == [3, 9] and not q.hungry("a")


def test_created_during_a_read_is_added_once_after_it() -> None:
    q: ReadyQueues[str] = ReadyQueues()
    q.begin_read(["a"])
    q.add_created("a", entries(d(2), d(3)))  # committed before the query saw 2, after 3
    q.end_read(["a"], entries(d(1), d(2)), truncated=False, full=True)
    assert drain(q, "a") == [1, 2, 3]

    q.begin_read(["a"])
    q.add_created("a", entries(d(4)))
    q.end_read(["a"], entries(d(1)), truncated=True, full=True)
    assert drain(q, "a") == [1] and q.hungry("a")  # 4 is read from the store later


def test_a_read_keeps_nothing_in_flight_or_recorded_while_it_ran() -> None:
    q: ReadyQueues[str] = ReadyQueues()
    q.begin_read(["a"])
    q.recorded(d(2).delivery_id)  # its attempt committed while the rows were being read
    stale = q.end_read(["a"], entries(d(1), d(2), d(3)), in_flight={d(3).delivery_id},
                       truncated=False, full=True)
    assert stale == {d(2).delivery_id}
    assert drain(q, "a") == [1]
    q.recorded(d(1).delivery_id)  # no read running: nothing to remember
    q.begin_read()
    assert q.end_read() == set()


def test_retries_and_invalidation_ask_for_a_full_read() -> None:
    q: ReadyQueues[str] = ReadyQueues()
    full_read(q, ["a"], [], next_due_ms=T0 + 5000)
    assert not q.needs_full_read(T0 + 4999) and q.needs_full_read(T0 + 5000)
    q.note_due(T0 + 100)
    assert q.next_due_ms == T0 + 100
    q.begin_read(["a"])
    q.note_due(T0 + 200)  # recorded while the read ran: maybe not in its answer
    q.end_read(["a"], (), truncated=False, full=True, next_due_ms=T0 + 9000)
    assert q.next_due_ms == T0 + 200
    full_read(q, ["a"], [])
    assert q.next_due_ms is None and not q.needs_full_read(T0 + 10**9)
    q.invalidate()
    assert q.needs_full_read(T0)
    q.begin_read(["a"])
    q.abort_read()
    assert q.needs_full_read(T0)


def test_a_queue_past_its_bound_goes_back_to_the_store() -> None:
    q: ReadyQueues[str] = ReadyQueues()
    full_read(q, ["a"], [])
    q.add_created("a", entries(*(d(n) for n in range(1, QUEUE_MAX + 1))))
    q.add_created("a", entries(d(QUEUE_MAX + 1)))
    assert q.queued("a") == QUEUE_MAX
    drain(q, "a")
    assert q.hungry("a")


def test_ready_subscriptions_come_earliest_head_first() -> None:
    q: ReadyQueues[str] = ReadyQueues()
    full_read(q, ["a", "b", "c"], [d(5, "a", T0 + 1), d(7, "b", T0), d(6, "c", T0)])
    assert list(q.subscriptions_ready()) == ["c", "b", "a"]
    q.forget("c")
    assert list(q.subscriptions_ready()) == ["b", "a"] and q.hungry("c")
    assert q.peek("b", in_flight={d(7, "b").delivery_id}) is None  # dropped on the way


def test_a_delivery_a_read_already_brought_is_not_queued_again_by_the_enqueuer() -> None:
    """Readers see a commit before its writer resumes: a read can queue the deliveries an
    enqueue just created before the enqueuer adds them itself. Each stays queued once, and
    one already launched from the read's queue is not queued again (it was sent twice, and
    its second record refused as 'attempt 1 ... already recorded')."""
    q: ReadyQueues[str] = ReadyQueues()
    full_read(q, ["a"], [d(1), d(2)])
    q.add_created("a", entries(d(2), d(3)))
    assert drain(q, "a") == [1, 2, 3]

    full_read(q, ["a"], [d(4), d(5)])
    launched = q.peek("a")
    assert launched is not None
    q.pop("a")
    q.add_created("a", entries(d(4), d(5), d(6)), in_flight={launched.delivery.delivery_id})
    assert drain(q, "a") == [5, 6]


def test_a_delivery_leaves_the_queued_ids_with_its_entry() -> None:
    """The queued ids kept beside each queue follow its entries: one popped (launched), or
    dropped on the way as in flight, may be queued again later (a retry due again, read
    from the store), and a forgotten queue forgets its ids."""
    q: ReadyQueues[str] = ReadyQueues()
    full_read(q, ["a"], [d(1), d(2), d(3)])
    q.pop("a")
    assert q.peek("a", in_flight={d(2).delivery_id}) is not None  # 2 dropped, 3 queued
    q.add_created("a", entries(d(1), d(2), d(3)))
    assert drain(q, "a") == [3, 1, 2]

    q.begin_read(["a"])
    q.end_read(["a"], entries(d(3), d(3)), truncated=False)
    assert drain(q, "a") == [3]  # a delivery has at most one queued entry
    q.add_created("a", entries(d(4)))
    q.forget("a")
    q.begin_read(["a"])
    q.end_read(["a"], entries(d(4)), truncated=False)
    assert drain(q, "a") == [4]


def test_the_enqueuer_adds_a_page_without_looking_at_the_queue() -> None:
    """Adding a page to a long queue looks up the page's ids, never the queue's entries:
    the cost of a page is that of the page (the whole queue was scanned for each page the
    enqueuer added, O(queue): p99 1.2 s at 1,000 events/s once a backlog formed)."""
    looked_at: list[int] = []

    class Watched(ReadyEntry[str]):
        """An entry that counts the reads of its delivery."""

        @property  # type: ignore[override]
        def delivery(self) -> Delivery:
            looked_at.append(1)
            return cast(Delivery, self.__dict__["_delivery"])

        @delivery.setter
        def delivery(self, value: Delivery) -> None:
            self.__dict__["_delivery"] = value

    q: ReadyQueues[str] = ReadyQueues()
    q.begin_read(["a"])
    q.end_read(["a"], [Watched(d(n), None) for n in range(1, QUEUE_MAX - 10)],
               truncated=False, full=True)
    looked_at.clear()
    q.add_created("a", entries(d(QUEUE_MAX), d(QUEUE_MAX + 1)))
    assert looked_at == [] and q.queued("a") == QUEUE_MAX - 9
