"""Copying the delivery store from one engine to another (``palyra storage copy``):
deliveries with their attempts, the cursors and the subscriptions' health, every row as
stored (ids, seqs, times, counts), so the figures (``deliveries stats``) and where each
subscription resumes are the same on the copy.

Deliveries go in ``delivery_id`` order (both engines sort ids bytewise), a batch of them
with all their attempts in one transaction; the greatest id in the target is how far a
copy got, so a copy killed at any point resumes after it. Cursors and health, one row a
subscription, are put last, whole, on every run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

from palyra_py.delivery.records import AttemptRow, DeliveryRow, Health
from palyra_py.storage.copying import CopyDone

__all__ = ["BATCH_DELIVERIES", "DeliveryCopier", "DeliverySource", "DeliveryTarget",
           "SubscriptionState"]

BATCH_DELIVERIES = 1000


class SubscriptionState(NamedTuple):
    """A subscription's cursor (``None``: none stored) and health row (``None``: none)."""

    subscription_id: str
    cursor: int | None
    health: Health | None


class DeliverySource(Protocol):
    async def count(self) -> int: ...

    async def after(self, delivery_id: str, limit: int
                    ) -> tuple[list[DeliveryRow], list[AttemptRow]]:
        """Up to ``limit`` deliveries with ids above ``delivery_id``, in id order, and all
        their attempts."""
        ...

    async def subscriptions(self) -> list[SubscriptionState]: ...

    def close(self) -> None: ...


class DeliveryTarget(Protocol):
    async def last_id(self) -> tuple[str, int]:
        """The greatest delivery id copied ("" for none) and how many are there."""
        ...

    async def write(self, deliveries: Sequence[DeliveryRow], attempts: Sequence[AttemptRow]
                    ) -> None:
        """One transaction; a delivery already there is refused (``CopyRefused``)."""
        ...

    async def write_subscriptions(self, states: Sequence[SubscriptionState]) -> None: ...


class DeliveryCopier:
    """The delivery store's ``Copier``."""

    store = "deliveries"
    unit = "deliveries"

    def __init__(self, source: DeliverySource | None, target: DeliveryTarget, *,
                 batch: int = BATCH_DELIVERIES) -> None:
        """``source`` ``None``: the installation has no delivery store (no subscription
        ever took an event)."""
        self._source = source
        self._target = target
        self._batch = batch

    async def total(self) -> int:
        return 0 if self._source is None else await self._source.count()

    async def copy(self, advance: Callable[[int], None]) -> CopyDone:
        if self._source is None:
            return CopyDone(self.store, 0, 0, ("no deliveries.db: nothing to copy",))
        last, already = await self._target.last_id()
        advance(already)
        copied = 0
        deliveries, attempts = await self._source.after(last, self._batch)
        while deliveries:
            # The next batch is read (in SQLite's thread) while this one is written.
            following = asyncio.ensure_future(
                self._source.after(deliveries[-1].delivery_id, self._batch))
            try:
                await self._target.write(deliveries, attempts)
            except BaseException:
                following.cancel()
                await asyncio.gather(following, return_exceptions=True)
                raise
            copied += len(deliveries)
            advance(len(deliveries))
            deliveries, attempts = await following
        await self._target.write_subscriptions(await self._source.subscriptions())
        return CopyDone(self.store, copied, already)

    async def close(self) -> None:
        if self._source is not None:
            self._source.close()
