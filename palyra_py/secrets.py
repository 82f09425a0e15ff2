"""Secret references (``keyring:NAME``, ``env:VAR``, ``file:PATH``) and the keyring.

INTERFACE STUB: the public names and signatures below are the contract used by the daemon.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

KEYRING_SERVICE = "palyra"

Readiness = Literal["ready", "invalid_secret_ref", "secret_not_found"]


class SecretRefError(ValueError):
    """The reference is not of a known form."""


class SecretNotFound(LookupError):
    """The reference is well formed but names nothing (no keyring entry, unset variable,
    missing file). The message names the reference, never a value."""


def parse_secret_ref(ref: str) -> tuple[str, str]:
    """``"keyring:gh"`` -> ``("keyring", "gh")``; raise ``SecretRefError``."""
    raise NotImplementedError


def generate_secret(provider: str) -> str:
    """A strong random secret in the form the provider expects."""
    raise NotImplementedError


class SecretStore:
    def __init__(self, state_dir: Path, *, env: Mapping[str, str] | None = None) -> None:
        raise NotImplementedError

    @property
    def backend_name(self) -> str: ...

    @property
    def is_fallback(self) -> bool: ...

    def resolve(self, ref: str) -> str: ...
    def readiness(self, ref: str | None) -> tuple[Readiness, str]: ...
    def store(self, name: str, secret: str) -> str: ...
    def delete(self, name: str) -> None: ...
    def forget_cached(self, ref: str | None = None) -> None: ...
