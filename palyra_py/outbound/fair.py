"""Fair shares of the dispatcher's global slots (``[delivery] max_in_flight_total``)
between subscriptions and between owners, so that a receiver that never answers delays
only its own deliveries (issue 9, item 8).

A slot is held from an attempt's launch until its outcome is recorded. A slot cannot be
taken back from a request that hangs, so fairness is decided when a slot is given, by the
*dynamic threshold* rule of shared switch buffers (Choudhury and Hahne): a subscription
may take one more slot only while it holds fewer slots than are free, and so may its
owner's subscriptions together. Hence:

- a subscription whose owner holds nothing starts a delivery whenever a slot is free;
- one subscription (or owner) holds at most half of the slots; when ``k`` of them hold
  slots and want more, each holds about ``total / (k + 1)`` once their requests have
  turned over (a black-hole receiver's requests end at its ``timeout_s``), and about that
  much stays free for whoever comes next;
- when only one subscription (or owner) is enabled, nobody else can come: that level is
  not limited (a daemon whose subscriptions all have the default owner is not capped at
  the owner level, and a lone subscription keeps its whole ``max_in_flight``).

Each decision is O(1): counts per subscription and per owner, updated at launch and at
record; the numbers of enabled subscriptions and owners are set when the registry changes.

Pure: no I/O, no clock.
"""

from __future__ import annotations

__all__ = ["FairShare"]


class FairShare:
    """The global slots: how many are held, and by which subscription and owner."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.held = 0
        self._by_sub: dict[str, int] = {}
        self._by_owner: dict[str, int] = {}
        self._subscriptions = 1
        self._owners = 1

    def set_parties(self, subscriptions: int, owners: int) -> None:
        """How many subscriptions, and how many distinct owners of them, are enabled."""
        self._subscriptions, self._owners = subscriptions, owners

    @property
    def free(self) -> int:
        return self.total - self.held

    def held_by(self, subscription_id: str) -> int:
        return self._by_sub.get(subscription_id, 0)

    def held_by_owner(self, owner: str) -> int:
        return self._by_owner.get(owner, 0)

    def may_take(self, subscription_id: str, owner: str) -> bool:
        """May the subscription (of ``owner``) take one more slot now?"""
        free = self.total - self.held
        if free <= 0:
            return False
        if self._subscriptions > 1 and self._by_sub.get(subscription_id, 0) >= free:
            return False
        return not (self._owners > 1 and self._by_owner.get(owner, 0) >= free)

    def take(self, subscription_id: str, owner: str) -> None:
        self.held += 1
        self._by_sub[subscription_id] = self._by_sub.get(subscription_id, 0) + 1
        self._by_owner[owner] = self._by_owner.get(owner, 0) + 1

    def give_back(self, subscription_id: str, owner: str) -> None:
        self.held -= 1
        _decrement(self._by_sub, subscription_id)
        _decrement(self._by_owner, owner)


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
