"""``db:`` secrets as each node holds them: the key from ``[secrets] key_ref``, and an
in-memory copy of the sealed rows of the shared table, refreshed by a poll of the table's
version counter.

The request path never waits on the database: ``SecretStore.resolve("db:NAME")`` reads
this copy (a row is opened on first use and kept open until it changes). Every
``POLL_INTERVAL_S`` the node asks the database for the version counter (one tiny query);
when it moved, every row is read again and the names that changed are told to
``on_change`` (the daemon drops what its ingress and dispatcher resolved from them). So a
secret written on one node is in force on every other within ``REFRESH_BOUND_S``. While
the database is unreachable the last copy stays in force and nothing is lost.

The engine (SQL, driver) is behind :class:`DbSecretsBackend`; ``secrets.postgres`` is
the one engine. No message here holds a key or a secret.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import NamedTuple, Protocol

import structlog

from palyra_py.secrets.refs import SecretRefError, parse_secret_ref
from palyra_py.secrets.sealing import KeyFormatError, Keys, Sealed, UnsealError, parse_key, seal
from palyra_py.settings import Settings, SettingsError

__all__ = [
    "NO_SHARED_KEY_WARNING",
    "POLL_INTERVAL_S",
    "REFRESH_BOUND_S",
    "DbSecretNotFound",
    "DbSecrets",
    "DbSecretsBackend",
    "DbSecretsUnavailable",
    "StoredSecret",
    "load_keys",
    "per_node_warning",
]

log = structlog.get_logger("palyra.secrets")

POLL_INTERVAL_S = 0.5
REFRESH_BOUND_S = 1.0
"""A secret written on one node verifies on every other within this (two polls)."""

PER_NODE_WARNING = (
    "keyring secrets are per node: {ref} resolves on this node only, so the other nodes"
    " cannot verify with it; move it to db: (palyra webhooks rotate-secret ID with"
    " [secrets] key_ref set stores the new one as db:NAME)"
)

NO_SHARED_KEY_WARNING = (
    "cluster mode without [secrets] key_ref: the secrets this daemon generates or is given"
    " (webhooks add and rotate-secret, subscriptions, tokens) go to this node's keyring,"
    " so the other nodes cannot verify or sign with them; set the same [secrets] key_ref"
    " on every node (docs/cluster.md#secrets)"
)


class DbSecretsUnavailable(Exception):
    """The table cannot be read or written now; the message never holds a value."""


class DbSecretNotFound(LookupError):
    """No such ``db:`` secret, or it does not open; the message names it, never a value.
    ``SecretStore`` turns it into its own ``SecretNotFound``."""


class StoredSecret(NamedTuple):
    """One row of the shared table."""

    name: str
    sealed: Sealed
    updated_at: datetime


class DbSecretsBackend(Protocol):
    async def version(self) -> int:
        """The table's version counter (moved by every write)."""
        ...

    async def load(self) -> tuple[int, list[StoredSecret]]:
        """Every row and the version they are as of (one snapshot)."""
        ...

    async def put(self, name: str, sealed: Sealed) -> None: ...

    async def delete(self, name: str) -> bool: ...

    async def close(self) -> None: ...


def per_node_warning(ref: str | None) -> str | None:
    """The readiness warning of a ``keyring:`` reference in cluster mode, else ``None``."""
    if ref is None:
        return None
    try:
        kind, _ = parse_secret_ref(ref)
    except SecretRefError:
        return None
    return PER_NODE_WARNING.format(ref=ref) if kind == "keyring" else None


def load_keys(settings: Settings, resolve: Callable[[str], str]) -> Keys | None:
    """The keys of ``[secrets] key_ref`` and ``previous_key_refs`` (``None`` without a
    ``key_ref``). ``resolve`` reads a reference (``SecretStore.resolve``). Raises
    ``SettingsError`` naming the setting and the reference, never the key."""
    ref = str(settings.get("secrets", "key_ref")).strip()
    if not ref:
        return None
    current = _read_key("secrets.key_ref", ref, resolve)
    previous = [
        _read_key("secrets.previous_key_refs", item.strip(), resolve)
        for item in str(settings.get("secrets", "previous_key_refs")).split(",") if item.strip()
    ]
    return Keys.of(current, previous)


def _read_key(setting: str, ref: str, resolve: Callable[[str], str]) -> bytes:
    try:
        kind, _ = parse_secret_ref(ref)
    except SecretRefError as exc:
        raise SettingsError(f"{setting}: {exc}") from None
    if kind not in ("env", "file"):
        raise SettingsError(
            f"{setting}: the key must come from env:VAR or file:PATH, the same on every node"
            f" (not {kind}:)")
    try:
        text = resolve(ref)
    except LookupError as exc:  # SecretNotFound: names the reference, never a value
        raise SettingsError(f"{setting}: {exc}") from None
    try:
        return parse_key(text)
    except KeyFormatError as exc:
        raise SettingsError(f"{setting}: the key {ref} holds {exc} (value not shown)") from None


