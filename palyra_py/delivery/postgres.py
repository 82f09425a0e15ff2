"""PostgreSQL storage for the delivery store: the schema (versioned migrations, store
``deliveries`` in ``palyra_schema``) and its SQL over one asyncpg connection.

The rules (transitions, health: ``delivery.attempts``), the records and typed rows
(``delivery.records``) and the figures (``delivery.figures``) are engine-independent; this
module stores and fetches those rows. The backend, its writer and its reads are in
``postgres_store``.

Several nodes share these tables. Nothing here assumes one process: delivery ids are
ULIDs made by the caller, "already created" is the unique ``(subscription_id, event_id)``
(``ON CONFLICT DO NOTHING``), a cursor moved by ``enqueue`` takes the ``GREATEST`` of the
stored and the new seq, and recording attempts locks their deliveries' rows first
(``FOR UPDATE``), so two writers of one delivery take turns.

The write methods run inside the transaction the writer opened and do not commit.
PostgreSQL text cannot hold NUL: ``pg_text`` writes it as ``?`` (a lone surrogate is
already ``?`` in the stored attempt rows, ``records.attempt_row``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from palyra_py.delivery.attempts import HealthChange
from palyra_py.delivery.records import (
    MAX_ERROR_DETAIL_CHARS,
    MAX_RESPONSE_EXCERPT_BYTES,
    AttemptRow,
    DeliveryRow,
    DeliveryUpdate,
    Health,
    NewDeliveryRow,
)
from palyra_py.storage.postgres import Migration

__all__ = ["MIGRATIONS", "STORE", "DeliveryPgSql", "HealthWrite", "pg_text"]

STORE = "deliveries"

_D_COLS = ", ".join(DeliveryRow._fields)
_A_COLS = ", ".join(AttemptRow._fields)
_A_TYPES = ("text", "integer", "bigint", "bigint", "integer", "text", "text", "text")

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "deliveries, attempts, cursors, subscription health", (
        """CREATE TABLE delivery_cursors (
            subscription_id text COLLATE "C" PRIMARY KEY,
            seq bigint NOT NULL
        )""",
        """CREATE TABLE deliveries (
            delivery_id text COLLATE "C" PRIMARY KEY,
            subscription_id text COLLATE "C" NOT NULL,
            event_seq bigint NOT NULL,
            event_id text NOT NULL,
            event_type text NOT NULL,
            status text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
            attempts integer NOT NULL DEFAULT 0,
            next_attempt_ms bigint,
            created_ms bigint NOT NULL,
            updated_ms bigint NOT NULL,
            last_status_code integer,
            last_error_class text,
            UNIQUE (subscription_id, event_id)
        )""",
        # The due queue: only pending rows, in the order it reads them.
        "CREATE INDEX deliveries_due ON deliveries (next_attempt_ms, event_seq)"
        " WHERE status = 'pending'",
        "CREATE INDEX deliveries_pending_seq ON deliveries (subscription_id, event_seq)"
        " WHERE status = 'pending'",
        "CREATE INDEX deliveries_subscription_created"
        " ON deliveries (subscription_id, created_ms)",
        "CREATE INDEX deliveries_finished ON deliveries (updated_ms)"
        " WHERE status <> 'pending'",
        f"""CREATE TABLE delivery_attempts (
            delivery_id text COLLATE "C" NOT NULL
                REFERENCES deliveries (delivery_id) ON DELETE CASCADE,
            attempt_no integer NOT NULL,
            started_ms bigint NOT NULL,
            duration_ms bigint NOT NULL,
            status_code integer,
            error_class text COLLATE "C",
            error_detail text CHECK (char_length(error_detail) <= {MAX_ERROR_DETAIL_CHARS}),
            response_excerpt text
                CHECK (octet_length(response_excerpt) <= {MAX_RESPONSE_EXCERPT_BYTES}),
            PRIMARY KEY (delivery_id, attempt_no)
        )""",
        "CREATE INDEX delivery_attempts_started ON delivery_attempts (started_ms)",
        """CREATE TABLE subscription_health (
            subscription_id text COLLATE "C" PRIMARY KEY,
            last_success_ms bigint,
            failing_since_ms bigint
        )""",
    )),
)

Connection = asyncpg.Connection | PoolConnectionProxy
"""A connection of its own or one lent by a pool."""


def pg_text(text: str | None) -> str | None:
    """``text`` as PostgreSQL can store it: NUL (which its text type refuses) as ``?``,
    one character for one, so the stored bounds hold."""
    if text is None or "\x00" not in text:
        return text
    return text.replace("\x00", "?")


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows as one list per column (the arrays ``unnest`` takes)."""
    return [[row[i] for row in rows] for i in range(width)]


