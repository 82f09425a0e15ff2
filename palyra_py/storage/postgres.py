"""Plumbing shared by the PostgreSQL engines of the stores (no store logic): connections,
the errors of the driver put into words that never hold a value, and versioned schema
migrations run under an advisory lock, so that several nodes starting at once migrate
once.

Every store keeps its own numbered migrations (``Migration``); ``migrate`` applies those
missing, in order, in one transaction, and records them in ``palyra_schema``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import asyncpg

__all__ = [
    "CONNECT_TIMEOUT_S",
    "DRIVER_ERRORS",
    "MIGRATION_LOCK",
    "Migration",
    "applied_versions",
    "connect",
    "describe_pg_error",
    "is_connection_lost",
    "migrate",
]

CONNECT_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 30.0

MIGRATION_LOCK = 0x70616C797261_01
"""The advisory lock every node takes around its migrations ("palyra" and 1)."""

DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
"""What a call into the driver may raise for a storage failure (ConnectionError is an
OSError). ``InternalClientError`` is what a pooled connection raises when the server's
goodbye (``pg_terminate_backend``, a restart) reached it but the close did not yet: "cannot
switch to state ...; another operation is in progress"."""


class Migration(NamedTuple):
    """One step of a store's schema: applied once, in ``version`` order."""

    version: int
    name: str
    statements: tuple[str, ...]


async def connect(dsn: str, *, timeout_s: float = CONNECT_TIMEOUT_S,
                  application_name: str = "palyra") -> asyncpg.Connection:
    """A connection with bounded waits: ``timeout_s`` to connect, ``COMMAND_TIMEOUT_S`` per
    statement (a server that stops answering fails the call instead of hanging it).
    ``application_name`` is what ``pg_stat_activity`` shows for it."""
    conn: asyncpg.Connection = await asyncpg.connect(
        dsn, timeout=timeout_s, command_timeout=COMMAND_TIMEOUT_S,
        server_settings={"application_name": application_name},
    )
    return conn


def is_connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` means the connection is gone (reconnect before the next call)."""
    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError
                  | asyncpg.InternalClientError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        # Class 08: connection exception; 57P0x: the server is shutting down or cut us off.
        state = str(getattr(exc, "sqlstate", "") or "")
        return state.startswith("08") or state.startswith("57P")
    return False


def describe_pg_error(exc: BaseException, what: str, action: str) -> str:
    """A short reason: the error's class and SQLSTATE, never its message or detail (which
    may quote a row's values or the connection string)."""
    state = getattr(exc, "sqlstate", None)
    code = f", SQLSTATE {state}" if state else ""
    if isinstance(exc, TimeoutError):
        kind = "timed out"
    elif isinstance(exc, OSError | asyncpg.InterfaceError) or is_connection_lost(exc):
        kind = "PostgreSQL unreachable or the connection was lost"
    else:
        kind = "PostgreSQL refused it"
    return f"{what} {action} failed: {kind} ({type(exc).__name__}{code})"


async def applied_versions(conn: asyncpg.Connection, store: str) -> list[int]:
    """The migrations of ``store`` already applied (none before the first)."""
    exists = await conn.fetchval("SELECT to_regclass('palyra_schema') IS NOT NULL")
    if not exists:
        return []
    rows = await conn.fetch(
        "SELECT version FROM palyra_schema WHERE store = $1 ORDER BY version", store
    )
    return [int(row["version"]) for row in rows]


async def migrate(conn: asyncpg.Connection, store: str, migrations: Sequence[Migration]
                  ) -> list[int]:
    """Apply the migrations of ``store`` not yet applied, in one transaction under
    ``MIGRATION_LOCK`` (another node migrating at the same time waits, then finds them
    applied); return the versions applied now. A database whose schema is newer than this
    code knows is refused (``RuntimeError``)."""
    known = sorted(m.version for m in migrations)
    if known != list(range(1, len(known) + 1)):
        raise ValueError(f"{store} migrations must be numbered 1, 2, ...: {known}")
    applied_now: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS palyra_schema ("
            " store text NOT NULL, version integer NOT NULL, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (store, version))"
        )
        done = set(await applied_versions(conn, store))
        newer = sorted(v for v in done if v > len(known))
        if newer:
            raise RuntimeError(
                f"the {store} schema in PostgreSQL is at version {max(newer)}, newer than this"
                f" palyra knows ({len(known)}): upgrade palyra on this node")
        for migration in sorted(migrations, key=lambda m: m.version):
            if migration.version in done:
                continue
            for statement in migration.statements:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO palyra_schema (store, version, name) VALUES ($1, $2, $3)",
                store, migration.version, migration.name,
            )
            applied_now.append(migration.version)
    return applied_now
