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

from palyra_py.registry.document import REGISTRY_VERSION, Registry, parse_registry
from palyra_py.registry.positions import RegistryError
from palyra_py.storage.files import exclusive_lock, write_atomic
from palyra_py.storage.ownership import ForeignOwner, check_owner

MAX_REGISTRY_BYTES = 16 * 1024 * 1024
NEW_REGISTRY_TEXT = (
    "# palyra-py webhook registry. Every field is explained in webhooks.example.toml.\n"
    f"version = {REGISTRY_VERSION}\n"
)


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
            exists = text is not None
            if text is None:
                text = NEW_REGISTRY_TEXT
            # Validate what is on disk first: if the change leaves a hand-made error in
            # place, that error is reported with its true line and column.
            try:
                parse_registry(text, self.path)
                on_disk_error: RegistryError | None = None
            except RegistryError as exc:
                if exc.field is None:  # not even TOML: there is no document to change
                    raise
                on_disk_error = exc
            doc = tomlkit.parse(text)
            if exists and doc.as_string() != text:
                # A hand-made error first: the file needs a hand edit either way.
                raise on_disk_error or _layout_error(text, doc.as_string(), self.path)
            change(doc)
            new_text = doc.as_string()
            try:
                registry = parse_registry(new_text, self.path)
            except RegistryError as exc:
                if on_disk_error is not None and on_disk_error.message == exc.message:
                    raise on_disk_error from None
                # Positions would point into text that was never written: leave them out.
                raise RegistryError(exc.message, path=self.path, field=exc.field) from None
            if not exists or new_text != text:
                write_atomic(self.path, new_text.encode("utf-8"))
            return registry


def _layout_error(text: str, rewritten: str, path: Path) -> RegistryError:
    """The file cannot be edited without rewriting parts the edit is not about: tomlkit
    keeps an array of tables together, so records of one kind written after records of
    another kind would move (with the comments above them). Say where, and what to do."""
    seen: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        header = line.strip()
        if not (header.startswith("[[") and "]]" in header):
            continue
        kind = header[2:header.index("]]")].strip()
        if seen and kind != seen[-1] and kind in seen:
            return RegistryError(
                f"[[{kind}]] here comes after [[{seen[-1]}]] records, below other [[{kind}]]"
                f" records: an edit would move it next to them. Put the records of each kind"
                f" together (all [[{kind}]] records in one run), then retry; nothing was"
                f" changed", path=path, line=number, col=1)
        seen.append(kind)
    old_lines, new_lines = text.splitlines(), rewritten.splitlines()
    first = next((i for i, (a, b) in enumerate(zip(old_lines, new_lines, strict=False)) if a != b),
                 min(len(old_lines), len(new_lines)))
    return RegistryError(
        "an edit would also rewrite parts of the file it is not about (tomlkit cannot keep"
        " their layout); nothing was changed", path=path, line=first + 1, col=1)

