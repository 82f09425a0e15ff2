"""The TOML registry ``webhooks.toml``: integrations (and, later, subscriptions).

INTERFACE STUB: the public names and signatures below are the contract used by the daemon.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import tomlkit

MAX_INTEGRATIONS = 1024
MAX_ALLOWED_EVENTS = 64
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
MAX_MAX_PAYLOAD_BYTES = 32 * 1024 * 1024
DEFAULT_TIMESTAMP_TOLERANCE_S = 300
DEFAULT_REPLAY_WINDOW_S = 7 * 24 * 3600


class RegistryError(Exception):
    """A registry that cannot be used. ``str()`` is ``file:line:col: message`` when the
    position is known, else ``file: message``; ``field`` names the faulty field."""

    def __init__(
        self,
        message: str,
        *,
        path: Path | None = None,
        line: int | None = None,
        col: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.path = path
        self.line = line
        self.col = col
        self.field = field
        super().__init__(self.location_prefix() + message)

    @property
    def location(self) -> str | None:
        if self.path is None:
            return None
        if self.line is None:
            return str(self.path)
        return f"{self.path}:{self.line}:{self.col or 1}"

    def location_prefix(self) -> str:
        loc = self.location
        return f"{loc}: " if loc else ""


@dataclass(frozen=True, slots=True)
class Integration:
    integration_id: str
    provider: str
    display_name: str = ""
    secret_ref: str | None = None
    previous_secret_ref: str | None = None
    previous_valid_until: datetime | None = None
    allowed_events: tuple[str, ...] = ()
    allowed_sources: tuple[str, ...] = ()
    enabled: bool = True
    signature_required: bool = True
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    timestamp_tolerance_s: int = DEFAULT_TIMESTAMP_TOLERANCE_S
    replay_window_s: int = DEFAULT_REPLAY_WINDOW_S
    provider_options: Mapping[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    last_test_status: str | None = None
    last_test_at: datetime | None = None
    last_test_message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (datetimes as RFC 3339 strings, tuples as lists)."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Registry:
    path: Path
    integrations: Mapping[str, Integration]


def normalize_id(value: str, *, field: str = "integration_id") -> str:
    """Trim, lowercase, check ``[a-z0-9._-]{1,64}``; raise ``RegistryError(field=...)``."""
    raise NotImplementedError


def validate_integration_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Normalise and check a dict of integration fields (as given by the admin API or read
    from TOML); return the normalised dict; raise ``RegistryError`` naming the field."""
    raise NotImplementedError


def parse_registry(text: str, path: Path) -> Registry:
    """Parse and validate registry text; errors carry line and column."""
    raise NotImplementedError


class RegistryFile:
    """The on-disk registry. All writes are atomic and serialised by an inter-process lock."""

    def __init__(self, path: Path) -> None:
        raise NotImplementedError

    def load(self) -> Registry:
        """Read and validate the file; a missing file is an empty registry."""
        raise NotImplementedError

    def edit(self, change: Callable[[tomlkit.TOMLDocument], None]) -> Registry:
        """Under the lock: read the file as it is on disk (or a new ``version = 1`` document),
        apply ``change`` to the tomlkit document, validate the result, write it atomically
        (temp file in the same dir, fsync, rename, fsync dir; mode 0600), and return it. If
        validation fails nothing is written and ``RegistryError`` is raised."""
        raise NotImplementedError


def add_integration(doc: tomlkit.TOMLDocument, fields: Mapping[str, Any], now: datetime) -> None:
    """Append a ``[[webhooks]]`` record (sets created_at/updated_at); raise ``RegistryError``
    if the id exists (field ``integration_id``) or the limit is reached."""
    raise NotImplementedError


def update_integration(
    doc: tomlkit.TOMLDocument, integration_id: str, changes: Mapping[str, Any], now: datetime
) -> None:
    """Change fields of one record in place (``None`` removes a key), bump updated_at, keep
    comments and order. Raise ``KeyError`` if the id is unknown."""
    raise NotImplementedError


def remove_integration(doc: tomlkit.TOMLDocument, integration_id: str) -> None:
    """Remove one record; raise ``KeyError`` if unknown."""
    raise NotImplementedError
