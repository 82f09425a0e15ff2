"""The SQLite side of the delivery store: ``deliveries.db`` (file mode, pragmas, schema)
and its SQL statements.

The rules (transitions, health: ``delivery.attempts``) and the records and typed rows
(``delivery.records``) are engine-independent; this module stores and fetches those rows.
The figures' queries are in ``sqlite_stats``, recording attempts in ``sqlite_attempts``,
the writer thread in ``sqlite_writer``.

A ``DeliverySql`` wraps one connection and is not thread-safe: the store gives the writer
thread one and guards the reader's with a lock. Its write methods run inside the
transaction the writer opened and do not commit.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from palyra_py.delivery.records import (
    MAX_ERROR_DETAIL_CHARS,
    MAX_RESPONSE_EXCERPT_BYTES,
    AttemptRow,
    DeliveryRow,
    DeliveryUpdate,
    Health,
    NewDeliveryRow,
)
from palyra_py.delivery.sqlite_stats import DeliveryStatsQueries, Where
from palyra_py.storage import sqlite as sqlite_files
from palyra_py.storage.sqlite import DIR_MODE as DIR_MODE  # re-exported
from palyra_py.storage.sqlite import FILE_MODE as FILE_MODE  # re-exported
from palyra_py.storage.sqlite import describe_sqlite_error, open_database, optional_int, scalar
from palyra_py.storage.sqlite import related_files as related_files  # re-exported
from palyra_py.storage.sqlite import restrict_permissions as restrict_permissions  # re-exported

SCHEMA_VERSION = 1

DELIVERY_COLUMNS: tuple[str, ...] = DeliveryRow._fields
"""Column order of every delivery row this module returns."""

ATTEMPT_COLUMNS: tuple[str, ...] = AttemptRow._fields
"""Column order of every attempt row this module returns or accepts."""

_D_COLS = ", ".join(DELIVERY_COLUMNS)
_A_COLS = ", ".join(ATTEMPT_COLUMNS)

_SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS cursors (
        subscription_id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS deliveries (
        delivery_id TEXT PRIMARY KEY,
        subscription_id TEXT NOT NULL,
        event_seq INTEGER NOT NULL,
        event_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms INTEGER,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        last_status_code INTEGER,
        last_error_class TEXT,
        UNIQUE (subscription_id, event_id)
    )""",
    "CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_attempt_ms)",
    "CREATE INDEX IF NOT EXISTS deliveries_subscription_seq"
    " ON deliveries (subscription_id, event_seq)",
    "CREATE INDEX IF NOT EXISTS deliveries_subscription_created"
    " ON deliveries (subscription_id, created_ms)",
    # Ordered subscriptions ask for their lowest pending seq on every step; without this
    # partial index that walks the subscription's whole (mostly finished) history.
    "CREATE INDEX IF NOT EXISTS deliveries_pending_seq"
    " ON deliveries (subscription_id, event_seq) WHERE status = 'pending'",
    f"""CREATE TABLE IF NOT EXISTS attempts (
        delivery_id TEXT NOT NULL REFERENCES deliveries (delivery_id) ON DELETE CASCADE,
        attempt_no INTEGER NOT NULL,
        started_ms INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        status_code INTEGER,
        error_class TEXT,
        error_detail TEXT CHECK (length(error_detail) <= {MAX_ERROR_DETAIL_CHARS}),
        response_excerpt TEXT
            CHECK (length(CAST(response_excerpt AS BLOB)) <= {MAX_RESPONSE_EXCERPT_BYTES}),
        PRIMARY KEY (delivery_id, attempt_no)
    )""",
    "CREATE INDEX IF NOT EXISTS attempts_started ON attempts (started_ms)",
    """CREATE TABLE IF NOT EXISTS subscription_health (
        subscription_id TEXT PRIMARY KEY,
        last_success_ms INTEGER,
        failing_since_ms INTEGER
    )""",
)


def describe_error(exc: BaseException, action: str) -> str:
    """A short reason for DeliveryStoreUnavailable. SQLite's messages name the failure,
    never bound values, so no payload leaks through."""
    return describe_sqlite_error(exc, "delivery store", action)


_BULK_JSON = sqlite3.sqlite_version_info >= (3, 33)  # UPDATE ... FROM


