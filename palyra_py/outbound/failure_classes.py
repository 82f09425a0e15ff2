"""Each subscription's last attempt outcome as a failure class, and what one more attempt
changes: the start of a failure (``delivery.failing``), its end (``delivery.recovered``) or
only its class (a log line). Pure: the attempt runner seeds it from the store's health
and feeds it outcomes; it does no I/O and keeps no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["UNKNOWN_CLASS", "FailureChange", "FailureClasses"]

UNKNOWN_CLASS = "unknown"
"""The class of a failure seen before this process (the store says failing, not why)."""


@dataclass(frozen=True, slots=True)
class FailureChange:
    kind: Literal["failing", "recovered", "changed"]
    """``failing``: a failure after a success (or before any outcome); ``recovered``: a
    success after a failure; ``changed``: another failure class than the last."""
    previous: str | None
    """The last failure class (``None``: the last outcome was a success, or none)."""
    current: str | None
    """This outcome's failure class (``None``: a success)."""


class FailureClasses:
    """Per subscription, the failure class of its last recorded attempt (``None`` for a
    success). A subscription not yet seen is seeded (:meth:`seed`) before its first
    outcome, so that a restart or a lease taken over does not alert again."""

    def __init__(self) -> None:
        self._last: dict[str, str | None] = {}

    def known(self, subscription_id: str) -> bool:
        return subscription_id in self._last

    def seed(self, subscription_id: str, failing: bool) -> None:
        """What the store says (``failing_since`` set or not); kept only if nothing newer
        is known."""
        self._last.setdefault(subscription_id, UNKNOWN_CLASS if failing else None)

    def forget(self, subscription_id: str) -> None:
        """Another node delivers it now, or it was removed: seed it again next time."""
        self._last.pop(subscription_id, None)

    def observe(self, subscription_id: str, error_class: str | None) -> FailureChange | None:
        """Record one outcome (``error_class`` ``None`` for a success); the change it makes,
        or ``None`` when the class is the last one's."""
        previous = self._last.get(subscription_id)
        self._last[subscription_id] = error_class
        if error_class == previous:
            return None
        if previous is None:
            return FailureChange("failing", None, error_class)
        if error_class is None:
            return FailureChange("recovered", previous, None)
        return FailureChange("changed", previous, error_class)
