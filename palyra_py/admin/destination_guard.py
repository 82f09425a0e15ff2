"""Commands and email recipients only from the registry's owner: a registry import made
with a token (the TCP listener's ``POST /v1/registry/import``, git-ops from CI) may not add
a subscription with a command or an email destination nor change one; it may remove one.
On the admin socket (0600, the daemon's user: the CLI) every edit is allowed, as it is by
editing the file.

A token that can make the daemon run a program of its choosing is code execution as the
daemon's user; one that can choose where mail goes makes the operator's SMTP relay (its
login, its ``from``, its domain's reputation) send what any publisher writes to any
address. So no token, whatever its scopes, gets either (THREAT_MODEL.md, "Local commands"
and "Email").
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple

from aiohttp import web

from palyra_py.admin.errors import ApiError
from palyra_py.reasons import REGISTRY_ANSWERS
from palyra_py.registry.positions import RegistryError
from palyra_py.registry.subscriptions import Subscription, parse_subscriptions

__all__ = ["GuardedEdit", "guarded_edits", "refuse_guarded_edits"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Written by the daemon itself (an edit, a disable): an export imported back may differ there.
_KEPT_BY_DAEMON = frozenset({"created_at", "updated_at", "enabled", "disabled_reason"})
# The destinations a token may not set, each with its refusal (REGISTRY_ANSWERS).
_GUARDED: dict[str, str] = {"command": "command_needs_socket", "email": "email_needs_socket"}


class GuardedEdit(NamedTuple):
    subscription_id: str
    destination: str
    """``command`` or ``email``: the guarded destination it has, or had before."""

    @property
    def code(self) -> str:
        return _GUARDED[self.destination]


def _view(sub: Subscription) -> dict[str, Any]:
    return {k: v for k, v in sub.to_dict().items() if k not in _KEPT_BY_DAEMON}


def _guarded(sub: Subscription | None) -> str | None:
    if sub is None:
        return None
    return sub.destination if sub.destination in _GUARDED else None


def guarded_edits(text: str, current: Mapping[str, Subscription]) -> list[GuardedEdit]:
    """The subscriptions with a command or an email destination (now, or in ``current``)
    that the registry document ``text`` adds or changes against ``current``. A document
    that does not parse gives ``[]``: the import itself then refuses it, saying where."""
    try:
        subs = parse_subscriptions(tomllib.loads(text))
    except (tomllib.TOMLDecodeError, RegistryError, ValueError, TypeError):
        return []
    edits: list[GuardedEdit] = []
    for subscription_id, sub in subs.items():
        old = current.get(subscription_id)
        destination = _guarded(sub) or _guarded(old)
        if destination is not None and (old is None or _view(old) != _view(sub)):
            edits.append(GuardedEdit(subscription_id, destination))
    return edits


def refuse_guarded_edits(handler: Handler, current: Callable[[], Mapping[str, Subscription]]
                         ) -> Handler:
    """``handler`` (a token's registry import) refusing 403 ``command_needs_socket`` or
    ``email_needs_socket`` for a document that adds or changes such a subscription."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        raw = await request.read()  # kept by aiohttp: the handler reads it again
        try:
            body = json.loads(raw)
        except ValueError:
            return await handler(request)
        text = body.get("document") if isinstance(body, dict) else None
        if isinstance(text, str):
            edits = guarded_edits(text, current())
            if edits:
                first = edits[0]
                what = "a command" if first.destination == "command" else "an email"
                raise ApiError(REGISTRY_ANSWERS[first.code].status, first.code,
                               f"subscription {first.subscription_id!r} has {what}"
                               " destination: add or change it with the CLI on the admin"
                               " socket (palyra subscriptions add/update) or in the file,"
                               " not with a token", field="document")
        return await handler(request)

    return guarded
