"""Reading ``deliveries.db`` for a copy to another engine (``delivery.transfer``). The
file is opened query-only and never written; each call runs in a thread."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from palyra_py.delivery.records import AttemptRow, DeliveryRow, Health
from palyra_py.delivery.transfer import SubscriptionState
from palyra_py.storage.sqlite import QueryOnlyFile, scalar

__all__ = ["DeliveryExport"]

_D_COLS = ", ".join(DeliveryRow._fields)
_A_COLS = ", ".join(AttemptRow._fields)


class DeliveryExport(QueryOnlyFile):
    """The ``DeliverySource`` of a copy, over one query-only connection."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, label="delivery store", file_name="deliveries.db")

    async def count(self) -> int:
        return await self._call("read", lambda conn: int(scalar(conn.execute(
            "SELECT count(*) FROM deliveries"))))

    async def after(self, delivery_id: str, limit: int
                    ) -> tuple[list[DeliveryRow], list[AttemptRow]]:
        def read(conn: sqlite3.Connection) -> tuple[list[DeliveryRow], list[AttemptRow]]:
            deliveries = [DeliveryRow._make(record) for record in conn.execute(
                f"SELECT {_D_COLS} FROM deliveries WHERE delivery_id > ?"  # noqa: S608
                " ORDER BY delivery_id LIMIT ?", (delivery_id, limit))]
            if not deliveries:
                return [], []
            attempts = [AttemptRow._make(record) for record in conn.execute(
                f"SELECT {_A_COLS} FROM attempts WHERE delivery_id > ?"  # noqa: S608
                " AND delivery_id <= ? ORDER BY delivery_id, attempt_no",
                (delivery_id, deliveries[-1].delivery_id))]
            return deliveries, attempts
        return await self._call("read", read)

    async def subscriptions(self) -> list[SubscriptionState]:
        def read(conn: sqlite3.Connection) -> list[SubscriptionState]:
            cursors = {str(sub): int(seq) for sub, seq in
                       conn.execute("SELECT subscription_id, seq FROM cursors")}
            health = {str(sub): Health(success, failing) for sub, success, failing in
                      conn.execute("SELECT subscription_id, last_success_ms,"
                                   " failing_since_ms FROM subscription_health")}
            return [SubscriptionState(sub, cursors.get(sub), health.get(sub))
                    for sub in sorted(cursors.keys() | health.keys())]
        return await self._call("read", read)
