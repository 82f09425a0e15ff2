"""The registry's part of ``palyra storage copy``: the same document (comments and layout
kept), every secret reference the copy moved to ``db:`` rewritten, stored as the
registry in the database (``palyra_registry``, version 1, ``seed``), where every node of
the cluster reads it. ``webhooks.toml`` is left as it was: the embedded installation
keeps working until it is switched, and a daemon on the copy does not read it (the
database holds a registry)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from palyra_py.registry.document import parse_registry
from palyra_py.registry.engines import RegistryRow
from palyra_py.registry.positions import RegistryError
from palyra_py.registry.secret_refs import replace_refs
from palyra_py.registry.source import RegistryUnavailable
from palyra_py.storage.copying import CopyDone, CopyFailed, CopyRefused, CopyUnreachable

__all__ = ["RegistryCopier", "RegistryTarget"]


class RegistryTarget(Protocol):
    """The registry in the target database (``registry.postgres.PostgresRegistry``)."""

    async def read(self) -> RegistryRow | None: ...

    async def seed(self, text: str, *, by: str) -> bool: ...

    async def write(self, text: str, *, expected_version: int, by: str,
                    action: str) -> RegistryRow | None: ...

    async def close(self) -> None: ...


class RegistryCopier:
    """The registry's ``Copier``: one document."""

    store = "registry"
    unit = "documents"

    def __init__(self, path: Path, moved: Callable[[], Mapping[str, str]],
                 target: RegistryTarget, *, by: str) -> None:
        """``path``: ``webhooks.toml``; ``moved()``: the references the secrets' copier
        moved (asked when this copier runs, after it); ``by``: who wrote it, as the
        registry's history shows (``storage copy from HOST:DIR``)."""
        self._path = path
        self._moved = moved
        self._target = target
        self._by = by
        self.replaced = 0

    async def total(self) -> int:
        return 1 if self._path.exists() else 0

    async def copy(self, advance: Callable[[int], None]) -> CopyDone:
        if not self._path.exists():
            return CopyDone(self.store, 0, 0, ("no webhooks.toml: nothing to copy",))
        try:
            text = self._path.read_text(encoding="utf-8-sig")
            parse_registry(text, self._path)
        except (OSError, UnicodeDecodeError, RegistryError) as exc:
            raise CopyFailed(f"the registry cannot be read: {exc}") from None
        rewritten, self.replaced = replace_refs(text, self._moved())
        try:
            row = await self._target.read()
            if row is not None and row.text == rewritten:
                advance(1)
                return CopyDone(self.store, 0, 1)
            if row is None:
                written = await self._target.seed(rewritten, by=self._by)
            else:  # an interrupted copy's document, before secrets it lacked were moved
                written = await self._target.write(
                    rewritten, expected_version=row.version, by=self._by,
                    action="storage copy") is not None
        except RegistryUnavailable as exc:
            raise CopyUnreachable(str(exc)) from None
        if not written:
            raise CopyRefused("the registry in the target changed while copying (is a daemon"
                              " running on it?): stop it and run the copy again")
        advance(1)
        return CopyDone(self.store, 1, 0, (
            f"{self.replaced} secret references rewritten to db: in the copied registry",)
            if self.replaced else ())

    async def close(self) -> None:
        await self._target.close()
