"""The batching of ``record_attempt`` calls: those recorded while the writer is busy go to
the engine's writer as ONE job, and each caller gets its own outcome once that job is
committed.

Attempts finish in bursts (a receiver answers many requests at once); one job for a burst
costs one read of the deliveries, one statement for the attempt rows and one for the
deliveries' updates, instead of seven statements, a future and a queue hand-off per
attempt on the writer thread, which must win the GIL back from the busy event loop after
each statement. A job stays open to new attempts until the writer starts it, so that a
transaction holds one record job, whatever the number of loop turns it waited for.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from palyra_py.delivery.records import AttemptRow, Delivery, DeliveryStatus

_log = logging.getLogger(__name__)


@dataclass(slots=True)
class PendingRecord:
    """One ``record_attempt`` call waiting for its batch: the stored attempt row and what
    the caller asked for."""

    row: AttemptRow
    status: DeliveryStatus
    next_attempt_ms: int | None
    now_ms: int
    future: asyncio.Future[Delivery]
    on_committed: Callable[[Delivery], None] | None = None


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


RECORD_BATCH_MAX = 1000
"""Most attempts in one open job; beyond, the next ones start another."""


class AttemptBatcher:
    """Collects ``PendingRecord``s into writer jobs. The first attempt while no job of ours
    waits for the writer submits one at once (``submit(items)``: nothing to wait for); the
    later ones join that job's ``items`` until the writer starts it, so the attempts
    recorded while the writer works on something else share its next transaction.

    The job calls ``close(items)`` when it starts, on the writer thread (``add`` runs in
    the event loop: a lock hands the list over), or before it settles unstarted; from then
    on ``items`` never grows, and the job settles every item in it."""

    def __init__(self, submit: Callable[[list[PendingRecord]], None], *,
                 batch_max: int = RECORD_BATCH_MAX) -> None:
        self._submit = submit
        self._batch_max = batch_max
        self._open: list[PendingRecord] | None = None
        self._lock = threading.Lock()

    def add(self, item: PendingRecord) -> None:
        with self._lock:
            if self._open is not None and len(self._open) < self._batch_max:
                self._open.append(item)
                return
            items = self._open = [item]
        self._submit(items)

    def close(self, items: list[PendingRecord]) -> list[PendingRecord]:
        """``items`` (a submitted job's list), which takes no more attempts from now on."""
        with self._lock:
            if self._open is items:
                self._open = None
        return items