def _deliveries(found: Sequence[asyncpg.Record]) -> list[DeliveryRow]:
    return [DeliveryRow(*record) for record in found]


class HealthWrite(NamedTuple):
    """One subscription's ``HealthChange`` of a batch, as one row of the health upsert."""

    subscription_id: str
    change: HealthChange


class Where:
    """AND-ed conditions with numbered placeholders, from optional filters."""

    def __init__(self, first: int = 1) -> None:
        self.parts: list[str] = []
        self.params: list[Any] = []
        self._first = first

    def add(self, sql: str, *params: Any) -> None:
        """``sql`` names its parameters ``{}``, filled with their placeholders in turn."""
        holders = []
        for value in params:
            self.params.append(value)
            holders.append(f"${self._first + len(self.params) - 1}")
        self.parts.append(sql.format(*holders))

    def next(self) -> str:
        """The placeholder after the last one used."""
        return f"${self._first + len(self.params)}"

    @property
    def sql(self) -> str:
        return " AND ".join(self.parts) if self.parts else "true"


# The attempts, their deliveries' new state and the subscriptions' health in one
# statement. Health applies a ``HealthChange``: a success sets the last success and leaves
# failing_since as the failure after it says (NULL when none); a failure alone sets
# failing_since unless it is already set.
_RECORD = f"""
    WITH a AS (
        INSERT INTO delivery_attempts ({_A_COLS})
        SELECT * FROM unnest({", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(_A_TYPES))})
    ), d AS (
        UPDATE deliveries AS t SET status = u.status, attempts = u.attempts,
            next_attempt_ms = u.next_attempt_ms, last_status_code = u.last_status_code,
            last_error_class = u.last_error_class, updated_ms = u.updated_ms
        FROM unnest($9::text[], $10::text[], $11::integer[], $12::bigint[], $13::integer[],
                    $14::text[], $15::bigint[])
            AS u(delivery_id, status, attempts, next_attempt_ms, last_status_code,
                 last_error_class, updated_ms)
        WHERE t.delivery_id = u.delivery_id
    )
    INSERT INTO subscription_health AS h (subscription_id, last_success_ms, failing_since_ms)
    SELECT * FROM unnest($16::text[], $17::bigint[], $18::bigint[])
    ON CONFLICT (subscription_id) DO UPDATE SET
        last_success_ms = coalesce(EXCLUDED.last_success_ms, h.last_success_ms),
        failing_since_ms = CASE WHEN EXCLUDED.last_success_ms IS NOT NULL
                                THEN EXCLUDED.failing_since_ms
                                ELSE coalesce(h.failing_since_ms, EXCLUDED.failing_since_ms)
                           END
"""  # noqa: S608 (constants and placeholders only)

