"""Admin API: outbound subscriptions (``/v1/subscriptions``)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

from aiohttp import web

from palyra_py.admin.context import RegistryChange, SubscriptionsContext
from palyra_py.admin.errors import ApiError, invalid, read_json_object
from palyra_py.admin.records import edit_registry, path_id, refuse_fields, validated
from palyra_py.admin.secrets import (
    SecretChoice,
    delete_ref,
    delete_secret,
    grace_seconds,
    rfc3339,
    rotate,
    secret_choice,
    store_secret,
)
from palyra_py.delivery.records import AttemptRecord
from palyra_py.ids import new_ulid
from palyra_py.outbound.signing import StandardWebhooksSigner, generate_subscription_secret
from palyra_py.outbound.urls import check_url
from palyra_py.registry.subscriptions import (
    COMMAND_FIELDS,
    DEFAULT_OWNER,
    add_subscription,
    is_credential_header,
    is_credential_url,
    is_ref,
    is_url_ref,
    left_behind,
    remove_subscription,
    update_subscription,
    validate_subscription_fields,
)
from palyra_py.secrets.refs import SecretRefError
from palyra_py.secrets.store import SecretNotFound
from palyra_py.times import format_unix_ms

TEST_POLL_S = 0.1
"""Cluster mode, a test asked of a node that does not deliver the subscription: how often
it looks for the first attempt in the shared store."""

EDITABLE = (
    "url", "events", "filter", "enabled", "owner", "rate_limit_per_s", "max_in_flight",
    "ordered", "format", "signature_format", "timeout_s", "retry_schedule", "headers",
    "description", *COMMAND_FIELDS, "email",
)


def keyring_name(subscription_id: str) -> str:
    return f"subscription:{subscription_id}"


def url_keyring_name(subscription_id: str) -> str:
    return f"subscription-url:{subscription_id}"


_HEADER_SLUG = re.compile(r"[a-z0-9._-]{1,48}")


def header_keyring_name(subscription_id: str, header: str) -> str:
    """Where a credential header value of a subscription is kept:
    ``subscription-header:<id>:<header, lowercased>`` (a header name with characters a
    keyring name cannot hold, or a long one, by the start of its SHA-256 instead)."""
    lower = header.lower()
    slug = lower if _HEADER_SLUG.fullmatch(lower) else (
        "h-" + hashlib.sha256(lower.encode()).hexdigest()[:16])
    return f"subscription-header:{subscription_id}:{slug}"


def env_keyring_name(subscription_id: str, variable: str) -> str:
    """Where a credential ``env`` value of a command subscription is kept:
    ``subscription-env:<id>:<VARIABLE>`` (variable names are keyring-safe)."""
    return f"subscription-env:{subscription_id}:{variable}"


def is_credential_env(variable: str) -> bool:
    """Whether an ``env`` variable's name says it holds a credential (``*TOKEN*``,
    ``*SECRET*``, ``*PASSWORD*``, ``*KEY*``, ``*AUTH*``...): its plain value is then kept
    in the keyring and the registry holds the reference."""
    return is_credential_header(variable.replace("_", "-"), "")


def journal_url(url: str) -> str:
    """What the journal may say of a subscription's URL (any token that reads the journal
    sees it): a secret reference as is; a plain URL as its scheme, host and port, the
    path and query (which may hold a credential) masked as ``/...``."""
    if is_ref(url):
        return url
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}"
    return origin + ("/..." if url[len(origin):] not in ("", "/") else "/")


# Their incoming-webhook URLs are credentials: kept in the keyring unless asked otherwise.
URL_IN_KEYRING_FORMATS = frozenset({"slack", "discord"})


def url_in_keyring(body: dict[str, Any], payload_format: str, url: str = "") -> bool:
    """``body["url_in_keyring"]`` if given (a boolean), else whether the URL carries a
    credential: the format's URLs do (Slack, Discord), and so does one with a
    credential-looking query parameter (``?token=``, ``?api_key=``, ``?sig=``...)."""
    choice = body.get("url_in_keyring")
    if choice is None:
        return payload_format in URL_IN_KEYRING_FORMATS or is_credential_url(url)
    if not isinstance(choice, bool):
        raise invalid("url_in_keyring must be true or false", "url_in_keyring")
    return choice


def unsigned_noun(fields: Mapping[str, Any]) -> str:
    """What a subscription without signing sends, for messages: a command's run or an
    email."""
    return "a command destination" if fields.get("command") else "an email destination"


def check_whsec(value: str) -> None:
    StandardWebhooksSigner([value])  # raises ValueError for anything but whsec_<base64>


class SubscriptionsApi:
    def __init__(self, context: SubscriptionsContext) -> None:
        self.ctx = context

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/subscriptions", self.list),
            web.post("/v1/subscriptions", self.add),
            web.get("/v1/subscriptions/{id}", self.show),
            web.patch("/v1/subscriptions/{id}", self.patch),
            web.delete("/v1/subscriptions/{id}", self.remove),
            web.post("/v1/subscriptions/{id}/enable", self.enable),
            web.post("/v1/subscriptions/{id}/disable", self.disable),
            web.post("/v1/subscriptions/{id}/rotate-secret", self.rotate_secret),
            web.post("/v1/subscriptions/{id}/test", self.test),
        ]

    def _id(self, request: web.Request) -> str:
        return path_id(request, self.ctx.editor.registry.subscriptions, noun="subscription",
                       field="subscription_id")

    async def _public(self, subscription_id: str) -> dict[str, Any]:
        sub = self.ctx.editor.registry.subscriptions[subscription_id]
        data = sub.to_dict()
        last_success, failing_since = await self.ctx.deliveries.health(subscription_id)
        data["health"] = {
            "last_success_at": format_unix_ms(last_success) if last_success else None,
            "failing_since": format_unix_ms(failing_since) if failing_since else None,
        }
        data["pending"] = await self.ctx.deliveries.pending_count(subscription_id)
        return data

    async def _edit(self, change: RegistryChange) -> None:
        await edit_registry(self.ctx.editor, change, noun="subscription")
        self.ctx.dispatcher.wake()

    @property
    def _kind(self) -> Literal["keyring", "db"]:
        """Where this node keeps the secrets it is given or makes: ``db`` in cluster mode
        with ``[secrets] key_ref`` (every node reads them), else the keyring."""
        return self.ctx.secrets.new_secret_kind

    async def _store_url(self, subscription_id: str, url: str) -> str:
        """Keep ``url`` as a secret; return the reference the registry holds instead."""
        ref = await store_secret(self.ctx.secrets, url_keyring_name(subscription_id), url,
                                 self._kind)
        self.ctx.secrets.forget_cached(ref)
        return ref

    async def _drop_new(self, subscription_id: str, secret: bool, url: bool) -> None:
        """Delete the signing secret and the URL an add stored, when the add fails."""
        for name, stored in ((keyring_name(subscription_id), secret),
                             (url_keyring_name(subscription_id), url)):
            if stored:
                await delete_secret(self.ctx.secrets, self._kind, name)

    async def _held(self, ref: str) -> str | None:
        with contextlib.suppress(SecretNotFound, SecretRefError):
            return await asyncio.to_thread(self.ctx.secrets.resolve, ref)
        return None

    async def _undo_writes(self, writes: list[tuple[str, str | None]]) -> None:
        """Put the secrets back as they were (``None``: there was none)."""
        for name, before in reversed(writes):
            if before is None:
                with contextlib.suppress(Exception):
                    await delete_secret(self.ctx.secrets, self._kind, name)
            else:
                await store_secret(self.ctx.secrets, name, before, self._kind)
        self.ctx.secrets.forget_cached()

    async def _keep_headers(
        self, subscription_id: str, headers: Mapping[str, str], current: Mapping[str, str],
        *, kind: Literal["header", "env"] = "header",
    ) -> tuple[dict[str, str], list[tuple[str, str | None]]]:
        """``headers`` with each credential-looking plain value (``Authorization``,
        ``X-Api-Key``, ``*token*``, ``Bearer ...``) stored in the keyring and replaced by
        its reference; and the keyring writes made, each with what the entry held before
        (for ``_undo_writes``). ``current``: the headers the registry holds now."""
        out = dict(headers)
        writes: list[tuple[str, str | None]] = []
        try:
            for header, value in headers.items():
                credential = (is_credential_header(header, value) if kind == "header"
                              else is_credential_env(header))
                if is_ref(value) or not credential:
                    continue
                name = (header_keyring_name(subscription_id, header) if kind == "header"
                        else env_keyring_name(subscription_id, header))
                ref = f"{self._kind}:{name}"
                writes.append((name, await self._held(ref) if ref in current.values() else None))
                out[header] = await store_secret(self.ctx.secrets, name, value, self._kind)
                self.ctx.secrets.forget_cached(ref)
        except ApiError:
            await self._undo_writes(writes)
            raise
        return out, writes

    async def _drop_header_secrets(self, subscription_id: str, before: Mapping[str, str],
                                   after: Mapping[str, str], kind: str = "header") -> None:
        """Delete the secrets of header values ``before`` held and ``after`` does not (a
        header removed, or given a value of its own): those this daemon stored."""
        own = tuple(f"{store}:subscription-{kind}:{subscription_id}:"
                    for store in ("keyring", "db"))
        for value in set(before.values()) - set(after.values()):
            if value.startswith(own):
                await delete_ref(self.ctx.secrets, value)

    def _check_email_configured(self, fields: Mapping[str, Any]) -> None:
        if fields.get("email") and not self.ctx.settings.get("email", "host"):
            raise invalid("email: this daemon has no SMTP server: set [email] host and from"
                          " in palyra.toml (docs/settings.md) first", field="email")

    def _check_owner_limit(self, owner: str) -> None:
        """Refuse one more subscription for ``owner`` when ``[delivery]
        max_subscriptions_per_owner`` is set (0, the default: no limit) and reached."""
        limit = self.ctx.settings.get("delivery", "max_subscriptions_per_owner")
        if not limit:
            return
        owned = sum(1 for s in self.ctx.editor.registry.subscriptions.values() if s.owner == owner)
        if owned >= limit:
            raise ApiError(422, "limit_reached",
                           f"owner {owner!r} has {owned} subscriptions; the limit is {limit} "
                           "([delivery] max_subscriptions_per_owner)", field="owner")

    def _check_https_only(self, url: str) -> None:
        # A reference is checked once resolved, at send time.
        if self.ctx.settings.get("delivery", "https_only") and not is_url_ref(url):
            problem = check_url(url, https_only=True)
            if problem is not None:
                raise invalid(f"url: {problem}", field="url")

    async def _journal(self, kind: str, subscription_id: str, payload: dict[str, Any]) -> None:
        await self.ctx.appender.append(kind=kind, source="admin", event_type=kind,
                                       payload={"subscription_id": subscription_id, **payload})

    async def list(self, request: web.Request) -> web.Response:
        ids = sorted(self.ctx.editor.registry.subscriptions)
        return web.json_response({"subscriptions": [await self._public(i) for i in ids]})

    async def show(self, request: web.Request) -> web.Response:
        return web.json_response({"subscription": await self._public(self._id(request))})

    @staticmethod
    def _signing_choice(body: Mapping[str, Any], fields: Mapping[str, Any]
                        ) -> SecretChoice | None:
        """The signing secret of a new subscription: given or generated for a URL; none for
        a command or an email destination (nothing is signed: 400 for a ``secret``)."""
        if "url" not in fields:
            if body.get("secret") is not None:
                raise invalid(f"{unsigned_noun(fields)} is not signed: give no secret",
                              "secret")
            return None
        return secret_choice(body, generate_subscription_secret, check_whsec) or SecretChoice(
            generate_subscription_secret(), None, True)

    async def _drop_own_secrets(self, subscription_id: str, *refs: str | None) -> None:
        """Delete the signing secrets and URL among ``refs`` that the daemon stored for
        this subscription (the keyring's or ``db:``); references to secrets kept
        elsewhere are left alone."""
        name = keyring_name(subscription_id)
        own = {f"{kind}:{n}" for kind in ("keyring", "db")
               for n in (name, f"{name}:previous", url_keyring_name(subscription_id))}
        for ref in refs:
            if ref in own:
                await delete_ref(self.ctx.secrets, ref)

    async def add(self, request: web.Request) -> web.Response:
        body = await read_json_object(request)
        fields = {k: body[k] for k in ("subscription_id", *EDITABLE) if k in body}
        refuse_fields(set(body) - set(fields) - {"secret", "url_in_keyring"},
                      "unknown field(s)")
        fields = validated(validate_subscription_fields, fields)
        self._check_email_configured(fields)
        url = fields.get("url", "")
        if url:
            self._check_https_only(url)
        subscription_id = fields["subscription_id"]
        keep_url = bool(url) and (not is_url_ref(url) and url_in_keyring(
            body, fields.get("format", "standard"), url))
        if subscription_id in self.ctx.editor.registry.subscriptions:
            raise ApiError(409, "conflict", f"subscription {subscription_id!r} already exists",
                           field="subscription_id")
        self._check_owner_limit(fields.get("owner", DEFAULT_OWNER))
        choice = self._signing_choice(body, fields)
        if choice is not None:
            ref = choice.ref
            if choice.value is not None:
                ref = await store_secret(self.ctx.secrets, keyring_name(subscription_id),
                                         choice.value, self._kind)
                self.ctx.secrets.forget_cached(ref)
            fields["secret_ref"] = ref
        stored_secret = choice is not None and choice.value is not None
        header_writes: list[tuple[str, str | None]] = []
        try:
            if keep_url:
                fields["url"] = await self._store_url(subscription_id, fields["url"])
            if fields.get("headers"):
                fields["headers"], header_writes = await self._keep_headers(
                    subscription_id, fields["headers"], {})
            if fields.get("env"):
                fields["env"], env_writes = await self._keep_headers(
                    subscription_id, fields["env"], {}, kind="env")
                header_writes += env_writes
        except ApiError:
            await self._drop_new(subscription_id, stored_secret, keep_url)
            raise
        # The subscription starts with the next event, not with the journal's history.
        await self.ctx.dispatcher.start_at_head(subscription_id)
        now = self.ctx.time.now_dt()
        try:
            await self._edit(lambda doc: add_subscription(doc, fields, now))
        except ApiError:
            await self._drop_new(subscription_id, stored_secret, keep_url)
            await self._undo_writes(header_writes)
            raise
        # Any token may read the journal: a reference, or the URL's origin only.
        # A command's arguments may say more than its program: only the program.
        where: dict[str, Any] = (
            {"url": journal_url(fields["url"])} if "url" in fields
            else {"email": list(fields["email"])} if "email" in fields
            else {"command": fields["command"][0]})
        await self._journal("subscription.created", subscription_id,
                            {**where, "events": list(fields.get("events", ()))})
        answer: dict[str, Any] = {"subscription": await self._public(subscription_id)}
        if choice is not None and choice.generated:
            answer["secret"] = choice.value
        return web.json_response(answer, status=201)

    async def patch(self, request: web.Request) -> web.Response:
        subscription_id = self._id(request)
        body = await read_json_object(request)
        refuse_fields(set(body) - set(EDITABLE) - {"url_in_keyring"},
                      "field(s) not editable here")
        sub = self.ctx.editor.registry.subscriptions[subscription_id]
        current = sub.to_dict()
        # null resets a field; a new destination drops the old one's fields (its url or
        # command, and what only it may have) unless the body says otherwise.
        body.update(dict.fromkeys(left_behind(sub, body)))
        merged = {**current, **body}
        check = {k: merged[k] for k in ("subscription_id", *EDITABLE) if k in merged}
        normalised = validated(validate_subscription_fields, check)
        changes = {k: (None if body[k] is None else normalised.get(k)) for k in body
                   if k != "url_in_keyring"}
        new_owner = normalised.get("owner", DEFAULT_OWNER)
        if "owner" in changes and new_owner != sub.owner:
            self._check_owner_limit(new_owner)
        if changes.get("email"):
            self._check_email_configured(normalised)
        if changes.get("url"):
            self._check_https_only(normalised["url"])
        # A URL given, or one already there that the new format (or url_in_keyring) wants
        # kept in the keyring, goes there.
        stored: tuple[str, str | None] | None = None  # (the reference, what it held before)
        if (({"url", "format", "url_in_keyring"} & set(body))
                and normalised.get("url")
                and not is_url_ref(normalised["url"])
                and url_in_keyring(body, normalised.get("format", "standard"),
                                   normalised["url"])):
            ref = f"{self._kind}:{url_keyring_name(subscription_id)}"
            before = None
            if current["url"] == ref:
                with contextlib.suppress(SecretNotFound, SecretRefError):
                    before = await asyncio.to_thread(self.ctx.secrets.resolve, ref)
            changes["url"] = await self._store_url(subscription_id, normalised["url"])
            stored = (ref, before)
        old_sub = self.ctx.editor.registry.subscriptions[subscription_id]
        # A switch of destination: a URL gets a signing secret, the others have none.
        new_secret: str | None = None
        dropped: tuple[str | None, ...] = ()
        if "url" in normalised and old_sub.destination != "url" and old_sub.secret_ref is None:
            new_secret = generate_subscription_secret()  # stored just before the edit
        elif "url" not in normalised and (old_sub.secret_ref or old_sub.previous_secret_ref):
            dropped = (old_sub.secret_ref, old_sub.previous_secret_ref)
            changes.update(secret_ref=None, previous_secret_ref=None,
                           previous_valid_until=None)
        old_headers = old_sub.headers
        header_writes: list[tuple[str, str | None]] = []
        given_headers = changes.get("headers")
        if given_headers:
            changes["headers"], header_writes = await self._keep_headers(
                subscription_id, given_headers, old_headers)
        old_env = self.ctx.editor.registry.subscriptions[subscription_id].env
        given_env = changes.get("env")
        if given_env:
            try:
                changes["env"], env_writes = await self._keep_headers(
                    subscription_id, given_env, old_env, kind="env")
            except ApiError:
                await self._undo_writes(header_writes)
                raise
            header_writes += env_writes
        if new_secret is not None:
            try:
                changes["secret_ref"] = await store_secret(
                    self.ctx.secrets, keyring_name(subscription_id), new_secret, self._kind)
            except ApiError:
                await self._undo_writes(header_writes)
                raise
            self.ctx.secrets.forget_cached(changes["secret_ref"])
        now = self.ctx.time.now_dt()
        try:
            await self._edit(lambda doc: update_subscription(doc, subscription_id, changes, now))
        except ApiError:
            if stored is not None:  # the registry did not change: neither may its URL
                ref, before = stored
                if before is not None:
                    await self._store_url(subscription_id, before)
                else:
                    await delete_ref(self.ctx.secrets, ref)
            await self._undo_writes(header_writes)
            if new_secret is not None:
                await self._drop_own_secrets(subscription_id, changes["secret_ref"])
            raise
        await self._drop_own_secrets(subscription_id, *dropped)
        if changes.get("url", sub.url) != sub.url:
            await self._drop_own_secrets(subscription_id, sub.url)  # another destination now
        if "headers" in changes:
            await self._drop_header_secrets(subscription_id, old_headers,
                                            changes["headers"] or {})
        if "env" in changes:
            await self._drop_header_secrets(subscription_id, old_env, changes["env"] or {},
                                            kind="env")
        self.ctx.dispatcher.forget_cursor(subscription_id)
        await self._journal("subscription.updated", subscription_id,
                            {"changed": sorted(changes)})
        answer: dict[str, Any] = {"subscription": await self._public(subscription_id)}
        if new_secret is not None:
            answer["secret"] = new_secret  # shown this once, as on an add
        return web.json_response(answer)

    async def remove(self, request: web.Request) -> web.Response:
        subscription_id = self._id(request)
        sub = self.ctx.editor.registry.subscriptions[subscription_id]
        await self._edit(lambda doc: remove_subscription(doc, subscription_id))
        await self.ctx.deliveries.forget_subscription(subscription_id,
                                                      now_ms=self.ctx.time.now_ms())
        self.ctx.dispatcher.forget_cursor(subscription_id)
        await self._drop_own_secrets(subscription_id, sub.secret_ref, sub.previous_secret_ref,
                                     sub.url)
        await self._drop_header_secrets(subscription_id, sub.headers, {})
        await self._drop_header_secrets(subscription_id, sub.env, {}, kind="env")
        self.ctx.secrets.forget_cached()
        await self._journal("subscription.deleted", subscription_id, {})
        return web.json_response({"status": "deleted", "subscription_id": subscription_id})

    async def enable(self, request: web.Request) -> web.Response:
        subscription_id = self._id(request)
        body = await read_json_object(request)
        catch_up = body.get("catch_up", False)
        if not isinstance(catch_up, bool):
            raise invalid("catch_up must be true or false", "catch_up")
        if not catch_up:
            await self.ctx.dispatcher.start_at_head(subscription_id)
        now = self.ctx.time.now_dt()
        await self._edit(lambda doc: update_subscription(
            doc, subscription_id, {"enabled": True, "disabled_reason": None}, now))
        self.ctx.dispatcher.forget_cursor(subscription_id)
        await self._journal("subscription.enabled", subscription_id, {"catch_up": catch_up})
        return web.json_response({"subscription": await self._public(subscription_id)})

    async def disable(self, request: web.Request) -> web.Response:
        subscription_id = self._id(request)
        await self.ctx.switch.disable_subscription(subscription_id, "disabled by an operator")
        return web.json_response({"subscription": await self._public(subscription_id)})

    async def _first_attempt(self, first: asyncio.Future[AttemptRecord], subscription_id: str,
                             event_id: str, since_ms: int) -> AttemptRecord:
        """The test event's first attempt: as this node's dispatcher makes it or, in
        cluster mode while another node holds the subscription's lease, as that node
        recorded it in the shared delivery store (looked for every 0.1 s)."""
        while True:
            if not self.ctx.dispatcher.delivers(subscription_id):
                recorded = await self._recorded_first(subscription_id, event_id, since_ms)
                if recorded is not None:
                    return recorded
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(asyncio.shield(first), TEST_POLL_S)

    async def _recorded_first(self, subscription_id: str, event_id: str, since_ms: int
                              ) -> AttemptRecord | None:
        made = await self.ctx.deliveries.list(subscription_id=subscription_id,
                                              since_ms=since_ms, limit=1000)
        for delivery in made:
            if delivery.event_id == event_id and delivery.attempts > 0:
                found = await self.ctx.deliveries.get(delivery.delivery_id)
                if found is not None and found[1]:
                    return found[1][0]
        return None

    async def rotate_secret(self, request: web.Request) -> web.Response:
        subscription_id = self._id(request)
        sub = self.ctx.editor.registry.subscriptions[subscription_id]
        if sub.destination != "url":
            raise ApiError(409, "not_signed",
                           f"subscription {subscription_id!r} has a {sub.destination}"
                           " destination: nothing it sends is signed, so it has no secret to"
                           " rotate")
        body = await read_json_object(request)
        grace = grace_seconds(body)
        choice = secret_choice(body, generate_subscription_secret, check_whsec) or SecretChoice(
            generate_subscription_secret(), None, True)
        now = self.ctx.time.now_dt()
        rotation = await rotate(
            self.ctx.secrets,
            lambda changes: self._edit(
                lambda doc: update_subscription(doc, subscription_id, changes, now)),
            current_name=keyring_name(subscription_id), old_ref=sub.secret_ref, choice=choice,
            grace_s=grace, now=now, kind=self._kind)
        self.ctx.dispatcher.forget_cursor(subscription_id)
        await self._journal("subscription.secret_rotated", subscription_id,
                            {"grace_s": grace, "previous_valid_until": rfc3339(rotation.until)})
        answer: dict[str, Any] = {"subscription": await self._public(subscription_id),
                                  "previous_valid_until": rfc3339(rotation.until)}
        if choice.generated:
            answer["secret"] = choice.value
        return web.json_response(answer)

    async def test(self, request: web.Request) -> web.Response:
        """Publish ``palyra.test`` to this subscription alone and wait for its first attempt."""
        subscription_id = self._id(request)
        sub = self.ctx.editor.registry.subscriptions[subscription_id]
        if not sub.enabled:
            raise ApiError(409, "conflict", f"subscription {subscription_id!r} is disabled")
        body = await read_json_object(request)
        data = body.get("data", {"message": "a test event from palyra"})
        if not isinstance(data, dict):
            raise invalid("data must be a JSON object", "data")
        event_id = new_ulid()
        since_ms = self.ctx.time.now_ms()
        first = self.ctx.dispatcher.first_attempt(event_id)
        try:
            result = await self.ctx.appender.append(
                kind="palyra.test", source="admin", event_type="palyra.test", event_id=event_id,
                payload={"subscription_id": subscription_id, "data": data},
            )
        except Exception:
            first.cancel()
            raise
        self.ctx.dispatcher.wake()
        attempt = None
        try:
            attempt = await asyncio.wait_for(
                self._first_attempt(first, subscription_id, event_id, since_ms),
                sub.timeout_s + 5)
        except TimeoutError:
            pass
        finally:
            self.ctx.dispatcher.forget_first_attempt(event_id)
        delivery = None
        if attempt is not None:
            found = await self.ctx.deliveries.get(attempt.delivery_id)
            delivery = found[0].to_dict() if found else None
        return web.json_response({
            "event_id": result.event_id, "seq": result.seq, "delivery": delivery,
            "attempt": attempt.to_dict() if attempt else None,
        })
