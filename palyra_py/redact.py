"""Redaction of secret-looking values before anything is stored or shown.

Pure: no I/O. Used on operator event details and any payload the daemon journals on its
own behalf, so that a token pasted into an event never reaches the journal.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

REDACTED = "[REDACTED]"
TOO_DEEP = "[TOO DEEP]"
MAX_DEPTH = 64
"""Levels of nested containers kept; a container at level ``MAX_DEPTH + 1`` (the root being
level 1) is replaced by ``TOO_DEEP``."""

SECRET_KEY_PARTS: tuple[str, ...] = (
    "secret",
    "token",
    "password",
    "passwd",
    "api_key",
    "apikey",
    "authorization",
    "cookie",
    "credential",
    "private_key",
    "signature",
    "session",
)
"""A key containing any of these (case-insensitive) has its value redacted."""


def is_secret_key(key: object) -> bool:
    """True when ``key`` looks like it names a secret.

    Case-insensitive substring match on ``SECRET_KEY_PARTS``; ``-`` counts as ``_`` so that
    header-style names (``X-Api-Key``, ``Private-Key``) are caught too.
    """
    name = str(key).lower().replace("-", "_")
    return any(part in name for part in SECRET_KEY_PARTS)


def redact(value: Any) -> tuple[Any, bool]:
    """Return a deep copy of ``value`` with secret-looking values replaced, and whether
    anything was changed.

    Mappings are copied to ``dict`` (keys kept as they are); a value under a secret-looking
    key becomes ``"[REDACTED]"`` whatever its type. Lists and tuples keep their type.
    A container nested more than ``MAX_DEPTH`` levels deep becomes ``"[TOO DEEP]"``, which also
    counts as a change. The input is never modified.
    """
    return _redact(value, 0)


def _redact(value: Any, depth: int) -> tuple[Any, bool]:
    if isinstance(value, Mapping):
        if depth >= MAX_DEPTH:
            return TOO_DEEP, True
        changed = False
        out: dict[Any, Any] = {}
        for key, item in value.items():
            if is_secret_key(key):
                out[key] = REDACTED
                changed = True
                continue
            out[key], item_changed = _redact(item, depth + 1)
            changed = changed or item_changed
        return out, changed
    if isinstance(value, list | tuple):
        if depth >= MAX_DEPTH:
            return TOO_DEEP, True
        items: list[Any] = []
        changed = False
        for item in value:
            new_item, item_changed = _redact(item, depth + 1)
            items.append(new_item)
            changed = changed or item_changed
        return (tuple(items) if isinstance(value, tuple) else items), changed
    if isinstance(value, str | int | float | bool) or value is None:
        return value, False
    # Anything else (sets, custom objects): not JSON, but still never hand back a shared
    # mutable object.
    return copy.deepcopy(value), False