# New pending deliveries (those whose subscription and event id exist skipped) and the
# cursor moved forward only, in one statement; the ids of the rows inserted.
_ENQUEUE = f"""
    WITH ins AS (
        INSERT INTO deliveries ({_D_COLS})
        SELECT n.delivery_id, n.subscription_id, n.event_seq, n.event_id, n.event_type,
               'pending', 0, n.next_attempt_ms, n.created_ms, n.created_ms, NULL, NULL
        FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                    $6::bigint[], $7::bigint[])
            AS n(delivery_id, subscription_id, event_seq, event_id, event_type,
                 next_attempt_ms, created_ms)
        ON CONFLICT (subscription_id, event_id) DO NOTHING
        RETURNING delivery_id
    ), cur AS (
        INSERT INTO delivery_cursors AS c (subscription_id, seq) VALUES ($8, $9)
        ON CONFLICT (subscription_id) DO UPDATE SET seq = GREATEST(c.seq, EXCLUDED.seq)
    )
    SELECT delivery_id FROM ins
"""  # noqa: S608 (constants and placeholders only)


# A replay: each event's delivery created, or the one it has made pending and due again.
_REPLAY = f"""
    INSERT INTO deliveries AS d ({_D_COLS})
    SELECT n.delivery_id, n.subscription_id, n.event_seq, n.event_id, n.event_type,
           'pending', 0, n.next_attempt_ms, n.created_ms, n.created_ms, NULL, NULL
    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                $6::bigint[], $7::bigint[])
        AS n(delivery_id, subscription_id, event_seq, event_id, event_type,
             next_attempt_ms, created_ms)
    ON CONFLICT (subscription_id, event_id) DO UPDATE SET status = 'pending',
        next_attempt_ms = EXCLUDED.next_attempt_ms, updated_ms = EXCLUDED.created_ms
"""  # noqa: S608 (constants and placeholders only)


