"""The registry in the database (cluster mode): :class:`DbRegistry`, a ``RegistrySource``
over a :class:`RegistryBackend` (the SQL is the engine's, ``registry.postgres``).

The document is one row with a version that every write moves, and a history of the last
``HISTORY_KEPT`` versions (who wrote each, when). An edit reads the document and its
version, applies the change (``registry.apply``, comments kept) and writes the result only
if the version is still the one it read (optimistic: no lock is held while the change is
applied). Losing to another node's write, it reads again and applies the change again, up
to ``EDIT_TRIES`` times; the last try holds the row (``FOR UPDATE``) from the read to the
write, so an edit that validates is never refused for being concurrent. An import replaces
the whole document the same way, and with ``expected_version`` only if nothing else was
written since that version (``RegistryConflict``).

The first node to start on an empty database stores its ``webhooks.toml`` (``seed``); from
then on the file on disk is not read again (``palyra registry export`` writes one).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import NamedTuple, Protocol

import structlog

from palyra_py.registry.apply import apply_change, check_document
from palyra_py.registry.document import parse_registry
from palyra_py.registry.source import (
    Change,
    RegistryConflict,
    RegistryDocument,
    RegistryUnavailable,
    Snapshot,
)

__all__ = [
    "EDIT_TRIES",
    "HISTORY_KEPT",
    "DbRegistry",
    "RegistryBackend",
    "RegistryRow",
    "Rewrite",
]

log = structlog.get_logger("palyra.registry")

EDIT_TRIES = 8
"""Reads and writes one edit may take before it is refused; the last holds the row."""
HISTORY_KEPT = 100
"""Versions kept in the history (the current one among them)."""


class RegistryRow(NamedTuple):
    """The stored document."""

    text: str
    version: int
    updated_at: datetime
    updated_by: str

    def document(self) -> RegistryDocument:
        return RegistryDocument(self.text, self.version, self.updated_at, self.updated_by)


Rewrite = Callable[[RegistryRow], Awaitable[str | None]]
"""Given the stored row, the text to store in its place (``None``: leave it)."""


class RegistryBackend(Protocol):
    """The registry's row in a database. Every method raises ``RegistryUnavailable`` for
    a storage failure."""

    async def version(self) -> int | None:
        """The stored version (``None``: no document yet). One tiny query: the poll."""
        ...

    async def read(self) -> RegistryRow | None: ...

    async def seed(self, text: str, *, by: str) -> bool:
        """Store ``text`` as version 1 if there is no document yet; whether it did."""
        ...

    async def write(self, text: str, *, expected_version: int, by: str,
                    action: str) -> RegistryRow | None:
        """Store ``text`` as the next version if the stored one is ``expected_version``;
        the new row, or ``None`` when another write came first."""
        ...

    async def write_locked(self, rewrite: Rewrite, *, by: str,
                           action: str) -> RegistryRow:
        """Hold the row from the read to the write: ``rewrite`` gets the stored row and
        gives the text to store (``None``: nothing is written, the stored row is
        returned)."""
        ...

    async def close(self) -> None: ...


class DbRegistry:
    """A ``RegistrySource`` in the database. ``path`` names the node's ``webhooks.toml``
    in errors (the positions point into the stored text)."""

    kind = "postgres"

    def __init__(self, backend: RegistryBackend, path: Path) -> None:
        self.backend = backend
        self._path = path
        self.conflicts = 0
        """Writes lost to another writer since start (each was tried again)."""

    @property
    def path(self) -> Path:
        return self._path

    async def version(self) -> int | None:
        return await self.backend.version()

    async def start(self, seed_text: Callable[[], str], *, by: str) -> bool:
        """Store the node's registry if the database has none (``seed_text()``, checked
        by the caller); whether this node seeded it."""
        if await self.backend.version() is not None:
            return False
        return await self.backend.seed(seed_text(), by=by)

    async def load(self) -> Snapshot:
        row = await self.backend.read()
        if row is None:
            raise RegistryUnavailable("the database holds no registry yet (no node started)")
        registry = await asyncio.to_thread(parse_registry, row.text, self._path)
        return Snapshot(registry, row.document())

    async def edit(self, change: Change, *, by: str) -> Snapshot:
        for _ in range(EDIT_TRIES - 1):
            row = await self.backend.read()
            if row is None:
                raise RegistryUnavailable("the database holds no registry")
            new_text, registry = await asyncio.to_thread(
                apply_change, row.text, change, self._path)
            if new_text == row.text:
                return Snapshot(registry, row.document())
            written = await self.backend.write(new_text, expected_version=row.version,
                                               by=by, action="edit")
            if written is not None:
                return Snapshot(registry, written.document())
            self.conflicts += 1
        return await self._edit_holding_the_row(change, by=by)

    async def _edit_holding_the_row(self, change: Change, *, by: str) -> Snapshot:
        log.info("registry_edit_contended", tries=EDIT_TRIES - 1,
                 hint="the last try holds the registry row")
        result: list[Snapshot] = []

        async def rewrite(row: RegistryRow) -> str | None:
            new_text, registry = await asyncio.to_thread(
                apply_change, row.text, change, self._path)
            result.append(Snapshot(registry, row.document()))
            return None if new_text == row.text else new_text

        written = await self.backend.write_locked(rewrite, by=by, action="edit")
        if not result:  # pragma: no cover - write_locked always calls rewrite
            raise RegistryConflict("the registry edit was not applied; try again")
        return Snapshot(result[-1].registry, written.document())

    async def replace(self, text: str, *, by: str,
                      expected_version: int | None = None) -> Snapshot:
        registry = await asyncio.to_thread(check_document, text, self._path)

        async def rewrite(row: RegistryRow) -> str | None:
            if expected_version is not None and row.version != expected_version:
                raise RegistryConflict(
                    f"the registry is at version {row.version}, not {expected_version}:"
                    " it changed since; export it again, redo the change, import again")
            return None if row.text == text else text

        written = await self.backend.write_locked(rewrite, by=by, action="import")
        return Snapshot(registry, written.document())

    async def close(self) -> None:
        await self.backend.close()
