"""Secrets as the admin API handles them, for integrations and subscriptions alike: where a
new secret comes from (generated, given, or a reference), storing it in the keyring (or, in
cluster mode with ``[secrets] key_ref``, as a ``db:`` secret every node reads), and
rotation with a grace period during which the previous secret still counts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from palyra_py.admin.errors import ApiError, invalid
from palyra_py.secrets.refs import SecretRefError, parse_secret_ref
from palyra_py.secrets.shared import DbSecretsUnavailable
from palyra_py.secrets.store import SecretNotFound, SecretStore
from palyra_py.times import format_rfc3339

MAX_GRACE_S = 30 * 86400


@dataclass(frozen=True, slots=True)
class SecretChoice:
    value: str | None
    """A secret to store in the keyring (generated or given)."""
    ref: str | None
    """An existing reference to use as is."""
    generated: bool


def secret_choice(
    body: Mapping[str, Any],
    generate: Callable[[], str],
    check_value: Callable[[str], None] | None = None,
) -> SecretChoice | None:
    """Read ``body["secret"]`` (``{generate: true} | {value} | {ref}``); ``None`` if absent.
    ``check_value`` raises ``ValueError`` for a value of the wrong form."""
    spec = body.get("secret")
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise invalid("secret must be an object: {generate: true} | {value} | {ref}", "secret")
    given = [k for k in ("generate", "value", "ref") if spec.get(k) not in (None, False)]
    if len(given) != 1:
        raise invalid("give exactly one of secret.generate, secret.value, secret.ref", "secret")
    if given == ["generate"]:
        return SecretChoice(generate(), None, True)
    if given == ["value"]:
        value = spec["value"]
        if not isinstance(value, str) or not value or len(value) > 4096:
            raise invalid("secret.value must be a non-empty string of at most 4096 chars",
                          "secret.value")
        if check_value is not None:
            try:
                check_value(value)
            except ValueError as exc:
                raise invalid(f"secret.value: {exc}", "secret.value") from None
        return SecretChoice(value, None, False)
    ref = str(spec["ref"])
    try:
        parse_secret_ref(ref)
    except SecretRefError as exc:
        raise invalid(str(exc), "secret.ref") from None
    return SecretChoice(None, ref, False)


async def store_secret(store: SecretStore, name: str, value: str,
                       kind: Literal["keyring", "db"] = "keyring") -> str:
    """Store in the keyring, or as ``db:NAME`` (``kind``, when the store has its ``db:``
    secrets); return the reference. A failure is a 422 ``secret_error`` that names where
    and the error class, never the value."""
    try:
        if kind == "db" and store.db is not None:
            return await store.db.put(name, value)
        return await asyncio.to_thread(store.store, name, value)
    except DbSecretsUnavailable as exc:
        raise ApiError(422, "secret_error", f"could not store db:{name}: {exc}") from None
    except Exception as exc:
        raise ApiError(
            422, "secret_error",
            f"could not store the secret in {store.backend_name}: {type(exc).__name__}",
        ) from None


async def delete_ref(store: SecretStore, ref: str | None) -> None:
    """Remove what a ``keyring:`` or ``db:`` reference names (an ``env:`` or ``file:`` one
    is the operator's, and a malformed one names nothing); an absent one is not an
    error."""
    if ref is None:
        return
    try:
        kind, name = parse_secret_ref(ref)
    except SecretRefError:
        return
    if kind in ("keyring", "db"):
        await delete_secret(store, kind, name)
    store.forget_cached(ref)


async def delete_secret(store: SecretStore, kind: str, name: str) -> None:
    """Remove ``kind:name`` (``keyring`` or ``db``); an absent one is not an error."""
    if kind == "db":
        if store.db is not None:
            await store.db.delete(name)
        return
    await asyncio.to_thread(store.delete, name)


def grace_seconds(body: Mapping[str, Any]) -> float:
    grace = body.get("grace_s", 86400)
    if isinstance(grace, bool) or not isinstance(grace, int | float) or not (
        0 <= grace <= MAX_GRACE_S
    ):
        raise invalid(f"grace_s must be a number of seconds from 0 to {MAX_GRACE_S}", "grace_s")
    return float(grace)


@dataclass(frozen=True, slots=True)
class Rotation:
    changes: dict[str, Any]
    """Registry changes: secret_ref, previous_secret_ref, previous_valid_until."""
    until: datetime | None
    replaced: tuple[tuple[str, str | None], ...] = ()
    """Names written (keyring or ``db:``, as ``kind``), each with what it held before
    (``None``: nothing)."""
    kind: Literal["keyring", "db"] = "keyring"

    async def undo(self, store: SecretStore) -> None:
        """Put the secrets back as they were: for when the registry edit that was to go
        with the rotation is refused, so that the registry's references still find the
        secrets the senders and receivers use."""
        for name, before in reversed(self.replaced):
            if before is None:
                with contextlib.suppress(Exception):
                    await delete_secret(store, self.kind, name)
            else:
                await store_secret(store, name, before, self.kind)
        store.forget_cached()


async def rotate(
    store: SecretStore,
    record: Callable[[dict[str, Any]], Awaitable[None]],
    *,
    current_name: str,
    old_ref: str | None,
    choice: SecretChoice,
    grace_s: float,
    now: datetime,
    kind: Literal["keyring", "db"] = "keyring",
) -> Rotation:
    """Put the new secret in place, then ``record(changes)`` (the registry edit). A
    current secret held where the new one goes (``<kind>:<current_name>``, ``kind`` the
    keyring or ``db``) is first copied to ``<current_name>:previous`` so both count during
    the grace period (a secret held elsewhere keeps its reference as the previous one).
    If the edit is refused (``ApiError``), the writes are undone, so the registry's
    references still find the secrets in use, and the error goes on."""
    prev_ref = old_ref
    new_ref = choice.ref
    replaced: list[tuple[str, str | None]] = []
    if choice.value is not None:
        old_value = await _held(store, f"{kind}:{current_name}")
        if old_ref == f"{kind}:{current_name}" and grace_s > 0:
            previous_name = f"{current_name}:previous"
            if old_value is not None:
                replaced.append((previous_name, await _held(store, f"{kind}:{previous_name}")))
            prev_ref = (await store_secret(store, previous_name, old_value, kind)
                        if old_value is not None else None)
        replaced.append((current_name, old_value))
        new_ref = await store_secret(store, current_name, choice.value, kind)
    store.forget_cached()
    until = now + timedelta(seconds=grace_s) if grace_s > 0 and prev_ref else None
    rotation = Rotation(
        {"secret_ref": new_ref, "previous_secret_ref": prev_ref if until else None,
         "previous_valid_until": until},
        until, tuple(replaced), kind,
    )
    try:
        await record(rotation.changes)
    except ApiError:
        await rotation.undo(store)
        raise
    return rotation


async def _held(store: SecretStore, ref: str) -> str | None:
    try:
        return await asyncio.to_thread(store.resolve, ref)
    except (SecretNotFound, SecretRefError):
        return None


def rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    return format_rfc3339(value, timespec="auto")
