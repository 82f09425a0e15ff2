"""Reading ``deliveries.db`` for a copy to another engine (``delivery.transfer``). The
file is opened query-only and never written; each call runs in a thread."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from palyra_py.delivery.records import AttemptRow, DeliveryRow, Health
from palyra_py.delivery.transfer import SubscriptionState
from palyra_py.storage.copying import CopyFailed
from palyra_py.storage.sqlite import describe_sqlite_error, open_database, scalar

__all__ = ["DeliveryExport"]

_D_COLS = ", ".join(DeliveryRow._fields)
_A_COLS = ", ".join(AttemptRow._fields)
_T = TypeVar("_T")


class DeliveryExport:
    """The ``DeliverySource`` of a copy, over one query-only connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = open_database(self.path, busy_timeout_ms=5000, create=False,
                                       label="delivery store")
        return self._conn

    async def _call(self, action: str, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        def run() -> _T:
            return fn(self._open())
        try:
            return await asyncio.to_thread(run)
        except sqlite3.Error as exc:
            raise CopyFailed(describe_sqlite_error(exc, "deliveries.db", action)) from None

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

    async def schema_version(self) -> int | None:
        """The file's schema version (``None`` when there is no file)."""
        if not self.path.exists():
            return None
        return await self._call("read", lambda conn: int(scalar(
            conn.execute("PRAGMA user_version"))))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