class DbSecrets:
    """This node's copy of the ``db:`` secrets. ``get`` is safe from any thread; the rest
    runs on the event loop."""

    def __init__(self, keys: Keys, backend: DbSecretsBackend, *,
                 on_change: Callable[[frozenset[str]], None] | None = None,
                 poll_interval_s: float = POLL_INTERVAL_S) -> None:
        self.keys = keys
        self.backend = backend
        self.on_change = on_change
        self.poll_interval_s = poll_interval_s
        self.version = -1
        """The table's version the copy is as of (-1: never loaded)."""
        self.polls = 0
        """Polls done (each asked the version counter, or failed to)."""
        self.unavailable: str | None = None
        """Why the last poll failed, else ``None``."""
        self._rows: dict[str, StoredSecret] = {}
        self._open: dict[str, str] = {}
        self._lock = threading.Lock()
        self._polled = asyncio.Event()

    # -- reading (any thread) ------------------------------------------------------------

    def get(self, name: str) -> str:
        """The secret ``db:NAME`` holds; ``DbSecretNotFound`` when absent or unopenable."""
        with self._lock:
            held = self._open.get(name)
            row = self._rows.get(name)
        if held is not None:
            return held
        if row is None:
            raise DbSecretNotFound(f"db:{name}: no such secret in the database")
        from palyra_py.secrets.sealing import unseal

        try:
            secret = unseal(self.keys, name, row.sealed)
        except UnsealError as exc:
            raise DbSecretNotFound(str(exc)) from None
        with self._lock:
            if self._rows.get(name) is row:
                self._open[name] = secret
        return secret

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._rows)

    # -- keeping the copy ------------------------------------------------------------------

    def apply(self, version: int, rows: Sequence[StoredSecret]) -> frozenset[str]:
        """Replace the copy with ``rows`` (as of ``version``); the names whose secret
        changed (added, altered or removed)."""
        fresh = {row.name: row for row in rows}
        with self._lock:
            changed = {name for name in self._rows.keys() | fresh.keys()
                       if (self._rows.get(name) is None) != (fresh.get(name) is None)
                       or (name in fresh and self._rows[name].sealed != fresh[name].sealed)}
            self._rows = fresh
            for name in changed:
                self._open.pop(name, None)
            self.version = version
        return frozenset(changed)

    async def refresh(self) -> frozenset[str]:
        """Read the rows again if the version counter moved; tell ``on_change``. Raises
        ``DbSecretsUnavailable``."""
        if await self.backend.version() == self.version:
            return frozenset()
        version, rows = await self.backend.load()
        changed = self.apply(version, rows)
        if changed and self.on_change is not None and self.version >= 0:
            self.on_change(changed)
        return changed

    async def start(self) -> None:
        """The first load; raises ``DbSecretsUnavailable`` (the daemon does not start
        without the secrets it verifies with)."""
        version, rows = await self.backend.load()
        self.apply(version, rows)

    async def run(self) -> None:
        """Poll every ``poll_interval_s`` until cancelled."""
        while True:
            try:
                changed = await self.refresh()
                if changed:
                    log.info("db_secrets_refreshed", changed=len(changed), version=self.version)
                if self.unavailable is not None:
                    log.info("db_secrets_reachable_again")
                self.unavailable = None
            except DbSecretsUnavailable as exc:
                if self.unavailable is None:
                    log.warning("db_secrets_unreachable", error=str(exc),
                                hint="the secrets read last stay in force")
                self.unavailable = str(exc)
            self.polls += 1
            polled, self._polled = self._polled, asyncio.Event()
            polled.set()
            await asyncio.sleep(self.poll_interval_s)

    async def next_poll(self) -> None:
        """Return once the next poll is done (tests wait on this, never on a timer)."""
        await self._polled.wait()

    # -- writing ---------------------------------------------------------------------------

    async def put(self, name: str, secret: str) -> str:
        """Seal ``secret`` under the current key and store it as ``db:NAME`` (in force on
        this node at once, on the others within ``REFRESH_BOUND_S``)."""
        _, name = parse_secret_ref(f"db:{name}")
        sealed = seal(self.keys.current, name, secret)
        await self.backend.put(name, sealed)
        with self._lock:
            self._rows[name] = StoredSecret(name, sealed, datetime.now().astimezone())
            self._open[name] = secret
        self._changed(name)
        return f"db:{name}"

    async def delete(self, name: str) -> None:
        """Remove ``db:NAME``; an absent one is not an error."""
        _, name = parse_secret_ref(f"db:{name}")
        await self.backend.delete(name)
        with self._lock:
            self._rows.pop(name, None)
            self._open.pop(name, None)
        self._changed(name)

    def _changed(self, name: str) -> None:
        if self.on_change is not None:
            self.on_change(frozenset({name}))

    async def close(self) -> None:
        await self.backend.close()