def _json_rows(rows: Sequence[tuple[Any, ...]]) -> str | None:
    """``rows`` as one JSON array for ``json_each``: a bulk write is then ONE statement,
    one trip of the writer thread out of and back into the GIL, instead of one per row
    (``executemany``), each of which can wait for a busy event loop to let go of it.
    ``None`` when a text holds NUL, which SQLite's JSON functions cut short (write those
    rows one by one). A lone surrogate raises ``UnicodeEncodeError``, as binding it would."""
    text = json.dumps(rows, ensure_ascii=False, separators=(",", ":"))
    if "\\u0000" in text or not _BULK_JSON:
        return None
    text.encode("utf-8")
    return text


def _json_columns(count: int) -> str:
    """``json_extract(value, '$[0]') AS c0, ...`` for a row of ``count`` values."""
    return ", ".join(f"json_extract(value, '$[{i}]') AS c{i}" for i in range(count))


def _in_list(column: str, values: Sequence[str]) -> tuple[str, tuple[Any, ...]]:
    """``column IN (...)`` for any number of values, as one bound parameter."""
    sql = f"{column} IN (SELECT value FROM json_each(?))"  # noqa: S608 (a constant name)
    return sql, (json.dumps(list(values)),)


def _enable_foreign_keys(conn: sqlite3.Connection) -> None:
    # Attempts go with their delivery when prune removes it.
    conn.execute("PRAGMA foreign_keys = ON")


