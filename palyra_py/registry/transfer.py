"""The registry's part of ``palyra storage copy``: the same document, every secret
reference the copy moved to ``db:`` rewritten (comments and layout kept).

The registry is not in the database yet (another part of issue 11), so the rewritten
document is written beside the original, as ``webhooks.postgres.toml`` (0600, atomic),
for the operator to put in place when switching; ``webhooks.toml`` is left as it was, so
the embedded installation keeps working until then.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from palyra_py.registry.document import parse_registry
from palyra_py.registry.positions import RegistryError
from palyra_py.registry.secret_refs import replace_refs
from palyra_py.storage.copying import CopyDone, CopyFailed
from palyra_py.storage.files import write_atomic

__all__ = ["COPIED_REGISTRY_FILE", "RegistryCopier"]

COPIED_REGISTRY_FILE = "webhooks.postgres.toml"


class RegistryCopier:
    """The registry's ``Copier``: one document."""

    store = "registry"
    unit = "documents"

    def __init__(self, path: Path, moved: Callable[[], Mapping[str, str]]) -> None:
        """``path``: ``webhooks.toml``; ``moved()``: the references the secrets' copier
        moved (asked when this copier runs, after it)."""
        self._path = path
        self._moved = moved
        self.written: Path | None = None

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
        rewritten, replaced = replace_refs(text, self._moved())
        # HOOK(registry in the database, branch pg/registry): store `rewritten` there instead.
        target = self._path.with_name(COPIED_REGISTRY_FILE)
        write_atomic(target, rewritten.encode("utf-8"))
        self.written = target
        advance(1)
        return CopyDone(self.store, 1, 0, (
            f"{target} holds the registry with {replaced} references moved to db:; put it"
            f" in place of {self._path.name} when you switch",))

    async def close(self) -> None:
        return None
