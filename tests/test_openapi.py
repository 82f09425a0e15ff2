"""docs/openapi.yaml: a valid OpenAPI 3.1 document that lists exactly the admin app's routes,
and whose schemas accept the real daemon's answers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from palyra_py.daemon import Daemon
from palyra_py.providers import PROVIDER_NAMES
from palyra_py.registry import Integration

SPEC_FILE = Path(__file__).resolve().parents[1] / "docs" / "openapi.yaml"
SPEC_URI = "urn:palyra:admin-openapi"
OPERATION_KEYS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# Statuses any operation may answer without listing them: its `default` (the Error body).
GLOBAL_STATUSES = {405, 500}


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
    documented = {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in OPERATION_KEYS
    }
    assert documented == registered


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
    # Every JSON operation was checked with a success answer (the stream has its own test).
    operations = {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in OPERATION_KEYS
    }
    succeeded = {(method, path) for method, path, code in api.checked if code < 300}
    assert operations - succeeded == {("GET", "/v1/events/stream")}


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