class DeliverySql(DeliveryStatsQueries):
    """All SQL of the delivery store over one SQLite connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @classmethod
    def open(cls, path: Path, *, busy_timeout_ms: int, create: bool) -> DeliverySql:
        """Open the database; with ``create``, create it (mode 0600, directory 0700) and
        switch it to WAL with foreign keys on, else open it query-only. Every connection
        gets ``synchronous=FULL`` (a commit is fsync'd) and the busy timeout."""
        conn = open_database(
            path, busy_timeout_ms=busy_timeout_ms, create=create, label="delivery store",
            wal_label="deliveries.db", prepare=_enable_foreign_keys,
        )
        return cls(conn)

    def close(self) -> None:
        self._conn.close()

    def _deliveries(self, sql: str, params: Sequence[Any]) -> list[DeliveryRow]:
        return [*map(DeliveryRow._make, self._conn.execute(sql, params))]

    def ensure_schema(self) -> None:
        """Create the tables and indexes if missing (idempotent)."""
        sqlite_files.ensure_schema(self._conn, _SCHEMA, SCHEMA_VERSION, label="deliveries.db")

    # -- transactions ------------------------------------------------------------------

    def begin_write(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def begin_read(self) -> None:
        """Start a read transaction: every query until ``rollback`` sees one snapshot."""
        self._conn.execute("BEGIN DEFERRED")

    def commit(self) -> None:
        self._conn.execute("COMMIT")

    def rollback(self) -> None:
        """Roll back if a transaction is open; never raises."""
        sqlite_files.rollback(self._conn)

    def savepoint(self, name: str = "job") -> None:
        """``name`` is one of our own constant identifiers."""
        self._conn.execute(f"SAVEPOINT {name}")

    def release_savepoint(self, name: str = "job") -> None:
        self._conn.execute(f"RELEASE {name}")

    def rollback_to_savepoint(self, name: str = "job") -> None:
        """Undo everything since ``savepoint``; the enclosing transaction stays open."""
        self._conn.execute(f"ROLLBACK TO {name}")
        self._conn.execute(f"RELEASE {name}")

    # -- cursors -----------------------------------------------------------------------

    def cursor(self, subscription_id: str) -> int | None:
        return optional_int(scalar(self._conn.execute(
            "SELECT seq FROM cursors WHERE subscription_id = ?", (subscription_id,)
        )))

    def set_cursor(self, subscription_id: str, seq: int) -> None:
        self._conn.execute(
            "INSERT INTO cursors (subscription_id, seq) VALUES (?, ?)"
            " ON CONFLICT (subscription_id) DO UPDATE SET seq = excluded.seq",
            (subscription_id, seq),
        )

    def advance_cursor(self, subscription_id: str, seq: int) -> None:
        """Set the cursor to ``seq`` unless it is already further."""
        self._conn.execute(
            "INSERT INTO cursors (subscription_id, seq) VALUES (?, ?)"
            " ON CONFLICT (subscription_id) DO UPDATE SET seq = max(seq, excluded.seq)",
            (subscription_id, seq),
        )

    # -- deliveries --------------------------------------------------------------------

    def max_delivery_id(self) -> str | None:
        found = scalar(self._conn.execute("SELECT max(delivery_id) FROM deliveries"))
        return None if found is None else str(found)

    def insert_pending(self, rows: Sequence[NewDeliveryRow]) -> int:
        """Insert ``rows`` as pending; a row whose ``(subscription_id, event_id)`` exists is
        skipped. Returns how many were inserted."""
        if not rows:
            return 0
        columns = ("INSERT INTO deliveries (delivery_id, subscription_id, event_seq, event_id,"
                   " event_type, status, attempts, next_attempt_ms, created_ms, updated_ms)")
        doc = _json_rows(rows)
        if doc is None:
            cur = self._conn.executemany(
                f"{columns} VALUES (?1, ?2, ?3, ?4, ?5, 'pending', 0, ?6, ?7, ?7)"
                " ON CONFLICT (subscription_id, event_id) DO NOTHING",
                rows,
            )
        else:
            # "WHERE true": an upsert after INSERT ... SELECT needs it to parse.
            cur = self._conn.execute(
                f"{columns} SELECT c0, c1, c2, c3, c4, 'pending', 0, c5, c6, c6"  # noqa: S608
                f" FROM (SELECT {_json_columns(7)} FROM json_each(?)) WHERE true"
                " ON CONFLICT (subscription_id, event_id) DO NOTHING",
                (doc,),
            )
        return max(cur.rowcount, 0)

    def replay(self, rows: Sequence[NewDeliveryRow]) -> int:
        """Insert ``rows`` as pending; where the event's delivery exists, make it pending
        and due at the row's ``next_attempt_ms`` instead. The cursor is left alone.
        Returns how many rows were written (each one, inserted or updated)."""
        self._conn.executemany(
            "INSERT INTO deliveries (delivery_id, subscription_id, event_seq, event_id,"
            " event_type, status, attempts, next_attempt_ms, created_ms, updated_ms)"
            " VALUES (?1, ?2, ?3, ?4, ?5, 'pending', 0, ?6, ?7, ?7)"
            " ON CONFLICT (subscription_id, event_id) DO UPDATE SET status = 'pending',"
            " next_attempt_ms = excluded.next_attempt_ms, updated_ms = excluded.updated_ms",
            rows,
        )
        return len(rows)

    def delivery(self, delivery_id: str) -> DeliveryRow | None:
        found = self._conn.execute(
            f"SELECT {_D_COLS} FROM deliveries WHERE delivery_id = ?",  # noqa: S608
            (delivery_id,),
        ).fetchone()
        return None if found is None else DeliveryRow._make(found)

    def deliveries_by_id(self, delivery_ids: Sequence[str]) -> list[DeliveryRow]:
        """The rows of those of ``delivery_ids`` that exist, in no particular order."""
        sql, params = _in_list("delivery_id", delivery_ids)
        return self._deliveries(
            f"SELECT {_D_COLS} FROM deliveries WHERE {sql}",  # noqa: S608
            params,
        )

    def insert_attempt(self, row: AttemptRow) -> None:
        """Insert an attempt row (``ATTEMPT_COLUMNS`` order). Raises
        ``sqlite3.IntegrityError`` if that attempt number is already recorded."""
        self._conn.execute(
            f"INSERT INTO attempts ({_A_COLS})"  # noqa: S608 (constant column names)
            f" VALUES ({', '.join('?' for _ in ATTEMPT_COLUMNS)})",
            row,
        )

    def insert_attempts(self, rows: Sequence[AttemptRow]) -> None:
        """``insert_attempt`` for many rows, all or none: ``sqlite3.IntegrityError`` (or
        ``ValueError`` for text SQLite cannot take) leaves none of them inserted."""
        doc = _json_rows(rows)
        if doc is not None:  # one statement: atomic by itself
            self._conn.execute(
                f"INSERT INTO attempts ({_A_COLS})"  # noqa: S608 (constant column names)
                f" SELECT {_json_columns(len(ATTEMPT_COLUMNS))} FROM json_each(?)",
                (doc,),
            )
            return
        self.savepoint("attempts")
        try:
            self._conn.executemany(
                f"INSERT INTO attempts ({_A_COLS})"  # noqa: S608 (constant column names)
                f" VALUES ({', '.join('?' for _ in ATTEMPT_COLUMNS)})",
                rows,
            )
        except BaseException:
            self.rollback_to_savepoint("attempts")
            raise
        self.release_savepoint("attempts")

    def attempts_of(self, delivery_id: str) -> list[AttemptRow]:
        return [*map(AttemptRow._make, self._conn.execute(
            f"SELECT {_A_COLS} FROM attempts WHERE delivery_id = ?"  # noqa: S608
            " ORDER BY attempt_no",
            (delivery_id,),
        ))]

    def update_after_attempts(self, rows: Sequence[DeliveryUpdate]) -> None:
        """Set, per delivery, what its attempts made of it: one row per delivery."""
        doc = _json_rows(rows)
        if doc is None:
            self._conn.executemany(
                "UPDATE deliveries SET status = ?2, attempts = ?3, next_attempt_ms = ?4,"
                " last_status_code = ?5, last_error_class = ?6, updated_ms = ?7"
                " WHERE delivery_id = ?1",
                rows,
            )
            return
        self._conn.execute(
            "UPDATE deliveries SET status = j.c1, attempts = j.c2, next_attempt_ms = j.c3,"  # noqa: S608
            " last_status_code = j.c4, last_error_class = j.c5, updated_ms = j.c6"
            f" FROM (SELECT {_json_columns(7)} FROM json_each(?)) AS j"
            " WHERE deliveries.delivery_id = j.c0",
            (doc,),
        )

    def make_pending(self, delivery_id: str, now_ms: int) -> None:
        self._conn.execute(
            "UPDATE deliveries SET status = 'pending', next_attempt_ms = ?, updated_ms = ?"
            " WHERE delivery_id = ?",
            (now_ms, now_ms, delivery_id),
        )

    def recover(
        self, subscription_id: str, since_ms: int, until_ms: int | None, now_ms: int
    ) -> int:
        where = Where()
        where.add("subscription_id = ?", subscription_id)
        # Failed ones, and pending ones that failed and wait for their next retry.
        where.add("(status = 'failed' OR (status = 'pending' AND attempts > 0"
                  " AND next_attempt_ms > ?))", now_ms)
        where.add("created_ms >= ?", since_ms)
        if until_ms is not None:
            where.add("created_ms < ?", until_ms)
        cur = self._conn.execute(
            "UPDATE deliveries SET status = 'pending', next_attempt_ms = ?, updated_ms = ?"  # noqa: S608
            f" WHERE {where.sql}",
            (now_ms, now_ms, *where.params),
        )
        return max(cur.rowcount, 0)

    def forget_subscription(self, subscription_id: str, error_class: str, now_ms: int) -> int:
        """Delete the cursor and health row; mark pending deliveries failed. Returns how
        many deliveries were marked."""
        self._conn.execute("DELETE FROM cursors WHERE subscription_id = ?", (subscription_id,))
        self._conn.execute(
            "DELETE FROM subscription_health WHERE subscription_id = ?", (subscription_id,)
        )
        cur = self._conn.execute(
            "UPDATE deliveries SET status = 'failed', next_attempt_ms = NULL,"
            " last_error_class = ?, updated_ms = ?"
            " WHERE subscription_id = ? AND status = 'pending'",
            (error_class, now_ms, subscription_id),
        )
        return max(cur.rowcount, 0)

    def prune_chunk(self, before_ms: int, limit: int) -> int:
        """Delete up to ``limit`` finished deliveries last updated before ``before_ms``
        (their attempts go by cascade). Returns how many."""
        cur = self._conn.execute(
            "DELETE FROM deliveries WHERE delivery_id IN (SELECT delivery_id FROM deliveries"
            " WHERE status IN ('succeeded', 'failed') AND updated_ms < ? LIMIT ?)",
            (before_ms, limit),
        )
        return max(cur.rowcount, 0)

    # -- health ------------------------------------------------------------------------

    def health(self, subscription_id: str) -> Health:
        found = self._conn.execute(
            "SELECT last_success_ms, failing_since_ms FROM subscription_health"
            " WHERE subscription_id = ?",
            (subscription_id,),
        ).fetchone()
        return Health(None, None) if found is None else Health._make(found)

    def health_success(self, subscription_id: str, now_ms: int) -> None:
        self._conn.execute(
            "INSERT INTO subscription_health (subscription_id, last_success_ms,"
            " failing_since_ms) VALUES (?, ?, NULL) ON CONFLICT (subscription_id)"
            " DO UPDATE SET last_success_ms = excluded.last_success_ms, failing_since_ms = NULL",
            (subscription_id, now_ms),
        )

    def health_failure(self, subscription_id: str, now_ms: int) -> None:
        self._conn.execute(
            "INSERT INTO subscription_health (subscription_id, last_success_ms,"
            " failing_since_ms) VALUES (?, NULL, ?) ON CONFLICT (subscription_id)"
            " DO UPDATE SET failing_since_ms"
            " = coalesce(failing_since_ms, excluded.failing_since_ms)",
            (subscription_id, now_ms),
        )

    # -- queue reads -------------------------------------------------------------------

    def due(self, now_ms: int, limit: int, exclude: Sequence[str]) -> list[DeliveryRow]:
        where = Where()
        where.add("status = 'pending'")
        where.add("next_attempt_ms <= ?", now_ms)
        if exclude:
            sql, params = _in_list("subscription_id", exclude)
            where.add(f"NOT {sql}", *params)
        return self._deliveries(
            f"SELECT {_D_COLS} FROM deliveries WHERE {where.sql}"  # noqa: S608
            " ORDER BY next_attempt_ms, event_seq, delivery_id LIMIT ?",
            (*where.params, limit),
        )

    def next_due_ms(self, exclude: Sequence[str]) -> int | None:
        where = Where()
        where.add("status = 'pending'")
        where.add("next_attempt_ms IS NOT NULL")
        if exclude:
            sql, params = _in_list("subscription_id", exclude)
            where.add(f"NOT {sql}", *params)
        return optional_int(scalar(self._conn.execute(
            f"SELECT next_attempt_ms FROM deliveries WHERE {where.sql}"  # noqa: S608
            " ORDER BY next_attempt_ms LIMIT 1",
            tuple(where.params),
        )))

    def due_of(self, now_ms: int, limit: int, subscriptions: Sequence[str]
               ) -> list[DeliveryRow]:
        """Like ``due``, but only of the given subscriptions."""
        sql, params = _in_list("subscription_id", subscriptions)
        return self._deliveries(
            f"SELECT {_D_COLS} FROM deliveries"  # noqa: S608
            f" WHERE status = 'pending' AND next_attempt_ms <= ? AND {sql}"
            " ORDER BY next_attempt_ms, event_seq, delivery_id LIMIT ?",
            (now_ms, *params, limit),
        )

    def next_due_after(self, now_ms: int) -> int | None:
        """The earliest ``next_attempt_ms`` after ``now_ms`` of any pending delivery."""
        return optional_int(scalar(self._conn.execute(
            "SELECT min(next_attempt_ms) FROM deliveries"
            " WHERE status = 'pending' AND next_attempt_ms > ?",
            (now_ms,),
        )))

    def oldest_pending(self, subscription_id: str) -> DeliveryRow | None:
        found = self._conn.execute(
            f"SELECT {_D_COLS} FROM deliveries"  # noqa: S608
            " WHERE subscription_id = ? AND status = 'pending'"
            " ORDER BY event_seq, delivery_id LIMIT 1",
            (subscription_id,),
        ).fetchone()
        return None if found is None else DeliveryRow._make(found)

    def pending_count(self, subscription_id: str | None) -> int:
        if subscription_id is None:
            count = scalar(self._conn.execute(
                "SELECT count(*) FROM deliveries WHERE status = 'pending'"
            ))
        else:
            count = scalar(self._conn.execute(
                "SELECT count(*) FROM deliveries WHERE subscription_id = ?"
                " AND status = 'pending'",
                (subscription_id,),
            ))
        return int(count)

    def oldest_pending_created_ms(self) -> int | None:
        return optional_int(scalar(self._conn.execute(
            "SELECT min(created_ms) FROM deliveries WHERE status = 'pending'"
        )))

    def lowest_pending_seq(self) -> int | None:
        return optional_int(scalar(self._conn.execute(
            "SELECT min(event_seq) FROM deliveries WHERE status = 'pending'"
        )))

    def min_cursor(self) -> int | None:
        return optional_int(scalar(self._conn.execute("SELECT min(seq) FROM cursors")))

    # -- listing -----------------------------------------------------------------------

    def list_deliveries(
        self,
        *,
        subscription_id: str | None,
        status: str | None,
        since_ms: int | None,
        until_ms: int | None,
        after: str | None,
        limit: int,
    ) -> list[DeliveryRow]:
        """Matching rows in ``delivery_id`` order (creation order), after ``after``;
        ``since_ms`` inclusive and ``until_ms`` exclusive on ``created_ms``."""
        where = Where()
        if subscription_id is not None:
            where.add("subscription_id = ?", subscription_id)
        if status is not None:
            where.add("status = ?", status)
        if since_ms is not None:
            where.add("created_ms >= ?", since_ms)
        if until_ms is not None:
            where.add("created_ms < ?", until_ms)
        if after is not None:
            where.add("delivery_id > ?", after)
        return self._deliveries(
            f"SELECT {_D_COLS} FROM deliveries WHERE {where.sql}"  # noqa: S608
            " ORDER BY delivery_id LIMIT ?",
            (*where.params, limit),
        )
