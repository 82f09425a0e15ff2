"""The delivery store's public names, whatever the engine: its records, the Protocols its
consumers are typed against (``DeliveryQueue``, ``DeliveryLog``), its error, and the
SQLite engine ``DeliveryStore`` (``sqlite_store``), which the composition root builds.
"""

from __future__ import annotations

from palyra_py.delivery.backend import DeliveryLog, DeliveryQueue, DeliveryStoreUnavailable
from palyra_py.delivery.figures import LATENCY_SAMPLE
from palyra_py.delivery.records import (
    MAX_LIMIT,
    STATUSES,
    SUBSCRIPTION_REMOVED,
    AttemptRecord,
    Delivery,
    DeliveryNotFound,
    DeliveryStatus,
    NewDelivery,
    clip_utf8,
    response_excerpt,
)
from palyra_py.delivery.sqlite_store import DELIVERIES_FILE, DeliveryStore

__all__ = [
    "DELIVERIES_FILE",
    "LATENCY_SAMPLE",
    "MAX_LIMIT",
    "STATUSES",
    "SUBSCRIPTION_REMOVED",
    "AttemptRecord",
    "Delivery",
    "DeliveryLog",
    "DeliveryNotFound",
    "DeliveryQueue",
    "DeliveryStatus",
    "DeliveryStore",
    "DeliveryStoreUnavailable",
    "NewDelivery",
    "clip_utf8",
    "response_excerpt",
]
