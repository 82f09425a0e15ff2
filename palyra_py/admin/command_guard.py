"""Commands only from the registry's owner: a registry import made with a token (the TCP
listener's ``POST /v1/registry/import``, git-ops from CI) may not add a subscription with
a command destination nor change one; it may remove one. On the admin socket (0600, the
daemon's user: the CLI) every edit is allowed, as it is by editing the file.

A token that can make the daemon run a program of its choosing is code execution as the
daemon's user; so no token, whatever its scopes, gets that (THREAT_MODEL.md, "Local
commands").
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from palyra_py.admin.errors import ApiError
from palyra_py.reasons import REGISTRY_ANSWERS
from palyra_py.registry.positions import RegistryError
from palyra_py.registry.subscriptions import Subscription, parse_subscriptions

__all__ = ["command_edits", "refuse_command_edits"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Written by the daemon itself (an edit, a disable): an export imported back may differ there.
_KEPT_BY_DAEMON = frozenset({"created_at", "updated_at", "enabled", "disabled_reason"})


def _view(sub: Subscription) -> dict[str, Any]:
    return {k: v for k, v in sub.to_dict().items() if k not in _KEPT_BY_DAEMON}


def command_edits(text: str, current: Mapping[str, Subscription]) -> list[str]:
    """The ids of the subscriptions with a command destination that the registry document
    ``text`` adds or changes against ``current``. A document that does not parse gives
    ``[]``: the import itself then refuses it, saying where."""
    try:
        subs = parse_subscriptions(tomllib.loads(text))
    except (tomllib.TOMLDecodeError, RegistryError, ValueError, TypeError):
        return []
    edits: list[str] = []
    for subscription_id, sub in subs.items():
        old = current.get(subscription_id)
        if (sub.command or (old is not None and old.command)) and (
                old is None or _view(old) != _view(sub)):
            edits.append(subscription_id)
    return edits


def refuse_command_edits(handler: Handler, current: Callable[[], Mapping[str, Subscription]]
                         ) -> Handler:
    """``handler`` (a token's registry import) refusing 403 ``command_needs_socket`` for a
    document that adds or changes a command subscription."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        raw = await request.read()  # kept by aiohttp: the handler reads it again
        try:
            body = json.loads(raw)
        except ValueError:
            return await handler(request)
        text = body.get("document") if isinstance(body, dict) else None
        if isinstance(text, str):
            edits = command_edits(text, current())
            if edits:
                code = "command_needs_socket"
                raise ApiError(REGISTRY_ANSWERS[code].status, code,
                               f"subscription {edits[0]!r} has a command destination: add or"
                               " change it with the CLI on the admin socket (palyra"
                               " subscriptions add/update) or in the file, not with a token",
                               field="document")
        return await handler(request)

    return guarded
