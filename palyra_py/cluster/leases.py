"""The pure rules of delivery leases: no I/O, no clock of their own.

A lease is one subscription delivered by one node until ``expires_at`` (judged by the
database's ``now()``, never a node's clock). Its node renews it with every heartbeat. A
node also keeps its own deadline: it stops delivering ``DROP_FRACTION`` x ``lease_s``
after the *sending* of its last successful renewal (``LocalLeases``), so that it has
stopped before the database lets another node take the lease over.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from typing import NamedTuple

__all__ = [
    "DROP_FRACTION",
    "Acquired",
    "ClusterUnavailable",
    "IdInUse",
    "LeaseRow",
    "LocalLeases",
    "NodeRow",
    "Plan",
    "fair_share",
    "plan_leases",
]

DROP_FRACTION = 0.8
"""A node trusts its leases for this fraction of ``lease_s`` after its last renewal."""

class ClusterUnavailable(Exception):
    """The cluster's tables could not be read or written; the message holds no value."""


class IdInUse(Exception):
    """Another live process heartbeats under this node id."""


class NodeRow(NamedTuple):
    """One node as the database sees it."""

    node_id: str
    host: str
    pid: int
    heartbeat_age_s: float
    live: bool
    """Its heartbeat is younger than ``lease_s`` and it did not say it stopped."""
    stopped: bool


class LeaseRow(NamedTuple):
    """One lease in force (not released, not expired)."""

    subscription_id: str
    node_id: str
    epoch: int
    expires_in_s: float


class Acquired(NamedTuple):
    """A lease just taken: its fencing token and whom it was taken from."""

    subscription_id: str
    epoch: int
    previous_node: str | None
    """The node whose lease had expired (a takeover), ``None`` for a free one."""


def fair_share(subscriptions: int, live_nodes: int) -> int:
    """The most leases one node may hold: ``ceil(subscriptions / live nodes)``."""
    if subscriptions <= 0:
        return 0
    return math.ceil(subscriptions / max(1, live_nodes))


class Plan(NamedTuple):
    """What one node does with its leases after a read: release some (gracefully), try to
    acquire up to ``acquire`` of ``candidates`` (in that order)."""

    release: list[str]
    acquire: int
    candidates: list[str]


def plan_leases(node_id: str, held: Collection[str], wanted: Iterable[str],
                leases: Iterable[LeaseRow], live_nodes: int) -> Plan:
    """Release what is no longer wanted (removed or disabled subscriptions) and what is
    over the fair share (the last in order, so the choice is stable); acquire free
    subscriptions up to the share. ``wanted``: the enabled subscriptions; ``leases``:
    those in force. Candidates start at a place that depends on ``node_id``, so nodes
    starting together reach for different subscriptions first."""
    wanted_list = sorted(set(wanted))
    share = fair_share(len(wanted_list), live_nodes)
    keep = [s for s in sorted(held) if s in set(wanted_list)]
    release = [s for s in sorted(held) if s not in set(wanted_list)]
    if len(keep) > share:
        release += keep[share:]
        keep = keep[:share]
    taken = {lease.subscription_id for lease in leases}
    free = [s for s in wanted_list if s not in taken and s not in held]
    if free:
        start = sum(node_id.encode()) % len(free)
        free = free[start:] + free[:start]
    return Plan(release, max(0, share - len(keep)), free)


class LocalLeases:
    """The leases this node holds, as far as it may trust them: each with its epoch, all
    renewed together. ``clock``-free: the caller passes its monotonic time."""

    def __init__(self, lease_s: float) -> None:
        self.lease_s = lease_s
        self.held: dict[str, int] = {}
        self.renewed_at: float | None = None

    @property
    def trusted_for_s(self) -> float:
        return DROP_FRACTION * self.lease_s

    def renewed(self, sent_at: float, in_force: Mapping[str, int]) -> tuple[list[str],
                                                                            list[str]]:
        """A renewal sent at ``sent_at`` came back with ``in_force`` (subscription ->
        epoch): what to start delivering (held in the database, not here: after a local
        drop, nobody could take them meanwhile) and what to stop (no longer ours)."""
        self.renewed_at = sent_at
        start = sorted(s for s in in_force if s not in self.held)
        stop = sorted(s for s in self.held if s not in in_force)
        self.held = dict(in_force)
        return start, stop

    def deadline(self) -> float | None:
        """When this node must stop trusting its leases (``None``: it holds none)."""
        if not self.held or self.renewed_at is None:
            return None
        return self.renewed_at + self.trusted_for_s

    def expired(self, now: float) -> bool:
        deadline = self.deadline()
        return deadline is not None and now >= deadline

    def add(self, acquired: Acquired, sent_at: float) -> None:
        """A lease acquired by a statement sent at ``sent_at``: trusted from then."""
        if not self.held or self.renewed_at is None:
            self.renewed_at = sent_at
        else:
            # One deadline for all: the earlier of the two stays (conservative).
            self.renewed_at = min(self.renewed_at, sent_at)
        self.held[acquired.subscription_id] = acquired.epoch

    def drop(self, subscription_ids: Iterable[str] | None = None) -> list[str]:
        """Stop holding these (all when ``None``); those that were held."""
        ids = list(self.held) if subscription_ids is None else list(subscription_ids)
        dropped = [s for s in ids if self.held.pop(s, None) is not None]
        return sorted(dropped)
