"""The batching of ``record_attempt`` calls: those recorded together (see
``AttemptBatcher``) go to the engine's writer as ONE job, and each caller gets its own
outcome once that job is committed.

Attempts finish in bursts (a receiver answers many requests at once); one job for a burst
costs one read of the deliveries, one statement for the attempt rows and one for the
deliveries' updates, instead of seven statements, a future and a queue hand-off per
attempt on the writer thread, which must win the GIL back from the busy event loop after
each statement.
"""

from __future__ import annotations

import asyncio
import logging
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