class DeliveryPgSql:
    """The delivery store's SQL over one connection, which the caller does not share
    meanwhile."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    # -- cursors -----------------------------------------------------------------------

    async def cursor(self, subscription_id: str) -> int | None:
        found = await self.conn.fetchval(
            "SELECT seq FROM delivery_cursors WHERE subscription_id = $1", subscription_id)
        return None if found is None else int(found)

    async def set_cursor(self, subscription_id: str, seq: int) -> None:
        await self.conn.execute(
            "INSERT INTO delivery_cursors (subscription_id, seq) VALUES ($1, $2)"
            " ON CONFLICT (subscription_id) DO UPDATE SET seq = EXCLUDED.seq",
            subscription_id, seq,
        )

    # -- deliveries --------------------------------------------------------------------

    async def enqueue(self, subscription_id: str, new_cursor: int,
                      rows: Sequence[NewDeliveryRow]) -> set[str]:
        """Insert ``rows`` as pending (one whose ``(subscription_id, event_id)`` exists is
        skipped) and move the cursor to ``new_cursor`` unless it is further; the ids of
        the rows inserted."""
        cols = _columns(rows, len(NewDeliveryRow._fields))
        found = await self.conn.fetch(_ENQUEUE, *cols, subscription_id, new_cursor)
        return {str(record["delivery_id"]) for record in found}

    async def replay(self, rows: Sequence[NewDeliveryRow]) -> int:
        """Insert ``rows`` as pending; where the event's delivery exists, make it pending
        and due at the row's ``next_attempt_ms`` instead. The cursor is left alone.
        Returns how many rows were written (each one, inserted or updated)."""
        if not rows:
            return 0
        return _count(await self.conn.execute(
            _REPLAY, *_columns(rows, len(NewDeliveryRow._fields))))

    async def delivery(self, delivery_id: str) -> DeliveryRow | None:
        found = await self.conn.fetchrow(
            f"SELECT {_D_COLS} FROM deliveries WHERE delivery_id = $1",  # noqa: S608
            delivery_id,
        )
        return None if found is None else DeliveryRow(*found)

    async def lock_for_attempts(
        self, pairs: Sequence[tuple[str, int]]
    ) -> tuple[list[DeliveryRow], set[tuple[str, int]]]:
        """For recording attempts ``(delivery_id, attempt_no)``: the rows of the
        deliveries that exist, locked until the commit (``FOR UPDATE``: another writer of
        the same delivery waits), and which of the pairs are already recorded."""
        ids = sorted({delivery_id for delivery_id, _ in pairs})  # one lock order for all
        rows = _deliveries(await self.conn.fetch(
            f"SELECT {_D_COLS} FROM deliveries WHERE delivery_id = ANY($1::text[])"  # noqa: S608
            " ORDER BY delivery_id FOR UPDATE",
            ids,
        ))
        taken = await self.conn.fetch(
            "SELECT a.delivery_id, a.attempt_no FROM delivery_attempts AS a"
            " JOIN unnest($1::text[], $2::integer[]) AS p(delivery_id, attempt_no)"
            " ON a.delivery_id = p.delivery_id AND a.attempt_no = p.attempt_no",
            [p[0] for p in pairs], [p[1] for p in pairs],
        )
        return rows, {(str(r["delivery_id"]), int(r["attempt_no"])) for r in taken}

    async def write_attempts(self, attempts: Sequence[AttemptRow],
                             updates: Sequence[DeliveryUpdate],
                             health: Sequence[HealthWrite]) -> None:
        """The attempt rows, each delivery's state after them and each subscription's
        health change, in one statement."""
        stored = [AttemptRow(*a[:6], pg_text(a.error_detail), pg_text(a.response_excerpt))
                  for a in attempts]
        await self.conn.execute(
            _RECORD,
            *_columns(stored, len(AttemptRow._fields)),
            *_columns(updates, len(DeliveryUpdate._fields)),
            [h.subscription_id for h in health],
            [h.change.success_ms for h in health],
            [h.change.failure_ms for h in health],
        )

    async def attempts_of(self, delivery_id: str) -> list[AttemptRow]:
        found = await self.conn.fetch(
            f"SELECT {_A_COLS} FROM delivery_attempts WHERE delivery_id = $1"  # noqa: S608
            " ORDER BY attempt_no",
            delivery_id,
        )
        return [AttemptRow(*record) for record in found]

    async def make_pending(self, delivery_id: str, now_ms: int) -> DeliveryRow | None:
        """The delivery made pending and due at ``now_ms``, whatever its status (a
        succeeded one is sent again); the row as it is then, ``None`` if there is none."""
        found = await self.conn.fetchrow(
            f"UPDATE deliveries SET status = 'pending', next_attempt_ms = $2,"  # noqa: S608
            f" updated_ms = $2 WHERE delivery_id = $1 RETURNING {_D_COLS}",
            delivery_id, now_ms,
        )
        return None if found is None else DeliveryRow(*found)

    async def recover(self, subscription_id: str, since_ms: int, until_ms: int | None,
                      now_ms: int) -> int:
        where = Where(2)
        where.add("subscription_id = {}", subscription_id)
        # Failed ones, and pending ones that failed and wait for their next retry.
        where.add("(status = 'failed' OR (status = 'pending' AND attempts > 0"
                  " AND next_attempt_ms > $1))")
        where.add("created_ms >= {}", since_ms)
        if until_ms is not None:
            where.add("created_ms < {}", until_ms)
        status = await self.conn.execute(
            "UPDATE deliveries SET status = 'pending', next_attempt_ms = $1,"  # noqa: S608
            f" updated_ms = $1 WHERE {where.sql}",
            now_ms, *where.params,
        )
        return _count(status)

    async def forget_subscription(self, subscription_id: str, error_class: str,
                                  now_ms: int) -> int:
        """Delete the cursor and health row; mark pending deliveries failed. Returns how
        many deliveries were marked."""
        await self.conn.execute(
            "DELETE FROM delivery_cursors WHERE subscription_id = $1", subscription_id)
        await self.conn.execute(
            "DELETE FROM subscription_health WHERE subscription_id = $1", subscription_id)
        status = await self.conn.execute(
            "UPDATE deliveries SET status = 'failed', next_attempt_ms = NULL,"
            " last_error_class = $2, updated_ms = $3"
            " WHERE subscription_id = $1 AND status = 'pending'",
            subscription_id, error_class, now_ms,
        )
        return _count(status)

    async def prune_chunk(self, before_ms: int, limit: int) -> int:
        """Delete up to ``limit`` finished deliveries last updated before ``before_ms``
        (their attempts go by cascade). Returns how many."""
        status = await self.conn.execute(
            "DELETE FROM deliveries WHERE delivery_id IN (SELECT delivery_id FROM deliveries"
            " WHERE status <> 'pending' AND updated_ms < $1 LIMIT $2)",
            before_ms, limit,
        )
        return _count(status)

    # -- health ------------------------------------------------------------------------

    async def health(self, subscription_id: str) -> Health:
        found = await self.conn.fetchrow(
            "SELECT last_success_ms, failing_since_ms FROM subscription_health"
            " WHERE subscription_id = $1",
            subscription_id,
        )
        return Health(None, None) if found is None else Health(*found)

    # -- queue reads -------------------------------------------------------------------

    async def due_of(self, now_ms: int, limit: int, subscriptions: Sequence[str]
                     ) -> list[DeliveryRow]:
        return _deliveries(await self.conn.fetch(
            f"SELECT {_D_COLS} FROM deliveries"  # noqa: S608
            " WHERE status = 'pending' AND next_attempt_ms <= $1"
            " AND subscription_id = ANY($2::text[])"
            " ORDER BY next_attempt_ms, event_seq, delivery_id LIMIT $3",
            now_ms, list(subscriptions), limit,
        ))

    async def next_due_after(self, now_ms: int) -> int | None:
        found = await self.conn.fetchval(
            "SELECT min(next_attempt_ms) FROM deliveries"
            " WHERE status = 'pending' AND next_attempt_ms > $1",
            now_ms,
        )
        return None if found is None else int(found)

    async def oldest_pending_of(self, subscriptions: Sequence[str]) -> list[DeliveryRow]:
        """Each subscription's pending delivery with the lowest seq (those with one)."""
        return _deliveries(await self.conn.fetch(
            f"SELECT {_D_COLS} FROM unnest($1::text[]) AS s(id)"  # noqa: S608
            " CROSS JOIN LATERAL (SELECT * FROM deliveries"
            " WHERE subscription_id = s.id AND status = 'pending'"
            " ORDER BY event_seq, delivery_id LIMIT 1) AS d",
            list(subscriptions),
        ))

    async def pending_count(self, subscription_id: str | None) -> int:
        if subscription_id is None:
            found = await self.conn.fetchval(
                "SELECT count(*) FROM deliveries WHERE status = 'pending'")
        else:
            found = await self.conn.fetchval(
                "SELECT count(*) FROM deliveries WHERE subscription_id = $1"
                " AND status = 'pending'", subscription_id)
        return int(found)

    async def oldest_pending_created_ms(self) -> int | None:
        found = await self.conn.fetchval(
            "SELECT min(created_ms) FROM deliveries WHERE status = 'pending'")
        return None if found is None else int(found)

    async def resume_seq(self) -> int | None:
        """The lowest of any pending delivery's seq and every cursor + 1."""
        found = await self.conn.fetchval(
            "SELECT least((SELECT min(event_seq) FROM deliveries WHERE status = 'pending'),"
            " (SELECT min(seq) + 1 FROM delivery_cursors))")
        return None if found is None else int(found)

    # -- listing -----------------------------------------------------------------------

    async def list_deliveries(
        self, *, subscription_id: str | None, status: str | None, since_ms: int | None,
        until_ms: int | None, after: str | None, limit: int,
    ) -> list[DeliveryRow]:
        """Matching rows in ``delivery_id`` order (creation order), after ``after``;
        ``since_ms`` inclusive and ``until_ms`` exclusive on ``created_ms``."""
        where = Where()
        if subscription_id is not None:
            where.add("subscription_id = {}", subscription_id)
        if status is not None:
            where.add("status = {}", status)
        if since_ms is not None:
            where.add("created_ms >= {}", since_ms)
        if until_ms is not None:
            where.add("created_ms < {}", until_ms)
        if after is not None:
            where.add("delivery_id > {}", after)
        return _deliveries(await self.conn.fetch(
            f"SELECT {_D_COLS} FROM deliveries WHERE {where.sql}"  # noqa: S608
            f" ORDER BY delivery_id LIMIT {where.next()}",
            *where.params, limit,
        ))

    # -- figures (call inside one snapshot) --------------------------------------------

    async def status_counts(self, subscription_id: str | None, since_ms: int | None
                            ) -> dict[str, int]:
        where = _deliveries_where(subscription_id, since_ms)
        found = await self.conn.fetch(
            f"SELECT status, count(*) FROM deliveries WHERE {where.sql}"  # noqa: S608
            " GROUP BY status",
            *where.params,
        )
        return {str(r[0]): int(r[1]) for r in found}

    async def attempt_counts(self, subscription_id: str | None, since_ms: int | None
                             ) -> tuple[int, int]:
        """``(attempts, attempts without an error class)`` started at or after
        ``since_ms``."""
        source, where = _attempts_where(subscription_id, since_ms)
        found = await self.conn.fetchrow(
            "SELECT count(*) AS attempts,"  # noqa: S608
            " count(*) FILTER (WHERE a.error_class IS NULL) AS clean"
            f" FROM {source} WHERE {where.sql}",
            *where.params,
        )
        assert found is not None
        return int(found["attempts"]), int(found["clean"])

    async def recent_durations(self, subscription_id: str | None, since_ms: int | None,
                               limit: int) -> list[int]:
        source, where = _attempts_where(subscription_id, since_ms)
        found = await self.conn.fetch(
            f"SELECT a.duration_ms FROM {source} WHERE {where.sql}"  # noqa: S608
            f" ORDER BY a.started_ms DESC LIMIT {where.next()}",
            *where.params, limit,
        )
        return [int(r[0]) for r in found]

    async def failures_by_class(self, subscription_id: str | None, since_ms: int | None
                                ) -> dict[str, int]:
        source, where = _attempts_where(subscription_id, since_ms)
        where.add("a.error_class IS NOT NULL")
        found = await self.conn.fetch(
            f"SELECT a.error_class, count(*) FROM {source} WHERE {where.sql}"  # noqa: S608
            ' GROUP BY a.error_class ORDER BY count(*) DESC, a.error_class',
            *where.params,
        )
        return {str(r[0]): int(r[1]) for r in found}

    async def busiest(self, subscription_id: str | None, since_ms: int | None, limit: int
                      ) -> list[tuple[str, int]]:
        where = _deliveries_where(subscription_id, since_ms)
        found = await self.conn.fetch(
            f"SELECT subscription_id, count(*) AS n FROM deliveries WHERE {where.sql}"  # noqa: S608
            f' GROUP BY subscription_id ORDER BY n DESC, subscription_id'
            f" LIMIT {where.next()}",
            *where.params, limit,
        )
        return [(str(r[0]), int(r[1])) for r in found]


def _count(status: str) -> int:
    """The row count of a command tag (``UPDATE 3``, ``DELETE 0``)."""
    return int(status.rsplit(" ", 1)[-1])


def _deliveries_where(subscription_id: str | None, since_ms: int | None) -> Where:
    where = Where()
    if subscription_id is not None:
        where.add("subscription_id = {}", subscription_id)
    if since_ms is not None:
        where.add("created_ms >= {}", since_ms)
    return where


def _attempts_where(subscription_id: str | None, since_ms: int | None) -> tuple[str, Where]:
    """The FROM clause (attempts ``a``, joined to deliveries ``d`` only when filtering by
    subscription) and the conditions."""
    where = Where()
    source = "delivery_attempts a"
    if subscription_id is not None:
        source = "delivery_attempts a JOIN deliveries d ON d.delivery_id = a.delivery_id"
        where.add("d.subscription_id = {}", subscription_id)
    if since_ms is not None:
        where.add("a.started_ms >= {}", since_ms)
    return source, where
