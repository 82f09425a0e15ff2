"""Where the registry in force comes from: :class:`RegistrySource`, with two sources, the
file ``webhooks.toml`` (:class:`FileSource`, an embedded daemon) and the database
(``registry.engines.DbRegistry``, cluster mode).

Every source holds the same TOML document (comments kept) and runs the same steps
(``registry.apply``): an edit is read-change-validate-write, an import replaces the whole
document after it validates. A source in the database also has a version, moved by every
write, which is how each node learns of a change made on another.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import NamedTuple, Protocol

import tomlkit

from palyra_py.registry.apply import NEW_REGISTRY_TEXT
from palyra_py.registry.document import Registry, parse_registry
from palyra_py.registry.file import RegistryFile

__all__ = [
    "FileSource",
    "ImportOutcome",
    "RegistryConflict",
    "RegistryDocument",
    "RegistrySource",
    "RegistryUnavailable",
    "Snapshot",
]

Change = Callable[[tomlkit.TOMLDocument], None]


class RegistryUnavailable(Exception):
    """The registry's database cannot be read or written now (503
    ``registry_unavailable``); the message never holds a value or the DSN's password."""


class RegistryConflict(Exception):
    """The document changed under the write (409 ``registry_conflict``): an import's
    ``expected_version`` is not the stored one. (Edits do not end so: their last try holds
    the row, ``registry.engines``.)"""


class RegistryDocument(NamedTuple):
    """The registry's text as stored. ``version`` (and who wrote it, when) is the
    database's; ``None`` for the file."""

    text: str
    version: int | None = None
    updated_at: datetime | None = None
    updated_by: str | None = None


class Snapshot(NamedTuple):
    """A document and the registry it holds (validated)."""

    registry: Registry
    document: RegistryDocument


class ImportOutcome(NamedTuple):
    """What an import changed (or, dry, would change) against ``previous``: per record
    kind the ids added, removed and changed (``registry.apply.registry_changes``)."""

    changes: dict[str, dict[str, list[str]]]
    previous: RegistryDocument
    document: RegistryDocument
    applied: bool


class RegistrySource(Protocol):
    """The registry's document, wherever it is kept. Every method may raise
    ``RegistryUnavailable`` (a database source) and ``RegistryError``."""

    @property
    def kind(self) -> str:
        """``file`` or ``postgres``."""
        ...

    @property
    def path(self) -> Path:
        """The name errors point into (the file; in the database, the node's file)."""
        ...

    async def load(self) -> Snapshot:
        """The document as stored and the registry it holds."""
        ...

    async def edit(self, change: Change, *, by: str) -> Snapshot:
        """Apply ``change`` to the stored document and store the result; ``KeyError``
        from ``change`` when the record it names is gone."""
        ...

    async def replace(self, text: str, *, by: str,
                      expected_version: int | None = None) -> Snapshot:
        """Store ``text`` whole (an import) once it passes ``check_document``; with
        ``expected_version``, only if the stored version is that one
        (``RegistryConflict``)."""
        ...

    async def close(self) -> None: ...


class FileSource:
    """The registry in ``webhooks.toml`` (``RegistryFile``): no version; its calls run in
    a thread (the file is read and written under an inter-process lock)."""

    kind = "file"

    def __init__(self, file: RegistryFile) -> None:
        self.file = file

    @property
    def path(self) -> Path:
        return self.file.path

    async def load(self) -> Snapshot:
        return await asyncio.to_thread(self._load)

    def _load(self) -> Snapshot:
        text = self.file.read_text()
        if text is None:  # a missing file is an empty registry
            return Snapshot(Registry(self.path, {}), RegistryDocument(NEW_REGISTRY_TEXT))
        return Snapshot(parse_registry(text, self.path), RegistryDocument(text))

    async def edit(self, change: Change, *, by: str) -> Snapshot:
        registry = await asyncio.to_thread(self.file.edit, change)
        text = await asyncio.to_thread(self.file.read_text)
        return Snapshot(registry, RegistryDocument(text or NEW_REGISTRY_TEXT))

    async def replace(self, text: str, *, by: str,
                      expected_version: int | None = None) -> Snapshot:
        if expected_version is not None:
            raise RegistryConflict(
                "expected_version is for the registry in the database (cluster mode);"
                " this daemon's registry is the file webhooks.toml, which has no version")
        registry = await asyncio.to_thread(self.file.replace, text)
        return Snapshot(registry, RegistryDocument(text))

    async def close(self) -> None:
        return None
