"""Writing a copied delivery store into PostgreSQL (``delivery.transfer``): deliveries and
their attempts by COPY, in one transaction per batch; cursors and health upserted."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from palyra_py.delivery.postgres import pg_text
from palyra_py.delivery.records import AttemptRow, DeliveryRow
from palyra_py.delivery.transfer import SubscriptionState
from palyra_py.storage.copying import CopyRefused
from palyra_py.storage.postgres import DRIVER_ERRORS, copy_error

__all__ = ["DeliveryImport"]


class DeliveryImport:
    """The ``DeliveryTarget`` of a copy, over one connection the caller owns (migrated)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def last_id(self) -> tuple[str, int]:
        try:
            found = await self._conn.fetchrow(
                "SELECT max(delivery_id) AS last, count(*) AS n FROM deliveries")
        except DRIVER_ERRORS as exc:
            raise copy_error(exc, "the delivery store", "read") from None
        if found is None or found["last"] is None:
            return "", 0
        return str(found["last"]), int(found["n"])

    async def write(self, deliveries: Sequence[DeliveryRow], attempts: Sequence[AttemptRow]
                    ) -> None:
        conn = self._conn
        try:
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "deliveries", records=[tuple(row) for row in deliveries],
                    columns=list(DeliveryRow._fields))
                if attempts:
                    await conn.copy_records_to_table(
                        "delivery_attempts", columns=list(AttemptRow._fields), records=[
                            row._replace(error_detail=pg_text(row.error_detail),
                                         response_excerpt=pg_text(row.response_excerpt))
                            for row in attempts])
        except asyncpg.UniqueViolationError:
            raise CopyRefused("a delivery being copied is already in the target: it holds"
                              " deliveries of another installation") from None
        except DRIVER_ERRORS as exc:
            raise copy_error(exc, "the delivery store", "copy") from None

    async def write_subscriptions(self, states: Sequence[SubscriptionState]) -> None:
        cursors = [s for s in states if s.cursor is not None]
        health = [s for s in states if s.health is not None]
        conn = self._conn
        try:
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO delivery_cursors (subscription_id, seq)"
                    " SELECT * FROM unnest($1::text[], $2::bigint[])"
                    " ON CONFLICT (subscription_id) DO UPDATE SET seq = EXCLUDED.seq",
                    [s.subscription_id for s in cursors], [s.cursor for s in cursors])
                await conn.execute(
                    "INSERT INTO subscription_health (subscription_id, last_success_ms,"
                    " failing_since_ms) SELECT * FROM unnest($1::text[], $2::bigint[],"
                    " $3::bigint[]) ON CONFLICT (subscription_id) DO UPDATE SET"
                    " last_success_ms = EXCLUDED.last_success_ms,"
                    " failing_since_ms = EXCLUDED.failing_since_ms",
                    [s.subscription_id for s in health],
                    [s.health.last_success_ms for s in health if s.health is not None],
                    [s.health.failing_since_ms for s in health if s.health is not None])
        except DRIVER_ERRORS as exc:
            raise copy_error(exc, "the delivery cursors", "copy") from None
