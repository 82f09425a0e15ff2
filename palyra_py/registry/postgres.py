"""PostgreSQL storage of the registry (cluster mode): the schema (store ``registry`` in
``palyra_schema``) and the SQL, over one asyncpg connection.

``palyra_registry`` is one row: the TOML document as text, its version, who wrote it and
when. ``palyra_registry_history`` keeps the last ``HISTORY_KEPT`` versions (text, action,
who, when), written in the same transaction as the row. Every write also sends
``NOTIFY palyra_registry`` with the new version, so that nodes listening learn of it at
once; their poll of the version is the backstop for a missed notice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from palyra_py.registry.engines import HISTORY_KEPT, DbRegistry, RegistryRow, Rewrite
from palyra_py.registry.source import RegistryUnavailable
from palyra_py.storage.postgres import (
    DRIVER_ERRORS,
    Migration,
    connect,
    describe_pg_error,
    is_connection_lost,
    migrate,
)

__all__ = ["CHANNEL", "MIGRATIONS", "STORE", "PostgresRegistry", "postgres_registry"]

STORE = "registry"
CHANNEL = "palyra_registry"
"""The NOTIFY channel every registry write signals (payload: the new version)."""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "the registry document, its version and its history", (
        """CREATE TABLE palyra_registry (
            id integer PRIMARY KEY CHECK (id = 1),
            document text NOT NULL,
            version bigint NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now(),
            updated_by text NOT NULL
        )""",
        """CREATE TABLE palyra_registry_history (
            version bigint PRIMARY KEY,
            document text NOT NULL,
            action text NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now(),
            updated_by text NOT NULL
        )""",
    )),
)

_T = TypeVar("_T")


def _row(record: asyncpg.Record) -> RegistryRow:
    return RegistryRow(str(record["document"]), int(record["version"]),
                       record["updated_at"], str(record["updated_by"]))


class PostgresRegistry:
    """The ``RegistryBackend`` on PostgreSQL. One connection, opened on first use and
    again after it is lost; calls take turns on it. With ``on_notify``, the connection
    listens on ``CHANNEL`` and calls it (on the event loop) for every write anywhere."""

    def __init__(self, dsn: Callable[[], str], *,
                 on_notify: Callable[[], None] | None = None) -> None:
        self._dsn = dsn
        self._on_notify = on_notify
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._migrated = False

    def _notified(self, *_: Any) -> None:
        if self._on_notify is not None:
            self._on_notify()

    async def _call(self, action: str, fn: Callable[[asyncpg.Connection], Awaitable[_T]], *,
                    read_only: bool = False) -> _T:
        """``fn`` on the connection. A read that finds the connection cut (a restarted
        pooler, ``pg_terminate_backend``) is tried once more on a new one; a write is
        not (its commit may have happened)."""
        async with self._lock:
            for attempt in (1, 2):
                reused = self._conn is not None and not self._conn.is_closed()
                try:
                    if self._conn is None or self._conn.is_closed():
                        self._conn = await connect(self._dsn())
                        if self._on_notify is not None:
                            await self._conn.add_listener(CHANNEL, self._notified)
                    if not self._migrated:
                        await migrate(self._conn, STORE, MIGRATIONS)
                        self._migrated = True
                    return await fn(self._conn)
                except DRIVER_ERRORS as exc:
                    lost = is_connection_lost(exc)
                    if lost and self._conn is not None:
                        conn, self._conn = self._conn, None
                        conn.terminate()
                    if not (lost and reused and read_only and attempt == 1):
                        raise RegistryUnavailable(
                            describe_pg_error(exc, "the registry", action)) from None
            raise AssertionError("unreachable")  # pragma: no cover

    async def version(self) -> int | None:
        async def read(conn: asyncpg.Connection) -> int | None:
            value = await conn.fetchval("SELECT version FROM palyra_registry WHERE id = 1")
            return None if value is None else int(value)
        return await self._call("poll", read, read_only=True)

    async def read(self) -> RegistryRow | None:
        async def read(conn: asyncpg.Connection) -> RegistryRow | None:
            record = await conn.fetchrow(
                "SELECT document, version, updated_at, updated_by FROM palyra_registry"
                " WHERE id = 1")
            return None if record is None else _row(record)
        return await self._call("read", read, read_only=True)

    async def seed(self, text: str, *, by: str) -> bool:
        async def write(conn: asyncpg.Connection) -> bool:
            async with conn.transaction():
                record = await conn.fetchrow(
                    "INSERT INTO palyra_registry (id, document, version, updated_by)"
                    " VALUES (1, $1, 1, $2) ON CONFLICT (id) DO NOTHING"
                    " RETURNING document, version, updated_at, updated_by",
                    text, by)
                if record is None:
                    return False
                await self._record(conn, _row(record), "seed")
                return True
        return await self._call("seed", write)

    async def write(self, text: str, *, expected_version: int, by: str,
                    action: str) -> RegistryRow | None:
        async def write(conn: asyncpg.Connection) -> RegistryRow | None:
            async with conn.transaction():
                record = await conn.fetchrow(
                    "UPDATE palyra_registry SET document = $1, version = version + 1,"
                    " updated_at = now(), updated_by = $3 WHERE id = 1 AND version = $2"
                    " RETURNING document, version, updated_at, updated_by",
                    text, expected_version, by)
                if record is None:
                    return None
                row = _row(record)
                await self._record(conn, row, action)
                return row
        return await self._call("write", write)

    async def write_locked(self, rewrite: Rewrite, *, by: str, action: str) -> RegistryRow:
        async def write(conn: asyncpg.Connection) -> RegistryRow:
            async with conn.transaction():
                record = await conn.fetchrow(
                    "SELECT document, version, updated_at, updated_by FROM palyra_registry"
                    " WHERE id = 1 FOR UPDATE")
                if record is None:
                    raise RegistryUnavailable("the database holds no registry")
                current = _row(record)
                text = await rewrite(current)
                if text is None:
                    return current
                record = await conn.fetchrow(
                    "UPDATE palyra_registry SET document = $1, version = version + 1,"
                    " updated_at = now(), updated_by = $2 WHERE id = 1"
                    " RETURNING document, version, updated_at, updated_by",
                    text, by)
                assert record is not None, "the row was held since the read"
                row = _row(record)
                await self._record(conn, row, action)
                return row
        return await self._call("write", write)

    @staticmethod
    async def _record(conn: asyncpg.Connection, row: RegistryRow, action: str) -> None:
        """The history row of a write, the history trimmed, and the notice (all sent at
        the commit)."""
        await conn.execute(
            "INSERT INTO palyra_registry_history (version, document, action, updated_at,"
            " updated_by) VALUES ($1, $2, $3, $4, $5)",
            row.version, row.text, action, row.updated_at, row.updated_by)
        await conn.execute("DELETE FROM palyra_registry_history WHERE version <= $1",
                           row.version - HISTORY_KEPT)
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(row.version))

    async def history(self) -> list[tuple[int, str, str]]:
        """``(version, action, updated_by)`` of the versions kept, newest first."""
        async def read(conn: asyncpg.Connection) -> list[tuple[int, str, str]]:
            rows = await conn.fetch(
                "SELECT version, action, updated_by FROM palyra_registry_history"
                " ORDER BY version DESC")
            return [(int(r["version"]), str(r["action"]), str(r["updated_by"])) for r in rows]
        return await self._call("read", read, read_only=True)

    async def close(self) -> None:
        """Close the connection. A call still on it (a stop while a read waits on a
        server that does not answer) is not waited for: the connection is cut, and that
        call fails as unavailable."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._lock.locked():
            conn.terminate()
            return
        async with self._lock:
            try:
                await asyncio.wait_for(conn.close(), 5)
            except DRIVER_ERRORS:
                conn.terminate()


def postgres_registry(dsn: Callable[[], str], path: Path, *,
                      on_notify: Callable[[], None] | None = None) -> DbRegistry:
    """The registry in the PostgreSQL that ``dsn()`` names; nothing is opened yet."""
    return DbRegistry(PostgresRegistry(dsn, on_notify=on_notify), path)
