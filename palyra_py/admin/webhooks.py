"""Admin API: integrations (``/v1/webhooks``). The daemon is the registry's only writer."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp import web

from palyra_py.admin.context import RegistryChange, WebhooksContext
from palyra_py.admin.errors import ApiError, invalid, not_found, read_json_object
from palyra_py.admin.records import edit_registry, path_id, refuse_fields, validated
from palyra_py.admin.records import registry_error as registry_error  # re-exported
from palyra_py.admin.secrets import (
    SecretChoice,
    delete_secret,
    grace_seconds,
    rfc3339,
    rotate,
    secret_choice,
    store_secret,
)
from palyra_py.ids import new_ulid
from palyra_py.providers import CannotSign, Provider, check_secret
from palyra_py.registry.integrations import (
    add_integration,
    remove_integration,
    update_integration,
    validate_integration_fields,
)
from palyra_py.secrets.refs import SecretRefError
from palyra_py.secrets.store import SecretNotFound, generate_secret

EDITABLE = (
    "display_name", "allowed_events", "allowed_sources", "enabled", "signature_required",
    "max_payload_bytes", "timestamp_tolerance_s", "replay_window_s", "provider_options",
    "response", "response_command", "response_timeout_s",
)
TEST_OUTCOMES = {
    "accepted": "accepted",
    "duplicate": "duplicate",
    "ignored": "ignored",
    "integration_disabled": "disabled",
    "secret_unavailable": "not_ready",
    "signature_missing": "signature_missing",
    "malformed_json": "invalid_payload",
    "schema_violation": "invalid_payload",
    "payload_too_large": "invalid_payload",
}


def keyring_name(integration_id: str, previous: bool = False) -> str:
    return f"webhook:{integration_id}" + (":previous" if previous else "")


class WebhooksApi:
    def __init__(self, context: WebhooksContext) -> None:
        self.ctx = context

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/webhooks", self.list),
            web.post("/v1/webhooks", self.add),
            web.get("/v1/webhooks/readiness", self.readiness),
            web.get("/v1/webhooks/{id}", self.show),
            web.patch("/v1/webhooks/{id}", self.patch),
            web.delete("/v1/webhooks/{id}", self.remove),
            web.post("/v1/webhooks/{id}/enable", self.enable),
            web.post("/v1/webhooks/{id}/disable", self.disable),
            web.post("/v1/webhooks/{id}/rotate-secret", self.rotate_secret),
            web.post("/v1/webhooks/{id}/test", self.test),
        ]

    # -- helpers -------------------------------------------------------------------------

    def _id(self, request: web.Request) -> str:
        return path_id(request, self.ctx.editor.registry.integrations, noun="integration",
                       field="integration_id")

    async def _public(self, integration_id: str) -> dict[str, Any]:
        integ = self.ctx.editor.registry.integrations[integration_id]
        data = integ.to_dict()
        readiness, _ = await self.ctx.readiness.readiness_of(integ)
        data["readiness"] = readiness
        warning = self.ctx.secrets.per_node_warning(integ.secret_ref)
        if warning is not None:
            data["readiness_warning"] = warning
        data["ingress_url"] = self.ctx.ingress.ingress_url_for(integration_id)
        return data

    async def _edit(self, change: RegistryChange) -> None:
        await edit_registry(self.ctx.editor, change, noun="integration")

    # -- handlers ------------------------------------------------------------------------

    async def list(self, request: web.Request) -> web.Response:
        ids = sorted(self.ctx.editor.registry.integrations)
        return web.json_response({"webhooks": [await self._public(i) for i in ids]})

    async def show(self, request: web.Request) -> web.Response:
        return web.json_response({"webhook": await self._public(self._id(request))})

    async def add(self, request: web.Request) -> web.Response:
        body = await read_json_object(request)
        fields = {k: body[k] for k in ("integration_id", "provider", *EDITABLE) if k in body}
        refuse_fields(set(body) - set(fields) - {"secret"}, "unknown field(s)")
        fields = validated(validate_integration_fields, fields)
        integration_id = fields["integration_id"]
        if integration_id in self.ctx.editor.registry.integrations:
            raise ApiError(409, "conflict", f"integration {integration_id!r} already exists",
                           field="integration_id")
        provider = fields["provider"]
        choice = secret_choice(body, lambda: generate_secret(provider),
                               lambda value: check_secret(provider, value))
        value, ref = (choice.value, choice.ref) if choice else (None, None)
        if value is None and ref is None and fields.get("signature_required", True):
            raise invalid("a secret is required: secret.generate, secret.value or secret.ref",
                          "secret")
        stored_name = None
        if value is not None:
            stored_name = keyring_name(integration_id)
            ref = await store_secret(self.ctx.secrets, stored_name, value,
                                     self.ctx.secrets.new_secret_kind)
            self.ctx.secrets.forget_cached(ref)
        fields["secret_ref"] = ref
        now = self.ctx.time.now_dt()
        try:
            await self._edit(lambda doc: add_integration(doc, fields, now))
        except ApiError:
            if stored_name is not None:
                await delete_secret(self.ctx.secrets, self.ctx.secrets.new_secret_kind,
                                    stored_name)
            raise
        await self.ctx.appender.journal_admin("integration.created", integration_id,
                                              {"provider": fields["provider"], "secret_ref": ref})
        answer: dict[str, Any] = {"webhook": await self._public(integration_id)}
        if choice is not None and choice.generated:
            answer["secret"] = value  # shown once, never stored outside the keyring
        return web.json_response(answer, status=201)

    async def patch(self, request: web.Request) -> web.Response:
        integration_id = self._id(request)
        body = await read_json_object(request)
        refuse_fields(set(body) - set(EDITABLE), "field(s) not editable here")
        current = self.ctx.editor.registry.integrations[integration_id]
        merged = {**current.to_dict(), **body}
        check = {k: merged[k] for k in ("integration_id", "provider", *EDITABLE) if k in merged}
        normalised = validated(validate_integration_fields, check)
        changes = {k: normalised.get(k) for k in body}
        now = self.ctx.time.now_dt()
        await self._edit(lambda doc: update_integration(doc, integration_id, changes, now))
        await self.ctx.appender.journal_admin("integration.updated", integration_id,
                                              {"changed": sorted(changes)})
        return web.json_response({"webhook": await self._public(integration_id)})

    async def remove(self, request: web.Request) -> web.Response:
        integration_id = self._id(request)
        integ = self.ctx.editor.registry.integrations[integration_id]
        await self._edit(lambda doc: remove_integration(doc, integration_id))
        # Keyring and db: entries the daemon created for this integration go with it.
        for previous in (False, True):
            name = keyring_name(integration_id, previous)
            for kind in ("keyring", "db"):
                if f"{kind}:{name}" in (integ.secret_ref, integ.previous_secret_ref):
                    await delete_secret(self.ctx.secrets, kind, name)
                    self.ctx.secrets.forget_cached(f"{kind}:{name}")
        await self.ctx.appender.journal_admin("integration.deleted", integration_id, {})
        return web.json_response({"status": "deleted", "integration_id": integration_id})

    async def _set_enabled(self, request: web.Request, enabled: bool) -> web.Response:
        integration_id = self._id(request)
        now = self.ctx.time.now_dt()
        await self._edit(
            lambda doc: update_integration(doc, integration_id, {"enabled": enabled}, now)
        )
        kind = "integration.enabled" if enabled else "integration.disabled"
        await self.ctx.appender.journal_admin(kind, integration_id, {})
        return web.json_response({"webhook": await self._public(integration_id)})

    async def enable(self, request: web.Request) -> web.Response:
        return await self._set_enabled(request, True)

    async def disable(self, request: web.Request) -> web.Response:
        return await self._set_enabled(request, False)

    async def rotate_secret(self, request: web.Request) -> web.Response:
        integration_id = self._id(request)
        integ = self.ctx.editor.registry.integrations[integration_id]
        body = await read_json_object(request)
        grace = grace_seconds(body)
        choice = secret_choice(body, lambda: generate_secret(integ.provider),
                               lambda value: check_secret(integ.provider, value)) or SecretChoice(
            generate_secret(integ.provider), None, True)
        now = self.ctx.time.now_dt()
        rotation = await rotate(
            self.ctx.secrets,
            lambda changes: self._edit(
                lambda doc: update_integration(doc, integration_id, changes, now)),
            current_name=keyring_name(integration_id), old_ref=integ.secret_ref, choice=choice,
            grace_s=grace, now=now, kind=self.ctx.secrets.new_secret_kind)
        await self.ctx.appender.journal_admin(
            "integration.secret_rotated", integration_id,
            {"grace_s": grace, "previous_valid_until": rfc3339(rotation.until)},
        )
        answer: dict[str, Any] = {
            "webhook": await self._public(integration_id),
            "previous_valid_until": rfc3339(rotation.until),
        }
        if choice.generated:
            answer["secret"] = choice.value
        return web.json_response(answer)

    async def readiness(self, request: web.Request) -> web.Response:
        wanted = request.query.get("integration_id")
        rows = []
        for integration_id in sorted(self.ctx.editor.registry.integrations):
            if wanted and integration_id != wanted:
                continue
            readiness, detail = await self.ctx.readiness.readiness_of(
                self.ctx.editor.registry.integrations[integration_id]
            )
            row = {"integration_id": integration_id, "readiness": readiness,
                   "detail": detail}
            warning = self.ctx.secrets.per_node_warning(
                self.ctx.editor.registry.integrations[integration_id].secret_ref)
            if warning is not None:
                row["warning"] = warning
            rows.append(row)
        if wanted and not rows:
            raise not_found(f"no integration {wanted!r}")
        return web.json_response({"readiness": rows})

    async def test(self, request: web.Request) -> web.Response:
        """Sign a sample (or given) event exactly as the provider would, send it through the
        real ingress, and record the verdict as ``last_test_*``."""
        integration_id = self._id(request)
        body = await read_json_object(request)
        active = self.ctx.ingress.active[integration_id]
        integ = active.integration
        event_type, sample = active.provider.sample_event()
        wanted = body.get("event")
        if wanted is None and not active.event_allowed(event_type):
            # Test with an event the integration takes, so the verdict is about the set-up.
            plain = [p for p in integ.allowed_events if not set(p) & set("*?[")]
            wanted = plain[0] if plain else None
        if wanted is not None:
            event_type = str(wanted)[:128]
            sample = with_event_type(sample, event_type)
        if body.get("payload") is not None:
            if not isinstance(body["payload"], dict):
                raise invalid("payload must be a JSON object", "payload")
            sample = json.dumps(body["payload"]).encode()
        result: dict[str, Any] = {"integration_id": integration_id}
        now = self.ctx.time.clock()
        try:
            secrets = await active.secrets.resolve(self.ctx.secrets, now)
        except (SecretNotFound, SecretRefError) as exc:
            result.update(outcome="not_ready", status_code=None, reason=str(exc))
        else:
            result.update(await self._send_test(integration_id, active.provider, sample,
                                                secrets[0], now, event_type,
                                                tamper=bool(body.get("tamper"))))
        message = f"{result['outcome']}: HTTP {result['status_code']} {result['reason']}"[:240]
        now_dt = self.ctx.time.now_dt()
        changes = {"last_test_status": result["outcome"], "last_test_at": now_dt,
                   "last_test_message": message}
        if integ.integration_id in self.ctx.editor.registry.integrations:
            await self._edit(lambda doc: update_integration(doc, integration_id, changes, now_dt))
        return web.json_response(result)

    async def _send_test(self, integration_id: str, provider: Provider, sample: bytes,
                         secret: str, now: float, event_type: str, *, tamper: bool,
                         ) -> dict[str, Any]:
        """Sign and post one test delivery; every way it can end is an outcome (never a 500):
        ``cannot_sign`` when the secret cannot sign (a ``whpk_`` public key, a secret that
        does not decode), ``unreachable`` when the ingress does not answer."""
        try:
            signed = provider.sign(sample, secret, now, event_type, new_ulid())
        except CannotSign as exc:
            return {"outcome": "cannot_sign", "status_code": None, "reason": str(exc)}
        headers = dict(signed.headers)
        if tamper:
            headers = tamper_signature(headers)
        url = self.ctx.ingress.ingress_url_for(integration_id, local=True)
        timeout = aiohttp.ClientTimeout(total=15)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session, session.post(
                url, data=signed.body, headers=headers, ssl=False
            ) as resp:
                status = resp.status
                # An integration's own answer (its response or response command) says what
                # became of the event in headers; its body is the integration's.
                custom = {key: resp.headers[header] for key, header in (
                    ("status", "Palyra-Status"), ("event_id", "Palyra-Event-Id"),
                    ("seq", "Palyra-Seq")) if header in resp.headers}
                try:
                    answer = custom or await resp.json(content_type=None)
                except ValueError:
                    answer = None
        except (aiohttp.ClientError, TimeoutError) as exc:
            return {"outcome": "unreachable", "status_code": None,
                    "reason": f"the ingress did not answer: {type(exc).__name__}"}
        if not isinstance(answer, dict):
            answer = {}
        reason = str(answer.get("status") or answer.get("error") or "")
        return {"outcome": TEST_OUTCOMES.get(reason, "rejected"), "status_code": status,
                "reason": reason, "seq": _seq(answer.get("seq")),
                "event_id": answer.get("event_id")}


def _seq(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    return int(value) if isinstance(value, str) and value.isdigit() else None


def with_event_type(sample: bytes, event_type: str) -> bytes:
    """Providers that name the event in the body (Stripe, Standard Webhooks...) get it
    written there too; GitHub-style providers take it from ``sign``'s header."""
    try:
        doc = json.loads(sample)
    except ValueError:
        return sample
    if isinstance(doc, dict) and isinstance(doc.get("type"), str):
        doc["type"] = event_type
        return json.dumps(doc).encode()
    return sample


def tamper_signature(headers: Mapping[str, str]) -> dict[str, str]:
    """Flip one character of every signature-looking header value (``--tamper``)."""
    out = dict(headers)
    for key, value in headers.items():
        lk = key.lower()
        if ("signature" in lk or "hmac" in lk or "token" in lk) and value:
            last = value[-1]
            out[key] = value[:-1] + ("A" if last != "A" else "B")
    return out
