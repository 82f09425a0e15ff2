"""The registry in force on one node: :class:`RegistryKeeper` runs every edit, reload
and import through the node's ``RegistrySource`` and puts the result in force (this
process, then every worker), and in cluster mode watches the database for versions written
by other nodes.

Cluster mode (``[storage] backend = "postgres"``): the registry is the TOML document in
the database (``registry.engines``). The first node to start on an empty database stores
its ``webhooks.toml`` there; from then on no node reads its file again (the log says so
when a node's file differs). The control process listens for the NOTIFY every write sends
and polls the version every ``POLL_INTERVAL_S`` as a backstop; a version newer than the one
in force is loaded, its ``db:`` secrets are read again, and it is put in force here and on
every worker (each worker reads the document from the database when told). So an edit on
one node is in force on every node within ``IN_FORCE_BOUND_S``.

Refusals are the admin API's: 409 ``registry_conflict``, 503 ``registry_unavailable``
(``palyra_py.reasons.REGISTRY_ANSWERS``), 422 ``registry_invalid``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from palyra_py.admin.errors import ApiError
from palyra_py.admin.records import registry_error
from palyra_py.reasons import REGISTRY_ANSWERS
from palyra_py.registry.apply import check_document, registry_changes
from palyra_py.registry.document import Registry, parse_registry
from palyra_py.registry.engines import DbRegistry
from palyra_py.registry.file import RegistryFile
from palyra_py.registry.positions import RegistryError
from palyra_py.registry.source import (
    Change,
    ImportOutcome,
    RegistryConflict,
    RegistryDocument,
    RegistrySource,
    RegistryUnavailable,
    Snapshot,
)

__all__ = ["IN_FORCE_BOUND_S", "POLL_INTERVAL_S", "RegistryKeeper", "api_error", "node_name",
           "open_db_registry"]

log = structlog.get_logger("palyra.registry")

POLL_INTERVAL_S = 0.25
"""How often the control process asks the database for the registry's version (the
backstop of NOTIFY)."""
IN_FORCE_BOUND_S = 1.0
"""An edit on one node is in force on every node within this."""

NOT_THE_SOURCE = (
    "in cluster mode the registry is the document in the database; webhooks.toml on disk"
    " is not read (palyra registry export > webhooks.toml writes it, palyra registry"
    " import webhooks.toml stores one)"
)


def api_error(exc: RegistryUnavailable | RegistryConflict) -> ApiError:
    """A source's refusal as the admin API answers it."""
    code = "registry_conflict" if isinstance(exc, RegistryConflict) else "registry_unavailable"
    return ApiError(REGISTRY_ANSWERS[code].status, code, str(exc))


