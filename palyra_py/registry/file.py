"""The registry file on disk: reading it, and changing it while keeping what a person wrote.

``RegistryFile`` reads ``webhooks.toml`` and runs every change as one locked read-change-
validate-write cycle over the tomlkit document, so comments, blank lines and key order
survive. The changes themselves are the record kinds' ``add_*``, ``update_*`` and
``remove_*`` (``integrations``, ``subscriptions``, ``tokens``), built on ``registry.edit``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import tomlkit

from palyra_py.registry.apply import (
    MAX_REGISTRY_BYTES,
    NEW_REGISTRY_TEXT,
    apply_change,
    check_document,
)
from palyra_py.registry.document import Registry, parse_registry
from palyra_py.registry.positions import RegistryError
from palyra_py.storage.files import exclusive_lock, write_atomic
from palyra_py.storage.ownership import ForeignOwner, check_owner

__all__ = ["MAX_REGISTRY_BYTES", "NEW_REGISTRY_TEXT", "RegistryFile"]



class RegistryFile:
    """The on-disk registry. All writes are atomic and serialised by an inter-process lock."""

    def __init__(self, path: Path, *, expected_uid: int | None = None) -> None:
        """``expected_uid``: who must own the file (or root); default the effective uid."""
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock = threading.Lock()
        self._expected_uid = expected_uid

    def load(self) -> Registry:
        """Read and validate the file; a missing file is an empty registry."""
        text = self._read_text()
        if text is None:
            return Registry(path=self.path, integrations={})
        return parse_registry(text, self.path)

    def _read_text(self) -> str | None:
        try:
            with open(self.path, "rb") as file:
                # The owner of what is read, not of what the path named a moment before.
                owner = os.fstat(file.fileno()).st_uid
                check_owner(self.path, owner, what="the registry",
                            expected_uid=self._expected_uid)
                raw = file.read(MAX_REGISTRY_BYTES + 1)
        except FileNotFoundError:
            return None
        except ForeignOwner as exc:
            raise RegistryError(str(exc), path=self.path) from None
        except OSError as exc:
            message = f"cannot read the registry ({exc.strerror})"
            raise RegistryError(message, path=self.path) from None
        if len(raw) > MAX_REGISTRY_BYTES:
            raise RegistryError(f"larger than {MAX_REGISTRY_BYTES} bytes", path=self.path)
        try:
            return raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
            raise RegistryError("not UTF-8 text", path=self.path, line=line, col=col) from None

    def edit(self, change: Callable[[tomlkit.TOMLDocument], None]) -> Registry:
        """Under the lock: read the file as it is on disk (or a new ``version = 1`` document),
        apply ``change`` to the tomlkit document, validate the result, write it atomically
        (temp file in the same dir, fsync, rename, fsync dir; mode 0600), and return it. If
        validation fails nothing is written and ``RegistryError`` is raised."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._lock, exclusive_lock(self.lock_path):
            text = self._read_text()
            new_text, registry = apply_change(text, change, self.path)
            if text is None or new_text != text:
                write_atomic(self.path, new_text.encode("utf-8"))
            return registry

    def read_text(self) -> str | None:
        """The file's text as it is on disk (``None``: there is no file). Raises
        ``RegistryError`` for a file that cannot be read (owner, size, encoding)."""
        return self._read_text()

    def replace(self, text: str) -> Registry:
        """Under the lock: write ``text`` in place of the file (an import), if it passes
        ``check_document``; else raise ``RegistryError`` and write nothing."""
        registry = check_document(text, self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._lock, exclusive_lock(self.lock_path):
            if self._read_text() != text:
                write_atomic(self.path, text.encode("utf-8"))
        return registry


