"""Plumbing shared by the PostgreSQL engines of the stores (no store logic): connections,
the errors of the driver put into words that never hold a value, and versioned schema
migrations run under an advisory lock, so that several nodes starting at once migrate
once.

Every store keeps its own numbered migrations (``Migration``); ``migrate`` applies those
missing, in order, in one transaction, and records them in ``palyra_schema``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import NamedTuple
from urllib.parse import parse_qsl, urlsplit

import asyncpg

__all__ = [
    "CONNECT_TIMEOUT_S",
    "COPY_LOCK",
    "DRIVER_ERRORS",
    "IDLE_IN_TRANSACTION_S",
    "MIGRATION_LOCK",
    "CopyMarker",
    "Migration",
    "applied_versions",
    "claim_copy",
    "connect",
    "copy_error",
    "describe_pg_error",
    "finish_copy",
    "is_connection_lost",
    "migrate",
    "read_copy_marker",
    "session_settings",
    "settings_unless_in_uri",
    "tables_with_rows",
]

CONNECT_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 30.0
IDLE_IN_TRANSACTION_S = 5
"""``idle_in_transaction_session_timeout`` of every palyra session: the server ends a
session whose transaction waits that long for its next statement. palyra's transactions
send their statements back to back, so only a client that is gone (a node cut off from
the server, frozen or killed mid-transaction, whose TCP connection the server cannot see
drop) idles there; without it, its row locks (the journal's head: every node's appends)
would be held until the server's TCP keepalive gives up, by default hours later. What the
ended transaction held was not committed, and its node sends it again on a new
connection."""

MIGRATION_LOCK = 0x70616C797261_01
"""The advisory lock every node takes around its migrations ("palyra" and 1)."""
COPY_LOCK = 0x70616C797261_03
"""The advisory lock ``palyra storage copy`` holds for its whole run: one copy at a time."""

DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
"""What a call into the driver may raise for a storage failure (ConnectionError is an
OSError). ``InternalClientError`` is the driver's own protocol state gone wrong: a
connection that died in the middle of an answer, or a pooled one whose server's goodbye
(``pg_terminate_backend``, a restart) reached it before the close did ("cannot switch to
state ...; another operation is in progress")."""


class Migration(NamedTuple):
    """One step of a store's schema: applied once, in ``version`` order."""

    version: int
    name: str
    statements: tuple[str, ...]


def session_settings(extra: Mapping[str, str] | None = None, *,
                     application_name: str = "palyra") -> dict[str, str]:
    """The session settings of every palyra connection (``application_name``, what
    ``pg_stat_activity`` shows; ``IDLE_IN_TRANSACTION_S``), and ``extra``."""
    return {"application_name": application_name,
            "idle_in_transaction_session_timeout": f"{IDLE_IN_TRANSACTION_S}s",
            **(extra or {})}


def settings_unless_in_uri(dsn: str, settings: Mapping[str, str]) -> dict[str, str]:
    """``settings`` less the ones the URI's own query sets (``?plan_cache_mode=auto``: the
    URI wins)."""
    with contextlib.suppress(ValueError):
        given = {key for key, _ in parse_qsl(urlsplit(dsn).query)}
        return {k: v for k, v in settings.items() if k not in given}
    return dict(settings)


async def connect(dsn: str, *, timeout_s: float = CONNECT_TIMEOUT_S,
                  settings: Mapping[str, str] | None = None,
                  application_name: str = "palyra") -> asyncpg.Connection:
    """A connection with bounded waits: ``timeout_s`` to connect, ``COMMAND_TIMEOUT_S`` per
    statement (a server that stops answering fails the call instead of hanging it);
    ``settings``: more session settings (``session_settings``)."""
    conn: asyncpg.Connection = await asyncpg.connect(
        dsn, timeout=timeout_s, command_timeout=COMMAND_TIMEOUT_S,
        server_settings=session_settings(settings, application_name=application_name),
    )
    return conn


def is_connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` means the connection is gone (reconnect before the next call)."""
    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError
                  | asyncpg.InternalClientError):
        # The driver's protocol state is not to be trusted after an InternalClientError.
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
    elif is_connection_lost(exc):
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


# -- `palyra storage copy` bookkeeping ----------------------------------------------------

class CopyMarker(NamedTuple):
    """What ``palyra storage copy`` records in the target before it writes any row: which
    installation it copies, so that only a copy of the same one resumes there."""

    source: str
    """The installation's identity (the hash its journal's chain starts from)."""
    source_head: str
    """``seq:hash`` of the source journal's newest row when the copy began: a source
    that moved since (its daemon ran again) is not resumed, it is copied afresh."""
    label: str
    """Where it was copied from (host and state dir), for messages."""
    started_at: datetime
    finished_at: datetime | None


_COPY_TABLE = (
    "CREATE TABLE IF NOT EXISTS palyra_copy ("
    " id integer PRIMARY KEY CHECK (id = 1), source text NOT NULL,"
    " source_head text NOT NULL, label text NOT NULL,"
    " started_at timestamptz NOT NULL DEFAULT now(), finished_at timestamptz)"
)


async def read_copy_marker(conn: asyncpg.Connection) -> CopyMarker | None:
    """The copy recorded in this database, if any."""
    if not await conn.fetchval("SELECT to_regclass('palyra_copy') IS NOT NULL"):
        return None
    found = await conn.fetchrow(
        "SELECT source, source_head, label, started_at, finished_at FROM palyra_copy"
        " WHERE id = 1")
    if found is None:
        return None
    return CopyMarker(str(found["source"]), str(found["source_head"]), str(found["label"]),
                      found["started_at"], found["finished_at"])


async def claim_copy(conn: asyncpg.Connection, source: str, source_head: str, label: str
                     ) -> None:
    """Record (or record again, for a fresh start) the copy of ``source``."""
    async with conn.transaction():
        await conn.execute(_COPY_TABLE)
        await conn.execute(
            "INSERT INTO palyra_copy (id, source, source_head, label) VALUES (1, $1, $2, $3)"
            " ON CONFLICT (id) DO UPDATE SET source = EXCLUDED.source,"
            " source_head = EXCLUDED.source_head, label = EXCLUDED.label,"
            " started_at = now(), finished_at = NULL", source, source_head, label)


async def finish_copy(conn: asyncpg.Connection) -> None:
    await conn.execute("UPDATE palyra_copy SET finished_at = now() WHERE id = 1")


async def tables_with_rows(conn: asyncpg.Connection, tables: Sequence[str]) -> list[str]:
    """Those of ``tables`` that exist and hold at least one row (``tables`` are our own
    constant names)."""
    found: list[str] = []
    for table in tables:
        if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
            continue
        if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})"):  # noqa: S608
            found.append(table)
    return found


def copy_error(exc: BaseException, what: str, action: str) -> Exception:
    """A driver failure during a copy as ``CopyUnreachable`` (the connection is gone: a
    later run resumes) or ``CopyFailed``; the message holds no value."""
    from palyra_py.storage.copying import CopyFailed, CopyUnreachable

    message = describe_pg_error(exc, what, action)
    return CopyUnreachable(message) if is_connection_lost(exc) else CopyFailed(message)
