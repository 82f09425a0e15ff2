"""docs/openapi.yaml: a valid OpenAPI 3.1 document that lists exactly the admin app's routes,
and whose schemas accept the real daemon's answers."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from palyra_py.providers import PROVIDER_NAMES
from palyra_py.registry.integrations import Integration
from palyra_py.registry.subscriptions import Subscription
from palyra_py.registry.tokens import ApiToken
from palyra_py.server.daemon import Daemon
from palyra_py.testing import CapturingReceiver, ManualClock, MemoryKeyring, running_daemon

SPEC_FILE = Path(__file__).resolve().parents[1] / "docs" / "openapi.yaml"
SPEC_URI = "urn:palyra:admin-openapi"
OPERATION_KEYS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# Statuses any operation may answer without listing them: its `default` (the Error body).
GLOBAL_STATUSES = {405, 500}
OUTBOUND_PREFIXES = ("/v1/subscriptions", "/v1/deliveries", "/v1/tokens")


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SPEC_FILE.read_text(encoding="utf-8"))
    return loaded


def escape(token: str) -> str:
    """A JSON Pointer reference token (RFC 6901)."""
    return token.replace("~", "~0").replace("/", "~1")


def schema_validator(spec: dict[str, Any], pointer: str) -> Draft202012Validator:
    """A validator for the schema at ``pointer`` in the spec, its ``$ref``s resolved within
    the spec (OpenAPI 3.1 schemas are JSON Schema 2020-12)."""
    registry: Registry[Any] = Registry().with_resource(
        SPEC_URI, DRAFT202012.create_resource(spec)
    )
    return Draft202012Validator(
        {"$ref": f"{SPEC_URI}#{pointer}"},
        registry=registry,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def operations(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in OPERATION_KEYS
    }


def errors_of(validator: Draft202012Validator, body: Any) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]


def response_pointer(spec: dict[str, Any], method: str, template: str, status: int) -> str:
    """Where the JSON schema of this answer is, following a ``$ref`` to a shared response."""
    operation = spec["paths"][template].get(method.lower())
    if operation is None:
        # A method the path does not have: 405 with the Error body, from the middleware.
        assert status == 405, f"{method} {template} is not documented"
        return "/components/schemas/Error"
    responses = operation["responses"]
    key = str(status)
    if key not in responses:
        assert status in GLOBAL_STATUSES, f"{method} {template}: {status} is not documented"
        key = "default"
    pointer = f"/paths/{escape(template)}/{method.lower()}/responses/{key}"
    ref = responses[key].get("$ref")
    if ref is not None:
        assert ref.startswith("#/components/responses/"), ref
        pointer = ref[1:]
    return pointer + "/content/application~1json/schema"


class Api:
    """Calls the admin socket and checks each JSON answer against the spec."""

    def __init__(self, session: aiohttp.ClientSession, spec: dict[str, Any]) -> None:
        self.session = session
        self.spec = spec
        self.checked: set[tuple[str, str, int]] = set()

    async def call(
        self, method: str, template: str, status: int, *, id: str | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        url = template.format(id=id) if id is not None else template
        async with self.session.request(method, url, **kwargs) as resp:
            body = await resp.json()
            assert resp.status == status, (method, url, resp.status, body)
            assert resp.content_type == "application/json"
        validator = schema_validator(self.spec, response_pointer(self.spec, method, template,
                                                                 status))
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]
        assert not errors, (method, url, status, errors)
        self.checked.add((method, template, status))
        assert isinstance(body, dict)
        return body


# -- the document ----------------------------------------------------------------------


def test_spec_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1.")
    validate_openapi(spec)
    assert "<state-dir>/palyra.sock" in spec["info"]["description"]
    assert [s["url"] for s in spec["servers"]] == ["http://localhost"]
    assert "palyra.sock" in spec["servers"][0]["description"]


async def test_spec_lists_exactly_the_admin_routes(daemon: Daemon, spec: dict[str, Any]) -> None:
    app = daemon._admin_app()
    registered = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert operations(spec) == registered


async def test_tcp_listener_extension_lists_the_ingress_routes(
    daemon: Daemon, spec: dict[str, Any]
) -> None:
    # The TCP routes are described beside `paths` (they are not the socket's), and only there.
    app = daemon._ingress_app()
    registered = {route.resource.canonical for route in app.router.routes()
                  if route.resource is not None}
    listed = spec["x-tcp-listener"]["routes"]
    assert {r["path"] for r in listed} == registered
    tokened = {(r["method"], r["path"]) for r in listed if r["auth"] == "palyraToken"}
    assert tokened == {("POST", "/v1/events"), ("GET", "/v1/events"),
                       ("GET", "/v1/events/stream"), ("GET", "/v1/events/ws"),
                       ("GET", "/v1/registry"),
                       ("POST", "/v1/registry/import")}
    assert all(r["path"] in spec["paths"] for r in listed if r["auth"] == "palyraToken")
    assert "/metrics" not in spec["paths"]
    assert spec["components"]["securitySchemes"]["palyraToken"]["scheme"] == "bearer"
    assert "Authorization: Bearer" in spec["info"]["description"]


def test_provider_enum_is_the_registrys(spec: dict[str, Any]) -> None:
    assert spec["components"]["schemas"]["Provider"]["enum"] == list(PROVIDER_NAMES)


def test_integration_schema_refuses_a_secret_field(spec: dict[str, Any]) -> None:
    # The schemas are closed: a secret leaking into an answer would fail the live checks.
    validator = schema_validator(spec, "/components/schemas/Integration")
    public = {**Integration("gh", "github", secret_ref="keyring:webhook:gh").to_dict(),
              "readiness": "ready", "ingress_url": "http://127.0.0.1:8787/hooks/gh"}
    assert validator.is_valid(public)
    assert not validator.is_valid({**public, "secret": "s3cr3t"})


def test_request_schemas_match_the_handlers_rules(spec: dict[str, Any]) -> None:
    new = schema_validator(spec, "/components/schemas/NewIntegration")
    assert new.is_valid({"integration_id": "gh", "provider": "github", "secret": {"value": "x"}})
    assert new.is_valid({"integration_id": "gh", "provider": "github",
                         "secret": {"generate": False, "ref": "env:GH_SECRET"}})
    assert not new.is_valid({"integration_id": "gh", "provider": "github",
                             "secret": {"generate": True, "value": "x"}})
    assert not new.is_valid({"integration_id": "gh", "provider": "github", "secret_ref": "x"})
    assert not new.is_valid({"integration_id": "gh", "provider": "github",
                             "replay_window_s": 59})
    assert not new.is_valid({"provider": "github"})


def test_outbound_schemas_are_closed_and_match_the_handlers_rules(spec: dict[str, Any]) -> None:
    subscription = schema_validator(spec, "/components/schemas/Subscription")
    public = {**Subscription("s", "https://example.com/h",
                             secret_ref="keyring:subscription:s").to_dict(),
              "health": {"last_success_at": None, "failing_since": None}, "pending": 0}
    assert errors_of(subscription, public) == []
    assert not subscription.is_valid({**public, "secret": "whsec_AAAA"})
    token = schema_validator(spec, "/components/schemas/ApiToken")
    record = ApiToken("abcdefgh2345", "kb-sync", "keyring:token:abcdefgh2345")
    assert errors_of(token, record.to_dict()) == []
    assert not token.is_valid({**record.to_dict(), "secret_ref": record.secret_ref})

    new = schema_validator(spec, "/components/schemas/NewSubscription")
    assert new.is_valid({"subscription_id": "s", "url": "https://example.com/h"})
    assert new.is_valid({"subscription_id": "s", "url": "https://example.com/h",
                         "retry_schedule": ["0s", 5], "secret": {"value": "whsec_QUJD"}})
    assert not new.is_valid({"subscription_id": "s", "url": "https://example.com/h",
                             "secret": {"value": "not-whsec"}})
    assert not new.is_valid({"subscription_id": "s", "url": "https://example.com/h",
                             "secret_ref": "env:X"})
    assert not new.is_valid({"subscription_id": "s", "url": "https://example.com/h",
                             "max_in_flight": 101})
    assert not new.is_valid({"url": "https://example.com/h"})


# -- real answers ------------------------------------------------------------------------


async def test_answers_match_the_spec(
    daemon: Daemon, admin: aiohttp.ClientSession, spec: dict[str, Any]
) -> None:
    api = Api(admin, spec)
    status = await api.call("GET", "/v1/status", 200)
    assert status["admin_socket"] == str(daemon.socket_path)

    gh = {"integration_id": "gh", "provider": "github", "secret": {"value": "x"}}
    added = await api.call("POST", "/v1/webhooks", 201, json=gh)
    assert "secret" not in added and added["webhook"]["secret_ref"] == "keyring:webhook:gh"
    generated = await api.call("POST", "/v1/webhooks", 201, json={
        "integration_id": "sw", "provider": "standard-webhooks", "secret": {"generate": True},
    })
    assert generated["secret"].startswith("whsec_")
    conflict = await api.call("POST", "/v1/webhooks", 409, json=gh)
    assert conflict["error"] == "conflict"
    bad = await api.call("POST", "/v1/webhooks", 400,
                         json={**gh, "integration_id": "x", "max_payload_bytes": 0})
    assert bad["field"] == "max_payload_bytes"
    too_large = await api.call("POST", "/v1/webhooks", 413,
                               data=b" " * (daemon.settings.get("admin", "max_body_bytes") + 1))
    assert too_large["error"] == "payload_too_large"

    listed = await api.call("GET", "/v1/webhooks", 200)
    assert [w["integration_id"] for w in listed["webhooks"]] == ["gh", "sw"]
    await api.call("GET", "/v1/webhooks/{id}", 200, id="GH")
    patched = await api.call("PATCH", "/v1/webhooks/{id}", 200, id="gh",
                             json={"display_name": "GitHub", "allowed_events": ["push"]})
    assert patched["webhook"]["allowed_events"] == ["push"]
    disabled = await api.call("POST", "/v1/webhooks/{id}/disable", 200, id="gh")
    assert disabled["webhook"]["readiness"] == "disabled"
    await api.call("POST", "/v1/webhooks/{id}/enable", 200, id="gh")
    readiness = await api.call("GET", "/v1/webhooks/readiness", 200)
    assert {r["readiness"] for r in readiness["readiness"]} == {"ready"}
    await api.call("GET", "/v1/webhooks/readiness", 404, params={"integration_id": "nope"})
    tested = await api.call("POST", "/v1/webhooks/{id}/test", 200, id="gh",
                          json={"event": "push"})
    assert tested["outcome"] == "accepted"
    tampered = await api.call("POST", "/v1/webhooks/{id}/test", 200, id="gh",
                              json={"event": "push", "tamper": True})
    assert tampered["outcome"] == "rejected"
    rotated = await api.call("POST", "/v1/webhooks/{id}/rotate-secret", 200, id="gh", json={})
    assert rotated["previous_valid_until"] is not None and "secret" in rotated

    emitted = await api.call("POST", "/v1/events", 201,
                             json={"type": "deploy.done", "data": {"n": 1}, "summary": "v2"})
    refused = await api.call("POST", "/v1/events", 400, json={"type": "daemon.fake"})
    assert refused["field"] == "type"
    page = await api.call("GET", "/v1/events", 200, params={"limit": "2"})
    assert page["next_after_seq"] == page["events"][-1]["seq"]
    rest = await api.call("GET", "/v1/events", 200,
                          params={"after_seq": str(emitted["seq"] - 1), "type": "deploy.*"})
    assert [e["event_id"] for e in rest["events"]] == [emitted["event_id"]]
    assert rest["next_after_seq"] is None
    limit = await api.call("GET", "/v1/events", 400, params={"limit": "0"})
    assert limit["field"] == "limit"
    verified = await api.call("POST", "/v1/journal/verify", 200)
    assert verified["ok"] is True

    exported = await api.call("GET", "/v1/registry", 200)
    assert (exported["source"], exported["version"]) == ("file", None)
    assert exported["counts"]["integrations"] == 2
    reviewed = exported["document"] + "\n# reviewed in git\n"
    dry = await api.call("POST", "/v1/registry/import", 200,
                         json={"document": reviewed, "dry_run": True})
    assert dry["status"] == "dry_run"
    assert dry["changes"]["integrations"] == {"added": [], "removed": [], "changed": []}
    invalid_doc = await api.call("POST", "/v1/registry/import", 422, json={
        "document": reviewed + '[[webhooks]]\nintegration_id = "x"\nprovider = "nope"\n'})
    assert invalid_doc["location"].startswith(f"{daemon.registry_file.path}:")
    assert daemon.registry_file.path.read_text() == exported["document"]
    imported = await api.call("POST", "/v1/registry/import", 200, json={"document": reviewed})
    assert imported["status"] == "imported"
    assert daemon.registry_file.path.read_text() == reviewed

    reloaded = await api.call("POST", "/v1/reload", 200)
    assert reloaded["integrations"] == 2
    await api.call("DELETE", "/v1/webhooks/{id}", 200, id="sw")
    missing = await api.call("GET", "/v1/webhooks/{id}", 404, id="nope")
    assert missing["error"] == "not_found"
    wrong_method = await api.call("PUT", "/v1/webhooks/{id}", 405, id="gh")
    assert wrong_method["error"] == "method_not_allowed"

    daemon.registry_file.path.write_text("version = [\n", encoding="utf-8")
    broken = await api.call("POST", "/v1/reload", 422)
    assert broken["location"].startswith(f"{daemon.registry_file.path}:")
    # Every JSON operation was checked with a success answer (the streams have their own
    # tests, the outbound operations the next one).
    inbound = {op for op in operations(spec) if not op[1].startswith(OUTBOUND_PREFIXES)}
    succeeded = {(method, path) for method, path, code in api.checked if code < 300}
    assert inbound - succeeded == {("GET", "/v1/events/stream"), ("GET", "/v1/events/ws")}


@pytest.fixture
async def outbound(
    state_dir: Path, clock: ManualClock, memory_keyring: MemoryKeyring
) -> AsyncIterator[Daemon]:
    # Loopback receivers are private addresses: allowed here, refused by default.
    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring,
                              delivery__allow_private_networks=True,
                              delivery__max_subscriptions_per_owner=2) as d:
        yield d


async def test_outbound_answers_match_the_spec(
    outbound: Daemon, admin_o: aiohttp.ClientSession, receiver: CapturingReceiver,
    spec: dict[str, Any],
) -> None:
    api = Api(admin_o, spec)
    # -- subscriptions --
    created = await api.call("POST", "/v1/subscriptions", 201,
                             json={"subscription_id": "s", "url": "https://example.com/h"})
    assert created["secret"].startswith("whsec_")
    sub = created["subscription"]
    assert sub["secret_ref"] == "keyring:subscription:s" and "secret" not in sub
    assert sub["health"] == {"last_success_at": None, "failing_since": None}
    assert sub["retry_schedule"] == ["0s", "5s", "5m", "30m", "2h", "5h", "10h", "10h"]
    # Nothing published below may reach example.com.
    patched = await api.call("PATCH", "/v1/subscriptions/{id}", 200, id="s",
                             json={"events": ["nothing.matches"], "description": "docs"})
    assert patched["subscription"]["events"] == ["nothing.matches"]
    conflict = await api.call("POST", "/v1/subscriptions", 409,
                              json={"subscription_id": "S", "url": "https://example.com/h"})
    assert conflict["error"] == "conflict"
    bad_url = await api.call("POST", "/v1/subscriptions", 400,
                             json={"subscription_id": "f", "url": "ftp://example.com/"})
    assert bad_url["field"] == "url"
    unknown = await api.call("POST", "/v1/subscriptions", 400,
                             json={"subscription_id": "f", "url": "https://example.com/h",
                                   "secret_ref": "env:X"})
    assert unknown["field"] == "secret_ref"
    not_editable = await api.call("PATCH", "/v1/subscriptions/{id}", 400, id="s",
                                  json={"secret": {"generate": True}})
    assert not_editable["field"] == "secret"
    rotated = await api.call("POST", "/v1/subscriptions/{id}/rotate-secret", 200, id="s",
                             json={})
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != created["secret"]
    assert rotated["subscription"]["previous_secret_ref"] == "keyring:subscription:s:previous"
    assert rotated["previous_valid_until"] == rotated["subscription"]["previous_valid_until"]

    value = "whsec_" + base64.b64encode(bytes(range(32))).decode()
    given = await api.call("POST", "/v1/subscriptions", 201, json={
        "subscription_id": "r", "url": receiver.url, "events": ["job.*"],
        "retry_schedule": ["0s"], "headers": {"X-Team": "kb"}, "secret": {"value": value},
    })
    assert "secret" not in given and given["subscription"]["headers"] == {"X-Team": "kb"}
    limit = await api.call("POST", "/v1/subscriptions", 422,
                           json={"subscription_id": "x", "url": "https://example.com/x"})
    assert limit["error"] == "limit_reached" and limit["field"] == "owner"
    listed = await api.call("GET", "/v1/subscriptions", 200)
    assert [s["subscription_id"] for s in listed["subscriptions"]] == ["r", "s"]
    shown = await api.call("GET", "/v1/subscriptions/{id}", 200, id=" R ")
    assert shown["subscription"]["url"] == receiver.url
    missing = await api.call("GET", "/v1/subscriptions/{id}", 404, id="nope")
    assert missing["error"] == "not_found"

    # -- deliveries: fail, recover, fail again, retry, succeed --
    receiver.script = [500, 500]
    await api.call("POST", "/v1/events", 201, json={"type": "job.done", "data": {"n": 1}})
    await outbound.dispatcher.wait_for_attempts(1)
    page = await api.call("GET", "/v1/deliveries", 200, params={"subscription": "r"})
    (delivery,) = page["deliveries"]
    assert delivery["status"] == "failed" and delivery["last_error_class"] == "http_status"
    assert page["next_after"] is None
    delivery_id = delivery["delivery_id"]
    full = await api.call("GET", "/v1/deliveries/{id}", 200, id=delivery_id)
    (attempt,) = full["attempts"]
    assert attempt["status_code"] == 500 and attempt["response_excerpt"] == "answer 500"
    bad_status = await api.call("GET", "/v1/deliveries", 400, params={"status": "lost"})
    assert bad_status["field"] == "status"
    unknown_delivery = await api.call("GET", "/v1/deliveries/{id}", 404,
                                      id="01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert unknown_delivery["error"] == "not_found"

    recovered = await api.call("POST", "/v1/deliveries/recover", 200,
                               json={"subscription_id": "r", "since": 0})
    assert recovered["recovered"] == 1
    await outbound.dispatcher.wait_for_attempts(2)
    await api.call("POST", "/v1/deliveries/recover", 404,
                   json={"subscription_id": "nope", "since": 0})
    no_since = await api.call("POST", "/v1/deliveries/recover", 400,
                              json={"subscription_id": "r"})
    assert no_since["field"] == "since"
    stats = await api.call("GET", "/v1/deliveries/stats", 200, params={"subscription": "r"})
    assert stats["deliveries"] == {"pending": 0, "succeeded": 0, "failed": 1}
    assert stats["attempts"] == 2 and stats["success_rate"] == 0
    assert stats["failures_by_class"] == {"http_status": 2}
    assert stats["busiest"] == [{"subscription_id": "r", "deliveries": 1}]
    retried = await api.call("POST", "/v1/deliveries/{id}/retry", 200, id=delivery_id)
    assert retried["delivery"]["status"] == "pending"
    await outbound.dispatcher.wait_for_attempts(3)
    # Succeeded: delivered again (a redelivery), one more attempt.
    again = await api.call("POST", "/v1/deliveries/{id}/retry", 200, id=delivery_id)
    assert again["delivery"]["status"] == "pending"
    await outbound.dispatcher.wait_for_attempts(4)
    done = await api.call("GET", "/v1/deliveries", 200, params={"status": "succeeded"})
    assert [d["attempts"] for d in done["deliveries"]] == [4]
    bulk = await api.call("POST", "/v1/deliveries/retry", 200,
                          json={"subscription_id": "r", "status": "failed"})
    assert bulk == {"retried": 0, "next_after": None}
    bad_bulk = await api.call("POST", "/v1/deliveries/retry", 400,
                              json={"subscription_id": "r", "status": "succeeded"})
    assert bad_bulk["field"] == "status"
    await api.call("POST", "/v1/deliveries/retry", 404,
                   json={"subscription_id": "nope", "status": "failed"})
    replayed = await api.call("POST", "/v1/subscriptions/{id}/replay", 200, id="r",
                              json={"from_seq": 1, "limit": 2})
    assert replayed["scanned"] == 2 and replayed["next_from_seq"] == 3
    no_start = await api.call("POST", "/v1/subscriptions/{id}/replay", 400, id="r", json={})
    assert no_start["field"] == "from_seq"
    await api.call("POST", "/v1/subscriptions/{id}/replay", 404, id="nope",
                   json={"from_seq": 1})
    healthy = await api.call("GET", "/v1/subscriptions/{id}", 200, id="r")
    assert healthy["subscription"]["health"]["failing_since"] is None
    assert healthy["subscription"]["health"]["last_success_at"] is not None
    await api.call("GET", "/v1/deliveries/stats", 400, params={"since": "yesterday"})

    tested = await api.call("POST", "/v1/subscriptions/{id}/test", 200, id="r")
    assert tested["attempt"]["status_code"] == 200
    assert tested["delivery"]["event_type"] == "palyra.test"
    assert receiver.received[-1].json()["type"] == "palyra.test"

    disabled = await api.call("POST", "/v1/subscriptions/{id}/disable", 200, id="r")
    assert disabled["subscription"]["disabled_reason"] == "disabled by an operator"
    refused = await api.call("POST", "/v1/subscriptions/{id}/test", 409, id="r")
    assert refused["error"] == "conflict"
    await api.call("POST", "/v1/subscriptions/{id}/enable", 400, id="r",
                   json={"catch_up": "yes"})
    enabled = await api.call("POST", "/v1/subscriptions/{id}/enable", 200, id="r",
                             json={"catch_up": False})
    assert enabled["subscription"]["enabled"] is True
    assert enabled["subscription"]["disabled_reason"] is None

    # -- tokens, and the TCP listener they open --
    token = await api.call("POST", "/v1/tokens", 201,
                           json={"name": "kb-sync", "description": "nightly"})
    token_id = token["token"]["token_id"]
    assert token["secret"].startswith(f"plt_{token_id}_")
    tokens = await api.call("GET", "/v1/tokens", 200)
    assert tokens["tokens"] == [token["token"]]
    nameless = await api.call("POST", "/v1/tokens", 400, json={})
    assert nameless["field"] == "name"
    base = outbound.ingress_url_for("x", local=True).rsplit("/hooks", 1)[0]
    published = schema_validator(spec, "/components/schemas/Published")
    error = schema_validator(spec, "/components/schemas/Error")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/v1/events", json={"type": "job.tcp"}) as resp:
            body = await resp.json()
            assert resp.status == 401 and body["error"] == "unauthorized"
            assert errors_of(error, body) == []
        bearer = {"Authorization": f"Bearer {token['secret']}"}
        async with http.post(f"{base}/v1/events", json={"type": "job.tcp"},
                             headers=bearer) as resp:
            body = await resp.json()
            assert resp.status == 201 and errors_of(published, body) == []
        async with http.get(f"{base}/metrics") as resp:
            body = await resp.json()
            assert resp.status == 401 and errors_of(error, body) == []
        async with http.get(f"{base}/metrics", headers=bearer) as resp:
            body = await resp.json()  # the default scope is publish alone
            assert resp.status == 403 and body["error"] == "scope_denied"
            assert errors_of(error, body) == []
        revoked = await api.call("DELETE", "/v1/tokens/{id}", 200, id=token_id)
        assert revoked == {"status": "revoked", "token_id": token_id}
        async with http.post(f"{base}/v1/events", json={"type": "job.tcp"},
                             headers=bearer) as resp:
            assert resp.status == 401
    await api.call("DELETE", "/v1/tokens/{id}", 404, id=token_id)

    removed = await api.call("DELETE", "/v1/subscriptions/{id}", 200, id="s")
    assert removed == {"status": "deleted", "subscription_id": "s"}
    await api.call("GET", "/v1/subscriptions/{id}", 404, id="s")
    wrong_method = await api.call("PUT", "/v1/subscriptions/{id}", 405, id="r")
    assert wrong_method["error"] == "method_not_allowed"

    outbound_ops = {op for op in operations(spec) if op[1].startswith(OUTBOUND_PREFIXES)}
    succeeded = {(method, path) for method, path, code in api.checked if code < 300}
    assert outbound_ops - succeeded == set()


async def test_stream_frames_carry_events_of_the_spec(
    daemon: Daemon, admin: aiohttp.ClientSession, spec: dict[str, Any]
) -> None:
    validator = schema_validator(spec, "/components/schemas/Event")
    assert "text/event-stream" in (
        spec["paths"]["/v1/events/stream"]["get"]["responses"]["200"]["content"]
    )
    async with admin.get("/v1/events/stream", params={"after_seq": "0"}) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
        frame: dict[str, str] = {}
        async with asyncio.timeout(10):
            while "data" not in frame:
                line = (await resp.content.readline()).decode().rstrip("\n")
                if line and not line.startswith(":"):
                    name, _, value = line.partition(": ")
                    frame[name] = value
    # The handler notices the closed stream on its next write; an event wakes it now rather
    # than at the next keepalive, so the daemon stops without waiting for it.
    async with admin.post("/v1/events", json={"type": "test.wake"}) as woke:
        assert woke.status == 201
    event = json.loads(frame["data"])
    errors = [e.message for e in validator.iter_errors(event)]
    assert not errors, errors
    assert frame["id"] == str(event["seq"]) and frame["event"] == event["kind"]


async def test_websocket_messages_carry_events_of_the_spec(
    daemon: Daemon, admin: aiohttp.ClientSession, spec: dict[str, Any]
) -> None:
    validator = schema_validator(spec, "/components/schemas/Event")
    assert "101" in spec["paths"]["/v1/events/ws"]["get"]["responses"]
    async with admin.ws_connect("/v1/events/ws", params={"after_seq": "0"}) as ws:
        opened = json.loads((await asyncio.wait_for(ws.receive(), 10)).data)
        assert opened == {"type": "open", "after_seq": 0}
        message = json.loads((await asyncio.wait_for(ws.receive(), 10)).data)
    assert message["type"] == "event"
    errors = [e.message for e in validator.iter_errors(message["event"])]
    assert not errors, errors
