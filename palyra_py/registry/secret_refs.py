"""The secret references a registry text holds, and the same text with some of them
replaced (comments, order and layout kept: tomlkit). Used when an installation moves its
keyring secrets into the database (``palyra storage copy``): every ``keyring:NAME`` the
copy re-sealed becomes ``db:NAME``, wherever it sits (a webhook's ``secret_ref`` and
``previous_secret_ref``, a subscription's, its URL or header values, a token's)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import tomlkit

from palyra_py.secrets.refs import SecretRefError, parse_secret_ref

__all__ = ["refs_of_kind", "replace_refs"]


def _walk(node: Any, visit: Callable[[Any, Any, str], None]) -> None:
    """``visit(container, key, value)`` for every string value, at any depth."""
    if isinstance(node, dict):
        for key in list(node.keys()):
            value = node[key]
            if isinstance(value, str):
                visit(node, key, str(value))
            else:
                _walk(value, visit)
    elif isinstance(node, list):
        for index, value in enumerate(list(node)):
            if isinstance(value, str):
                visit(node, index, str(value))
            else:
                _walk(value, visit)


def _kind(value: str) -> str | None:
    try:
        kind, _ = parse_secret_ref(value.strip())
    except SecretRefError:
        return None
    return kind


def refs_of_kind(text: str, kind: str) -> list[str]:
    """Every reference of ``kind`` (``keyring``) in the registry ``text``, once each, in
    sorted order."""
    found: set[str] = set()

    def visit(container: Any, key: Any, value: str) -> None:
        if _kind(value) == kind:
            found.add(value.strip())

    _walk(tomlkit.parse(text), visit)
    return sorted(found)


def replace_refs(text: str, mapping: Mapping[str, str]) -> tuple[str, int]:
    """``text`` with every string value that is a key of ``mapping`` replaced by its value,
    and how many were replaced."""
    doc = tomlkit.parse(text)
    replaced = 0

    def visit(container: Any, key: Any, value: str) -> None:
        nonlocal replaced
        new = mapping.get(value.strip())
        if new is not None and _kind(value) is not None:
            container[key] = new
            replaced += 1

    _walk(doc, visit)
    return doc.as_string(), replaced