class RegistryKeeper:
    """The node's registry: its source, the version in force (``None`` for the file) and
    the watch of the database. ``activate`` puts a registry in force in this process;
    ``refresh_secrets`` reads the ``db:`` secrets again (a remote change may name new
    ones); ``everywhere`` returns once every worker has it. Callers hold ``lock`` around
    ``edit``, ``reload`` and ``refresh``; ``import_document`` and ``watch`` take it
    themselves."""

    def __init__(self, source: RegistrySource, *, node: str, lock: asyncio.Lock,
                 activate: Callable[[Registry], None],
                 refresh_secrets: Callable[[], Awaitable[None]],
                 everywhere: Callable[[], Awaitable[None]],
                 poll_interval_s: float = POLL_INTERVAL_S) -> None:
        self.source = source
        self.node = node
        self.version: int | None = None
        """The version in force (``None``: the file, or not loaded yet)."""
        self.polls = 0
        self.unavailable: str | None = None
        """Why the last poll failed, else ``None``."""
        self._lock = lock
        self._activate = activate
        self._refresh_secrets = refresh_secrets
        self._everywhere = everywhere
        self.poll_interval_s = poll_interval_s
        """Seconds between two polls of the version when no NOTIFY wakes the watch."""
        self._wake = asyncio.Event()
        self._polled = asyncio.Event()
        self._refused_version: int | None = None
        self._refusing: int | None = None

    @property
    def clustered(self) -> bool:
        return self.source.kind != "file"

    def _take(self, snapshot: Snapshot) -> Registry:
        self.version = snapshot.document.version
        self._activate(snapshot.registry)
        return snapshot.registry

    async def _run(self, call: Awaitable[Snapshot]) -> Snapshot:
        try:
            return await call
        except (RegistryUnavailable, RegistryConflict) as exc:
            raise api_error(exc) from None

    # -- what the admin API asks ---------------------------------------------------------

    async def load(self) -> Registry:
        """The first load (start): ``RegistryError`` or ``RegistryUnavailable``."""
        return self._take(await self.source.load())

    async def edit(self, change: Change) -> Registry:
        """Apply ``change``, put the result in force here and on every worker. Raises
        ``RegistryError``, ``KeyError``, ``ApiError`` (409 ``registry_conflict``, 503
        ``registry_unavailable``)."""
        registry = self._take(await self._run(self.source.edit(change, by=self.node)))
        await self._everywhere()
        return registry

    async def reload(self) -> Registry:
        """Read the source again (the file; in cluster mode the database) and put it in
        force; ``RegistryError`` leaves the registry in force."""
        snapshot = await self._run(self.source.load())
        await self._refresh_secrets()
        registry = self._take(snapshot)
        await self._everywhere()
        return registry

    async def refresh(self) -> None:
        """A worker, told by its control process: read the source again. A document that
        does not validate, or a database out of reach, leaves the registry in force."""
        try:
            snapshot = await self.source.load()
        except RegistryError as exc:
            log.error("registry_refresh_refused", error=str(exc))
            return
        except RegistryUnavailable as exc:
            log.error("registry_refresh_failed", error=str(exc))
            return
        await self._refresh_secrets()
        self._take(snapshot)

    async def document(self) -> Snapshot:
        """The document as stored now (``GET /v1/registry``); 422 ``registry_invalid``
        when it does not validate."""
        try:
            return await self._run(self.source.load())
        except RegistryError as exc:
            raise registry_error(exc) from None

    async def import_document(self, text: str, *, dry_run: bool,
                              expected_version: int | None) -> ImportOutcome:
        """Check ``text`` as a whole registry, say what it changes, and unless
        ``dry_run`` store it and put it in force everywhere. ``ApiError``: 422
        ``registry_invalid`` (with ``location``: nothing changed), 409, 503."""
        async with self._lock:
            return await self._import(text, dry_run=dry_run, expected_version=expected_version)

    @property
    def kind(self) -> str:
        return self.source.kind

    @property
    def path(self) -> Path:
        return self.source.path

    async def _import(self, text: str, *, dry_run: bool,
                      expected_version: int | None) -> ImportOutcome:
        try:
            current = await self._run(self.source.load())
        except RegistryError:
            # The stored document does not validate (SQL by hand): an import is how it is
            # mended, and it is compared with nothing.
            current = Snapshot(Registry(self.source.path, {}), RegistryDocument(""))
        try:
            new = await asyncio.to_thread(check_document, text, self.source.path)
        except RegistryError as exc:
            raise registry_error(exc) from None
        changes = registry_changes(current.registry, new)
        if dry_run:
            if expected_version is not None and expected_version != current.document.version:
                raise api_error(RegistryConflict(
                    f"the registry is at version {current.document.version}, not"
                    f" {expected_version}"))
            return ImportOutcome(changes, current.document, current.document, False)
        try:
            snapshot = await self._run(self.source.replace(
                text, by=self.node, expected_version=expected_version))
        except RegistryError as exc:
            raise registry_error(exc) from None
        await self._refresh_secrets()
        self._take(snapshot)
        await self._everywhere()
        applied = snapshot.document.text != current.document.text
        return ImportOutcome(changes, current.document, snapshot.document, applied)

    # -- the watch (cluster mode, control process) ----------------------------------------

    def notified(self) -> None:
        """A NOTIFY came: poll now rather than at the next tick."""
        self._wake.set()

    async def watch(self) -> None:
        """Until cancelled: whenever the database's version is not the one in force,
        load it and put it in force everywhere."""
        while True:
            self._wake.clear()
            try:
                await self._poll()
                if self.unavailable is not None:
                    log.info("registry_reachable_again", version=self.version)
                self.unavailable = None
            except RegistryError as exc:
                # Written around palyra (SQL by hand): the last good registry stays.
                self._refused_version = self._refusing
                log.error("registry_version_refused", version=self._refusing, error=str(exc),
                          hint="the registry in force stays; import a valid document")
            except RegistryUnavailable as exc:
                if self.unavailable is None:
                    log.warning("registry_unreachable", error=str(exc),
                                hint="the registry in force stays; edits answer 503"
                                     " registry_unavailable until the database is back")
                self.unavailable = str(exc)
            except Exception:
                # The watch is how this node hears of other nodes' edits: it never stops.
                log.exception("registry_watch_failed", version=self.version)
            self.polls += 1
            polled, self._polled = self._polled, asyncio.Event()
            polled.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)

    async def _poll(self) -> None:
        assert isinstance(self.source, DbRegistry)
        version = await self.source.version()
        if version is None or version == self.version or version == self._refused_version:
            return
        self._refusing = version
        async with self._lock:
            snapshot = await self.source.load()
            stored = snapshot.document.version
            if stored is None or stored == self.version:
                return
            await self._refresh_secrets()
            self._take(snapshot)
            await self._everywhere()
        log.info("registry_version_in_force", version=stored,
                 updated_by=snapshot.document.updated_by)

    async def next_poll(self) -> None:
        """Return once the next poll is done (tests wait on this, never on a timer)."""
        await self._polled.wait()

    async def close(self) -> None:
        await self.source.close()


async def open_db_registry(dsn: Callable[[], str], file: RegistryFile, *, node: str,
                           seed: bool, on_notify: Callable[[], None] | None) -> DbRegistry:
    """The registry in PostgreSQL, seeded from ``file`` if the database has none (and
    ``seed``: the control process). Raises ``RegistryError`` (the file to seed from does
    not validate) and ``RegistryUnavailable``; the connection is closed then."""
    from palyra_py.registry.apply import NEW_REGISTRY_TEXT
    from palyra_py.registry.postgres import postgres_registry  # asyncpg: cluster mode only

    source = postgres_registry(dsn, file.path, on_notify=on_notify)
    try:
        text = await asyncio.to_thread(file.read_text) if seed else None

        def seed_text() -> str:
            if text is None:
                return NEW_REGISTRY_TEXT
            parse_registry(text, file.path)
            return text

        seeded = await source.start(seed_text, by=node) if seed else False
        if seeded:
            log.info("registry_seeded", path=str(file.path), version=1,
                     hint=f"the database had no registry: this node's file is stored there."
                          f" From now on {NOT_THE_SOURCE}")
        elif seed:
            stored = await source.load()
            if text is not None and text != stored.document.text:
                log.warning("registry_file_not_source", path=str(file.path),
                            version=stored.document.version, hint=NOT_THE_SOURCE)
    except BaseException:
        await source.close()
        raise
    return source


def node_name(state_dir: Path) -> str:
    """Who a write is recorded as: the host, the state dir and the process."""
    import os
    import socket

    return f"{socket.gethostname()}:{state_dir} (pid {os.getpid()})"
