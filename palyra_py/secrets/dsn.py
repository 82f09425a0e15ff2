"""The PostgreSQL URI the storage engine connects with: ``[storage] dsn`` as given, or the
secret ``[storage] dsn_ref`` names (``env:``, ``file:``, ``keyring:``), checked the same
way. No error raised here repeats the URI or the secret."""

from __future__ import annotations

from collections.abc import Callable

from palyra_py.secrets.refs import SecretRefError, parse_secret_ref
from palyra_py.settings import Settings, SettingsError
from palyra_py.storage.dsn import dsn_problem

__all__ = ["storage_dsn"]


def storage_dsn(settings: Settings, resolve: Callable[[str], str]) -> str | None:
    """The URI for ``storage.backend = "postgres"`` (``None`` for SQLite). ``resolve``
    reads a secret reference (``SecretStore.resolve``); raises ``SettingsError`` for a
    malformed reference or URI, and lets ``resolve``'s ``SecretNotFound`` through."""
    if settings.get("storage", "backend") != "postgres":
        return None
    ref = str(settings.get("storage", "dsn_ref"))
    if not ref:
        return str(settings.get("storage", "dsn"))
    try:
        parse_secret_ref(ref)
    except SecretRefError as exc:
        raise SettingsError(f"storage.dsn_ref: {exc}") from None
    dsn = resolve(ref).strip()
    problem = dsn_problem(dsn)
    if problem is not None:
        raise SettingsError(f"storage.dsn_ref: the URI it names {problem} (value not shown)")
    return dsn
