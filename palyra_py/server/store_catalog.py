"""Every store of an installation in one place: their PostgreSQL schemas (``SCHEMAS``, which
``palyra storage migrate`` applies and shows), their copiers (``copiers``, in the order
``palyra storage copy`` runs them), and the copy itself (``copy_installation``): which
target it accepts, and the check of the chain on the copy at the end.

A target is accepted when it holds no palyra data, or when it holds a copy of this same
installation that began from the state it is in now (an interrupted run: it resumes). A
copy of another installation, or of this one before its daemon ran again, is refused
with nothing written.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from palyra_py.cluster import postgres as cluster_pg
from palyra_py.delivery import postgres as delivery_pg
from palyra_py.delivery.postgres_import import DeliveryImport
from palyra_py.delivery.sqlite_export import DeliveryExport
from palyra_py.delivery.store import DELIVERIES_FILE
from palyra_py.delivery.transfer import DeliveryCopier
from palyra_py.journal import postgres as journal_pg
from palyra_py.journal.backend import ChainWalk
from palyra_py.journal.postgres_import import JournalImport
from palyra_py.journal.sqlite_export import JournalExport
from palyra_py.journal.transfer import BATCH_ROWS, JournalCopier, source_identity
from palyra_py.paths import JOURNAL_FILE, REGISTRY_FILE
from palyra_py.registry import postgres as registry_pg
from palyra_py.registry.secret_refs import refs_of_kind
from palyra_py.registry.transfer import RegistryCopier
from palyra_py.secrets import postgres as secrets_pg
from palyra_py.secrets.sealing import Keys
from palyra_py.secrets.transfer import SecretsCopier
from palyra_py.storage.copying import Copier, CopyDone, CopyFailed, CopyRefused, CopyUnreachable
from palyra_py.storage.postgres import (
    COPY_LOCK,
    DRIVER_ERRORS,
    Migration,
    applied_versions,
    claim_copy,
    connect,
    copy_error,
    finish_copy,
    migrate,
    read_copy_marker,
    tables_with_rows,
)

__all__ = ["SCHEMAS", "CopyReport", "StoreSchema", "copiers", "copy_installation",
           "migrate_all", "schema_status"]


class StoreSchema(NamedTuple):
    store: str
    migrations: tuple[Migration, ...]
    data_tables: tuple[str, ...]
    """The tables whose rows are an installation's data (a target holding any is not
    empty); one-row bookkeeping tables (a head, a version counter) are not."""


SCHEMAS: tuple[StoreSchema, ...] = (
    StoreSchema(journal_pg.STORE, journal_pg.MIGRATIONS,
                ("journal_events", "journal_checkpoint", "replay_keys")),
    StoreSchema(delivery_pg.STORE, delivery_pg.MIGRATIONS,
                ("deliveries", "delivery_cursors", "subscription_health")),
    StoreSchema(secrets_pg.STORE, secrets_pg.MIGRATIONS, ("palyra_secrets",)),
    StoreSchema(registry_pg.STORE, registry_pg.MIGRATIONS,
                ("palyra_registry", "palyra_registry_history")),
    # Nodes and leases are a running cluster's, never copied; a database where nodes
    # have run is not empty.
    StoreSchema(cluster_pg.STORE, cluster_pg.MIGRATIONS, ("cluster_nodes", "cluster_leases")),
)


class SchemaStatus(NamedTuple):
    store: str
    known: int
    """The newest version this palyra has."""
    applied: tuple[int, ...]

    @property
    def pending(self) -> tuple[int, ...]:
        return tuple(v for v in range(1, self.known + 1) if v not in self.applied)


async def schema_status(dsn: str) -> list[SchemaStatus]:
    """Each store's versions known here and applied in the database (nothing written)."""
    conn = await connect(dsn)
    try:
        return [SchemaStatus(s.store, len(s.migrations),
                             tuple(await applied_versions(conn, s.store))) for s in SCHEMAS]
    finally:
        await conn.close()


async def migrate_all(dsn: str) -> dict[str, list[int]]:
    """Apply every store's missing migrations (each store in its transaction, under the
    migration lock); the versions applied now, per store."""
    conn = await connect(dsn)
    try:
        return {s.store: await migrate(conn, s.store, s.migrations) for s in SCHEMAS}
    finally:
        await conn.close()


class Progress(Protocol):
    def __call__(self, store: str, unit: str, total: int) -> Callable[[int], None]:
        """Start counting ``store``; the function returned advances its count."""
        ...


class CopyReport(NamedTuple):
    source: str
    """The installation copied (host and state dir)."""
    resumed: bool
    """Whether an interrupted copy was resumed."""
    stores: tuple[CopyDone, ...]
    chain: ChainWalk
    """The target's chain, walked after the copy (``first_broken_seq`` None: it verifies)."""


