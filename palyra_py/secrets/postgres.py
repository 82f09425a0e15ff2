"""PostgreSQL storage of the ``db:`` secrets: the schema (store ``secrets`` in
``palyra_schema``) and the SQL, over one asyncpg connection.

``palyra_secrets`` holds each secret sealed (``secrets.sealing``): its name, the key id,
the nonce and the ciphertext, never the plaintext or the key. ``palyra_secrets_version``
is one row whose counter every write moves in the same transaction, so that each node's
poll (``secrets.shared``) is one tiny query while nothing changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from palyra_py.secrets.sealing import Sealed
from palyra_py.secrets.shared import DbSecrets, DbSecretsUnavailable, StoredSecret, load_keys
from palyra_py.secrets.store import SecretStore
from palyra_py.settings import Settings
from palyra_py.storage.postgres import (
    DRIVER_ERRORS,
    Migration,
    connect,
    describe_pg_error,
    is_connection_lost,
    migrate,
)

__all__ = ["MIGRATIONS", "STORE", "PostgresSecrets", "start_db_secrets"]

STORE = "secrets"

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "sealed db: secrets and their version counter", (
        """CREATE TABLE palyra_secrets (
            name text PRIMARY KEY,
            key_id text NOT NULL,
            nonce bytea NOT NULL,
            ciphertext bytea NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now()
        )""",
        """CREATE TABLE palyra_secrets_version (
            id integer PRIMARY KEY CHECK (id = 1),
            version bigint NOT NULL
        )""",
        "INSERT INTO palyra_secrets_version (id, version) VALUES (1, 0)",
    )),
)

_BUMP = "UPDATE palyra_secrets_version SET version = version + 1 WHERE id = 1"
_T = TypeVar("_T")


def _row(record: asyncpg.Record) -> StoredSecret:
    return StoredSecret(
        str(record["name"]),
        Sealed(str(record["key_id"]), bytes(record["nonce"]), bytes(record["ciphertext"])),
        record["updated_at"],
    )


class PostgresSecrets:
    """The ``DbSecretsBackend`` on PostgreSQL. One connection, opened on first use and
    again after it is lost; calls take turns on it. Driver failures are raised as
    ``DbSecretsUnavailable`` whose message holds no value."""

    def __init__(self, dsn: Callable[[], str]) -> None:
        self._dsn = dsn
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._migrated = False

    async def _call(self, action: str, fn: Callable[[asyncpg.Connection], Awaitable[_T]]) -> _T:
        async with self._lock:
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await connect(self._dsn())
                if not self._migrated:
                    await migrate(self._conn, STORE, MIGRATIONS)
                    self._migrated = True
                return await fn(self._conn)
            except DRIVER_ERRORS as exc:
                if is_connection_lost(exc) and self._conn is not None:
                    conn, self._conn = self._conn, None
                    conn.terminate()
                raise DbSecretsUnavailable(
                    describe_pg_error(exc, "the db: secrets", action)) from None

    async def version(self) -> int:
        async def read(conn: asyncpg.Connection) -> int:
            return int(await conn.fetchval(
                "SELECT version FROM palyra_secrets_version WHERE id = 1"))
        return await self._call("poll", read)

    async def load(self) -> tuple[int, list[StoredSecret]]:
        async def read(conn: asyncpg.Connection) -> tuple[int, list[StoredSecret]]:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                version = int(await conn.fetchval(
                    "SELECT version FROM palyra_secrets_version WHERE id = 1"))
                rows = await conn.fetch(
                    "SELECT name, key_id, nonce, ciphertext, updated_at FROM palyra_secrets")
            return version, [_row(r) for r in rows]
        return await self._call("read", read)

    async def put(self, name: str, sealed: Sealed) -> None:
        async def write(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                await conn.execute(_BUMP)
                await conn.execute(
                    "INSERT INTO palyra_secrets (name, key_id, nonce, ciphertext, updated_at)"
                    " VALUES ($1, $2, $3, $4, now()) ON CONFLICT (name) DO UPDATE SET"
                    " key_id = EXCLUDED.key_id, nonce = EXCLUDED.nonce,"
                    " ciphertext = EXCLUDED.ciphertext, updated_at = now()",
                    name, sealed.key_id, sealed.nonce, sealed.ciphertext)
        await self._call("write", write)

    async def replace(self, name: str, old: Sealed, new: Sealed) -> bool:
        """Put ``new`` in place of ``old`` only if the row still holds ``old`` (a
        re-encryption racing a rotation loses, and is tried again by its caller)."""
        async def write(conn: asyncpg.Connection) -> bool:
            async with conn.transaction():
                done = await conn.fetchval(
                    "UPDATE palyra_secrets SET key_id = $3, nonce = $4, ciphertext = $5,"
                    " updated_at = now() WHERE name = $1 AND nonce = $2 RETURNING true",
                    name, old.nonce, new.key_id, new.nonce, new.ciphertext)
                if done:
                    await conn.execute(_BUMP)
                return bool(done)
        return await self._call("re-encryption", write)

    async def row(self, name: str) -> StoredSecret | None:
        async def read(conn: asyncpg.Connection) -> StoredSecret | None:
            record = await conn.fetchrow(
                "SELECT name, key_id, nonce, ciphertext, updated_at FROM palyra_secrets"
                " WHERE name = $1", name)
            return None if record is None else _row(record)
        return await self._call("read", read)

    async def delete(self, name: str) -> bool:
        async def write(conn: asyncpg.Connection) -> bool:
            async with conn.transaction():
                gone = await conn.fetchval(
                    "DELETE FROM palyra_secrets WHERE name = $1 RETURNING true", name)
                if gone:
                    await conn.execute(_BUMP)
                return bool(gone)
        return await self._call("delete", write)

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                try:
                    await asyncio.wait_for(conn.close(), 5)
                except DRIVER_ERRORS:
                    conn.terminate()


async def start_db_secrets(settings: Settings, store: SecretStore, dsn: Callable[[], str],
                           on_change: Callable[[frozenset[str]], None]) -> DbSecrets | None:
    """Cluster mode (``[storage] backend = "postgres"``): mark ``store`` as shared by
    several nodes and, with ``[secrets] key_ref``, attach the ``db:`` secrets to it, loaded
    once (the caller runs ``DbSecrets.run``, the poll). ``None`` without a ``key_ref``.
    Raises ``SettingsError`` (a key that cannot be read) or ``DbSecretsUnavailable``."""
    store.cluster = True
    keys = load_keys(settings, store.resolve)
    if keys is None:
        return None
    db = DbSecrets(keys, PostgresSecrets(dsn), on_change=on_change)
    try:
        await db.start()
    except DbSecretsUnavailable:
        await db.close()
        raise
    store.db = db
    return db
