"""Registry changes as pure text-to-text steps, shared by every registry source (the file,
the database): apply an edit to a document's text, check a whole document given for an
import, and say what an import would change.

``apply_change`` is the read-change-validate step of every edit: the text is parsed with
tomlkit (comments, blank lines and key order survive), changed, and validated; a refusal is
a ``RegistryError`` and nothing is to be written. ``check_document`` is what an import must
pass: the registry validates, and its layout lets later edits keep it as written.
``registry_changes`` lists the records an import adds, removes and changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import tomlkit

from palyra_py.registry.document import REGISTRY_VERSION, Registry, parse_registry
from palyra_py.registry.positions import RegistryError

__all__ = [
    "MAX_REGISTRY_BYTES",
    "NEW_REGISTRY_TEXT",
    "RECORD_KINDS",
    "apply_change",
    "check_document",
    "registry_changes",
]

NEW_REGISTRY_TEXT = (
    "# palyra-py webhook registry. Every field is explained in webhooks.example.toml.\n"
    f"version = {REGISTRY_VERSION}\n"
)

MAX_REGISTRY_BYTES = 16 * 1024 * 1024
"""The largest registry document, in a file or in the database."""

RECORD_KINDS = ("integrations", "subscriptions", "tokens")
"""The record kinds of a ``Registry``, in the order changes are listed."""


def apply_change(text: str | None, change: Callable[[tomlkit.TOMLDocument], None],
                 path: Path) -> tuple[str, Registry]:
    """The text after ``change`` and the registry it holds. ``text`` is the document as
    stored (``None``: there is none yet, a new ``version = 1`` document is changed).
    Raises ``RegistryError`` when the stored text or the result does not validate, and
    ``KeyError`` from ``change`` (the record it names is gone)."""
    exists = text is not None
    if text is None:
        text = NEW_REGISTRY_TEXT
    # Validate what is stored first: if the change leaves a hand-made error in place, that
    # error is reported with its true line and column.
    try:
        parse_registry(text, path)
        stored_error: RegistryError | None = None
    except RegistryError as exc:
        if exc.field is None:  # not even TOML: there is no document to change
            raise
        stored_error = exc
    doc = tomlkit.parse(text)
    if exists and doc.as_string() != text:
        # A hand-made error first: the document needs a hand edit either way.
        raise stored_error or layout_error(text, doc.as_string(), path)
    change(doc)
    new_text = doc.as_string()
    try:
        registry = parse_registry(new_text, path)
    except RegistryError as exc:
        if stored_error is not None and stored_error.message == exc.message:
            raise stored_error from None
        # Positions would point into text that was never written: leave them out.
        raise RegistryError(exc.message, path=path, field=exc.field) from None
    return new_text, registry


def check_document(text: str, path: Path) -> Registry:
    """The registry ``text`` holds, if it may replace the registry whole (an import): it
    validates (``RegistryError`` with line and column otherwise), and tomlkit writes it
    back as given, so that later edits keep every comment and line in place."""
    if len(text.encode("utf-8")) > MAX_REGISTRY_BYTES:
        raise RegistryError(f"larger than {MAX_REGISTRY_BYTES} bytes", path=path)
    registry = parse_registry(text, path)
    rewritten = tomlkit.parse(text).as_string()
    if rewritten != text:
        raise layout_error(text, rewritten, path)
    return registry


def registry_changes(old: Registry, new: Registry) -> dict[str, dict[str, list[str]]]:
    """Per record kind, the ids ``new`` adds, removes and changes against ``old``:
    ``{"integrations": {"added": [...], "removed": [...], "changed": [...]}, ...}``, each
    list sorted."""
    changes: dict[str, dict[str, list[str]]] = {}
    for kind in RECORD_KINDS:
        before: Mapping[str, Any] = getattr(old, kind)
        after: Mapping[str, Any] = getattr(new, kind)
        changes[kind] = {
            "added": sorted(after.keys() - before.keys()),
            "removed": sorted(before.keys() - after.keys()),
            "changed": sorted(key for key in before.keys() & after.keys()
                              if before[key] != after[key]),
        }
    return changes


def layout_error(text: str, rewritten: str, path: Path) -> RegistryError:
    """The document cannot be edited without rewriting parts the edit is not about:
    tomlkit keeps an array of tables together, so records of one kind written after
    records of another kind would move (with the comments above them). Say where, and what
    to do."""
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