def copiers(state_dir: Path, conn: Any, *, dsn: str, keys: Keys | None,
            resolve: Callable[[str], str], now_ms: Callable[[], int],
            batch_rows: int = BATCH_ROWS) -> list[Copier]:
    """The stores' copiers over a target connection (migrated), in the order they run:
    the journal, the deliveries (their seqs name its events), the secrets, the registry
    (its references rewritten to the secrets' new ones). Nodes and leases are not
    copied: a cluster makes its own."""
    from palyra_py.registry.postgres import PostgresRegistry
    from palyra_py.secrets.postgres import PostgresSecrets

    registry = state_dir / REGISTRY_FILE
    text = registry.read_text(encoding="utf-8-sig") if registry.exists() else ""
    deliveries = state_dir / DELIVERIES_FILE
    secrets = SecretsCopier(refs_of_kind(text, "keyring") if text else [], resolve, keys,
                            PostgresSecrets(lambda: dsn))
    return [
        JournalCopier(JournalExport(state_dir / JOURNAL_FILE),
                      JournalImport(conn),
                      now_ms=now_ms, batch_rows=batch_rows),
        DeliveryCopier(DeliveryExport(deliveries) if deliveries.exists() else None,
                       DeliveryImport(conn),
                       batch=max(1, batch_rows // 2)),
        secrets,
        RegistryCopier(registry, lambda: secrets.moved, PostgresRegistry(lambda: dsn),
                       by=f"storage copy from {socket.gethostname()}:{state_dir}"),
    ]


async def copy_installation(state_dir: Path, dsn: str, *, keys: Keys | None,
                            resolve: Callable[[str], str], now_ms: Callable[[], int],
                            progress: Progress, batch_rows: int = BATCH_ROWS,
                            on_target: Callable[[bool], None] | None = None) -> CopyReport:
    """Copy the installation in ``state_dir`` (its daemon stopped: the caller holds the
    state dir's lock) into the database ``dsn``. ``on_target(resumed)`` once the target is
    accepted. Raises ``CopyRefused`` (nothing written), ``CopyUnreachable`` (what was
    committed stays: run again) or ``CopyFailed``."""
    journal_path = state_dir / JOURNAL_FILE
    if not journal_path.exists():
        raise CopyFailed(f"{journal_path} does not exist: is {state_dir} a palyra state dir?")
    source = JournalExport(journal_path)
    try:
        identity = source_identity(await source.first(), await source.checkpoint())
        head = await source.head()
    finally:
        source.close()
    source_head = f"{head.seq}:{head.hash}"
    label = f"{socket.gethostname()}:{state_dir}"
    try:
        conn = await connect(dsn)
    except DRIVER_ERRORS as exc:
        raise CopyUnreachable(_unreachable(exc)) from None
    except ValueError as exc:  # an option of the URI the driver refuses: never quoted
        raise CopyFailed(f"the target URI is not usable ({type(exc).__name__})") from None
    try:
        try:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", COPY_LOCK):
                raise CopyRefused("another palyra storage copy is running into this database")
            resumed = await _accept_target(conn, identity, source_head, label)
            if not resumed:
                await claim_copy(conn, identity, source_head, label)
            for schema in SCHEMAS:
                await migrate(conn, schema.store, schema.migrations)
        except DRIVER_ERRORS as exc:
            raise copy_error(exc, "the target database", "preparation") from None
        if on_target is not None:
            on_target(resumed)
        done: list[CopyDone] = []
        runs = copiers(state_dir, conn, dsn=dsn, keys=keys, resolve=resolve, now_ms=now_ms,
                       batch_rows=batch_rows)
        try:
            for copier in runs:
                advance = progress(copier.store, copier.unit, await copier.total())
                done.append(await copier.copy(advance))
        finally:
            await _close_all(runs)
        try:
            chain = await journal_pg.JournalSql(conn).walk_chain()
            await finish_copy(conn)
        except DRIVER_ERRORS as exc:
            raise copy_error(exc, "the copied journal", "check") from None
    finally:
        await _close(conn)
    return CopyReport(label, resumed, tuple(done), chain)


async def _accept_target(conn: Any, identity: str, source_head: str, label: str) -> bool:
    """Whether the target resumes an earlier copy of this installation (``False``: it is
    empty); ``CopyRefused`` for anything else."""
    marker = await read_copy_marker(conn)
    tables = [t for s in SCHEMAS for t in s.data_tables]
    holding = await tables_with_rows(conn, tables)
    if not holding:  # empty, whatever a copy that wrote nothing left behind
        return False
    if marker is None:
        raise CopyRefused(
            f"the target database is not empty (it holds rows in {', '.join(holding)})"
            " and is not a copy of this installation: copy into a new, empty database")
    if marker.source != identity:
        raise CopyRefused(
            f"the target database holds a copy of another installation ({marker.label}):"
            " copy into a new, empty database")
    if marker.source_head != source_head:
        raise CopyRefused(
            "the target database holds an earlier copy of this installation, made before"
            f" its daemon ran again (it started {marker.started_at:%Y-%m-%d %H:%M:%S %Z}):"
            " drop and create the database again, then copy")
    return True


async def _close_all(runs: list[Copier]) -> None:
    for copier in runs:
        try:
            await copier.close()
        except DRIVER_ERRORS:
            pass


async def _close(conn: Any) -> None:
    try:
        await conn.close()
    except DRIVER_ERRORS:
        conn.terminate()


def _unreachable(exc: BaseException) -> str:
    from palyra_py.storage.postgres import describe_pg_error

    return describe_pg_error(exc, "the target database", "connection")


class SqliteStatus(NamedTuple):
    store: str
    file: str
    version: int | None
    """The file's schema version (``None``: no file yet)."""
    known: int


async def sqlite_status(state_dir: Path) -> list[SqliteStatus]:
    """The embedded stores' files and their schema versions (nothing written)."""
    from palyra_py.delivery.sqlite import SCHEMA_VERSION as DELIVERY_VERSION
    from palyra_py.journal.sqlite import SCHEMA_VERSION as JOURNAL_VERSION

    found: list[SqliteStatus] = []
    for store, name, known, export in (
        ("journal", JOURNAL_FILE, JOURNAL_VERSION, JournalExport),
        ("deliveries", DELIVERIES_FILE, DELIVERY_VERSION, DeliveryExport),
    ):
        source = export(state_dir / name)
        try:
            found.append(SqliteStatus(store, str(state_dir / name),
                                      await source.schema_version(), known))
        finally:
            source.close()
    return found
