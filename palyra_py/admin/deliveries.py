"""Admin API: the delivery log (``/v1/deliveries``) and API tokens (``/v1/tokens``)."""

from __future__ import annotations

import asyncio
import secrets as random_secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from palyra_py.admin.context import DeliveriesContext
from palyra_py.admin.errors import ApiError, invalid, not_found, read_json_object
from palyra_py.admin.events import parse_int, parse_time_ms
from palyra_py.admin.records import registry_error
from palyra_py.admin.secrets import delete_ref, store_secret
from palyra_py.delivery.store import MAX_LIMIT, STATUSES
from palyra_py.registry.positions import RegistryError
from palyra_py.registry.tokens import (
    DEFAULT_SCOPES,
    MAX_EXPIRES_IN_S,
    ApiToken,
    add_token,
    format_token,
    new_token_id,
    remove_token,
    token_secret_ref,
    validate_token_fields,
)
from palyra_py.times import format_rfc3339


class DeliveriesApi:
    def __init__(self, context: DeliveriesContext) -> None:
        self.ctx = context

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/deliveries", self.list),
            web.get("/v1/deliveries/stats", self.stats),
            web.post("/v1/deliveries/recover", self.recover),
            web.post("/v1/deliveries/retry", self.retry_many),
            web.get("/v1/deliveries/{id}", self.show),
            web.post("/v1/deliveries/{id}/retry", self.retry),
            web.get("/v1/tokens", self.list_tokens),
            web.post("/v1/tokens", self.create_token),
            web.delete("/v1/tokens/{id}", self.revoke_token),
        ]

    async def list(self, request: web.Request) -> web.Response:
        q = request.query
        status = q.get("status") or None
        if status is not None and status not in STATUSES:
            raise invalid(f"status: one of {', '.join(STATUSES)}", "status")
        limit = parse_int(q.get("limit"), "limit", 100, 1, MAX_LIMIT)
        rows = await self.ctx.deliveries.list(
            subscription_id=q.get("subscription") or None, status=status,
            since_ms=parse_time_ms(q["since"], "since") if q.get("since") else None,
            until_ms=parse_time_ms(q["until"], "until") if q.get("until") else None,
            after=q.get("after") or None, limit=limit,
        )
        next_after = rows[-1].delivery_id if len(rows) == limit else None
        return web.json_response({"deliveries": [r.to_dict() for r in rows],
                                  "next_after": next_after})

    async def show(self, request: web.Request) -> web.Response:
        found = await self.ctx.deliveries.get(request.match_info["id"])
        if found is None:
            raise not_found(f"no delivery {request.match_info['id'][:40]!r}")
        delivery, attempts = found
        return web.json_response({"delivery": delivery.to_dict(),
                                  "attempts": [a.to_dict() for a in attempts]})

    async def retry(self, request: web.Request) -> web.Response:
        delivery_id = request.match_info["id"]
        found = await self.ctx.deliveries.get(delivery_id)
        if found is None:
            raise not_found(f"no delivery {delivery_id[:40]!r}")
        if found[0].subscription_id not in self.ctx.editor.registry.subscriptions:
            raise ApiError(409, "conflict", "its subscription no longer exists")
        # A succeeded one too: a redelivery (same webhook-id), as GitHub's "Redeliver".
        delivery = await self.ctx.deliveries.retry(delivery_id, self.ctx.time.now_ms())
        self.ctx.dispatcher.wake(everywhere=True)
        assert delivery is not None
        return web.json_response({"delivery": delivery.to_dict()})

    async def retry_many(self, request: web.Request) -> web.Response:
        """One page of a bulk retry: the deliveries of a subscription in one status after
        ``after`` (in id order), at most ``limit``, each made pending and due now."""
        body = await read_json_object(request)
        subscription_id = body.get("subscription_id")
        if not isinstance(subscription_id, str) or (
            subscription_id not in self.ctx.editor.registry.subscriptions
        ):
            raise not_found(f"no subscription {str(subscription_id)[:64]!r}")
        status = body.get("status")
        if status not in ("pending", "failed"):
            raise invalid("status: pending or failed", "status")
        after = body.get("after")
        if after is not None and not isinstance(after, str):
            raise invalid("after: a delivery id", "after")
        limit = body.get("limit", 100)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise invalid(f"limit: an integer from 1 to {MAX_LIMIT}", "limit")
        page = await self.ctx.deliveries.list(subscription_id=subscription_id, status=status,
                                              after=after, limit=limit)
        now_ms = self.ctx.time.now_ms()
        # Issued together: the SQLite writer commits them in one transaction.
        retried = await asyncio.gather(*(self.ctx.deliveries.retry(d.delivery_id, now_ms)
                                         for d in page))
        if page:
            self.ctx.dispatcher.wake(everywhere=True)
        return web.json_response({
            "retried": sum(1 for d in retried if d is not None),
            "next_after": page[-1].delivery_id if len(page) == limit else None,
        })

    async def recover(self, request: web.Request) -> web.Response:
        body = await read_json_object(request)
        subscription_id = body.get("subscription_id")
        if not isinstance(subscription_id, str) or (
            subscription_id not in self.ctx.editor.registry.subscriptions
        ):
            raise not_found(f"no subscription {str(subscription_id)[:64]!r}")
        if not isinstance(body.get("since"), str | int | float):
            raise invalid("since is required (RFC 3339 or unix seconds)", "since")
        since = parse_time_ms(str(body["since"]), "since")
        until = parse_time_ms(str(body["until"]), "until") if body.get("until") else None
        count = await self.ctx.deliveries.recover(subscription_id, since, until,
                                                  self.ctx.time.now_ms())
        self.ctx.dispatcher.wake(everywhere=True)
        return web.json_response({"recovered": count})

    async def stats(self, request: web.Request) -> web.Response:
        q = request.query
        since = parse_time_ms(q["since"], "since") if q.get("since") else None
        result: dict[str, Any] = await self.ctx.deliveries.stats(
            subscription_id=q.get("subscription") or None, since_ms=since)
        subscription_id = q.get("subscription") or None
        if subscription_id is None:
            age = await self.ctx.deliveries.oldest_pending_age_ms(self.ctx.time.now_ms())
        else:
            oldest = await self.ctx.deliveries.oldest_pending(subscription_id)
            age = None if oldest is None else max(0, self.ctx.time.now_ms() - oldest.created_ms)
        result["oldest_pending_age_ms"] = age
        return web.json_response(result)

    # -- tokens --------------------------------------------------------------------------

    def _token_dict(self, token: ApiToken) -> dict[str, Any]:
        out = token.to_dict()
        used = self.ctx.token_use.last_used(token.token_id)
        out["last_used_at"] = (None if used is None else format_rfc3339(
            datetime.fromtimestamp(used, UTC), timespec="auto"))
        return out

    async def list_tokens(self, request: web.Request) -> web.Response:
        tokens = sorted(self.ctx.editor.registry.tokens.values(), key=lambda t: t.token_id)
        return web.json_response({"tokens": [self._token_dict(t) for t in tokens]})

    async def create_token(self, request: web.Request) -> web.Response:
        body = await read_json_object(request)
        scopes = body.get("scopes", list(DEFAULT_SCOPES))
        if scopes is None:
            raise invalid("scopes: give 1 to 32 scopes (legacy tokens without scopes cannot"
                          " be created any more)", "scopes")
        expires_in = body.get("expires_in_s")
        if expires_in is not None and (
            isinstance(expires_in, bool) or not isinstance(expires_in, int)
            or not 0 < expires_in <= MAX_EXPIRES_IN_S
        ):
            raise invalid(f"expires_in_s: an integer from 1 to {MAX_EXPIRES_IN_S} (seconds)",
                          "expires_in_s")
        now = self.ctx.time.now_dt()
        token_id = new_token_id()
        fields = {"token_id": token_id, "name": body.get("name"),
                  "description": body.get("description", ""), "scopes": scopes,
                  "expires_at": None if expires_in is None else now + timedelta(
                      seconds=expires_in),
                  "secret_ref": token_secret_ref(token_id)}
        try:  # refused before the token is drawn and stored
            validate_token_fields(fields)
        except RegistryError as exc:
            raise registry_error(exc) from None
        secret = format_token(token_id, random_secrets.token_urlsafe(32))
        # In cluster mode with [secrets] key_ref a db: secret, so every node checks it.
        fields["secret_ref"] = await store_secret(self.ctx.secrets, f"token:{token_id}", secret,
                                                  self.ctx.secrets.new_secret_kind)
        try:
            await self.ctx.editor.edit_registry(lambda doc: add_token(doc, fields, now))
        except RegistryError as exc:
            await delete_ref(self.ctx.secrets, fields["secret_ref"])
            raise registry_error(exc) from None
        token = self.ctx.editor.registry.tokens[token_id]
        await self.ctx.appender.append(kind="daemon.token_created", source="admin",
                                       payload={"token_id": token_id, "name": token.name,
                                                "scopes": list(token.scopes or ())})
        return web.json_response({"token": self._token_dict(token), "secret": secret},
                                 status=201)

    async def revoke_token(self, request: web.Request) -> web.Response:
        token_id = request.match_info["id"]
        if token_id not in self.ctx.editor.registry.tokens:
            raise not_found(f"no token {token_id[:40]!r}")
        ref = self.ctx.editor.registry.tokens[token_id].secret_ref
        try:
            await self.ctx.editor.edit_registry(lambda doc: remove_token(doc, token_id))
        except RegistryError as exc:
            raise registry_error(exc) from None
        # The secret this daemon stored for it (the keyring's or a db: one), never another.
        if ref in (f"keyring:token:{token_id}", f"db:token:{token_id}"):
            await delete_ref(self.ctx.secrets, ref)
        await self.ctx.appender.append(kind="daemon.token_revoked", source="admin",
                                       payload={"token_id": token_id})
        return web.json_response({"status": "revoked", "token_id": token_id})
