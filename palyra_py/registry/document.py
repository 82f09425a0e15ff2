"""The whole registry as read from one ``webhooks.toml`` text: :class:`Registry` and
:func:`parse_registry`.

``parse_registry`` reads the three record kinds (``[[webhooks]]`` in ``integrations``,
``[[subscriptions]]`` in ``subscriptions``, ``[[tokens]]`` in ``tokens``) and the top-level
keys; a refusal is a ``RegistryError`` that carries the file, the line and column of the
faulty field, and the field's name. ``RegistryFile`` (``registry.file``) reads the file
and runs edits through it.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import ParseError

from palyra_py.registry.fields import fail, show
from palyra_py.registry.integrations import Integration, parse_integrations
from palyra_py.registry.positions import RegistryError, locate
from palyra_py.registry.subscriptions import Subscription, parse_subscriptions
from palyra_py.registry.tokens import ApiToken, parse_tokens

REGISTRY_VERSION = 1
TOP_LEVEL_KEYS = ("version", "webhooks", "subscriptions", "tokens")


@dataclass(frozen=True, slots=True)
class Registry:
    """Every record of one registry text, each kind keyed by its id in file order. Treat it
    as a snapshot: ``RegistryFile.edit`` returns a new ``Registry`` rather than changing
    one."""

    path: Path
    integrations: Mapping[str, Integration]
    subscriptions: Mapping[str, Subscription] = field(default_factory=dict)
    tokens: Mapping[str, ApiToken] = field(default_factory=dict)


def parse_registry(text: str, path: Path) -> Registry:
    """Parse and validate registry text; errors carry line and column."""
    try:
        data = tomlkit.parse(text).unwrap()
    except ParseError as exc:
        message = str(exc).rsplit(" at line ", 1)[0]
        # tomlkit reports the end of the text as the character NUL.
        message = message.replace("Unexpected character: '\\x00'", "unexpected end of file")
        # tomlkit counts columns from 0; editors and compilers count from 1.
        raise RegistryError(
            f"TOML syntax error: {message}", path=path, line=exc.line, col=exc.col + 1
        ) from None
    except Exception as exc:
        # tomlkit may fail on pathological input with other exceptions (deep nesting...);
        # the daemon must get a RegistryError whatever the text.
        raise RegistryError(f"TOML syntax error ({type(exc).__name__})", path=path) from None
    try:
        return _build(data, path)
    except RegistryError as exc:
        line, col = locate(text, exc.field or "")
        raise RegistryError(exc.message, path=path, line=line, col=col, field=exc.field) from None


def _build(data: Mapping[str, Any], path: Path) -> Registry:
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            hint = difflib.get_close_matches(key, TOP_LEVEL_KEYS, n=1)
            guess = f" did you mean {hint[0]!r}?" if hint else ""
            allowed = "version, [[webhooks]], [[subscriptions]], [[tokens]]"
            raise fail(key, f"unknown top-level key;{guess} allowed: {allowed}")
    version = data.get("version", REGISTRY_VERSION)
    if isinstance(version, bool) or version != REGISTRY_VERSION:
        raise fail(
            "version",
            f"must be {REGISTRY_VERSION} (the only format this palyra-py reads),"
            f" got {show(version)}",
        )
    return Registry(path, parse_integrations(data), parse_subscriptions(data), parse_tokens(data))
