"""The figures' queries of the delivery store (``deliveries stats``) and the small WHERE
builder the listing and queue queries share. ``DeliverySql`` inherits the queries; call
them inside ``begin_read`` for one snapshot.
"""

from __future__ import annotations

import sqlite3
from typing import Any


class Where:
    """AND-ed conditions with their parameters, built from optional filters."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.params: list[Any] = []

    def add(self, sql: str, *params: Any) -> None:
        self.parts.append(sql)
        self.params.extend(params)

    @property
    def sql(self) -> str:
        return " AND ".join(self.parts) if self.parts else "1"


class DeliveryStatsQueries:
    """The stats queries, over the connection of the ``DeliverySql`` that inherits them."""

    _conn: sqlite3.Connection

    def status_counts(self, subscription_id: str | None, since_ms: int | None) -> dict[str, int]:
        where = _deliveries_where(subscription_id, since_ms)
        rows = self._conn.execute(
            f"SELECT status, count(*) FROM deliveries WHERE {where.sql}"  # noqa: S608
            " GROUP BY status",
            tuple(where.params),
        ).fetchall()
        return {str(status): int(n) for status, n in rows}

    def attempt_counts(self, subscription_id: str | None, since_ms: int | None) -> tuple[int, int]:
        """``(attempts, attempts without an error class)`` started at or after
        ``since_ms``."""
        source, where = _attempts_where(subscription_id, since_ms)
        attempts, succeeded = self._conn.execute(
            f"SELECT count(*), ifnull(sum(a.error_class IS NULL), 0) FROM {source}"  # noqa: S608
            f" WHERE {where.sql}",
            tuple(where.params),
        ).fetchone()
        return int(attempts), int(succeeded)

    def recent_durations(
        self, subscription_id: str | None, since_ms: int | None, limit: int
    ) -> list[int]:
        """Durations of the ``limit`` most recently started attempts in range."""
        source, where = _attempts_where(subscription_id, since_ms)
        rows = self._conn.execute(
            f"SELECT a.duration_ms FROM {source} WHERE {where.sql}"  # noqa: S608
            " ORDER BY a.started_ms DESC LIMIT ?",
            (*where.params, limit),
        ).fetchall()
        return [int(duration) for (duration,) in rows]

    def failures_by_class(
        self, subscription_id: str | None, since_ms: int | None
    ) -> dict[str, int]:
        source, where = _attempts_where(subscription_id, since_ms)
        where.add("a.error_class IS NOT NULL")
        rows = self._conn.execute(
            f"SELECT a.error_class, count(*) FROM {source} WHERE {where.sql}"  # noqa: S608
            " GROUP BY a.error_class ORDER BY count(*) DESC, a.error_class",
            tuple(where.params),
        ).fetchall()
        return {str(cls): int(n) for cls, n in rows}

    def busiest(
        self, subscription_id: str | None, since_ms: int | None, limit: int
    ) -> list[tuple[str, int]]:
        where = _deliveries_where(subscription_id, since_ms)
        rows = self._conn.execute(
            f"SELECT subscription_id, count(*) AS n FROM deliveries WHERE {where.sql}"  # noqa: S608
            " GROUP BY subscription_id ORDER BY n DESC, subscription_id LIMIT ?",
            (*where.params, limit),
        ).fetchall()
        return [(str(sub), int(n)) for sub, n in rows]


def _deliveries_where(subscription_id: str | None, since_ms: int | None) -> Where:
    where = Where()
    if subscription_id is not None:
        where.add("subscription_id = ?", subscription_id)
    if since_ms is not None:
        where.add("created_ms >= ?", since_ms)
    return where


def _attempts_where(subscription_id: str | None, since_ms: int | None) -> tuple[str, Where]:
    """The FROM clause (attempts ``a``, joined to deliveries ``d`` only when filtering by
    subscription) and the conditions."""
    where = Where()
    source = "attempts a"
    if subscription_id is not None:
        source = "attempts a JOIN deliveries d ON d.delivery_id = a.delivery_id"
        where.add("d.subscription_id = ?", subscription_id)
    if since_ms is not None:
        where.add("a.started_ms >= ?", since_ms)
    return source, where
