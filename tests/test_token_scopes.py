"""API token scopes, expiry, last use, forged provider events, per-token idempotency keys,
the metrics scope and the missing version banner (issue 9: token scopes, items 3 and 15).
The real daemon on loopback, real HTTP, the real registry file, a clock the test moves."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from palyra_py.registry.document import parse_registry
from palyra_py.registry.positions import RegistryError
from palyra_py.registry.tokens import Principal, parse_scope
from palyra_py.server.daemon import Daemon
from palyra_py.testing import CapturingReceiver, ManualClock, MemoryKeyring, running_daemon
from tests.fault_helpers import admin_session
from tests.helpers import add_integration, create_token, send_signed
from tests.raw_http import exchange, request_bytes

PUSH = json.dumps({"ref": "refs/heads/main"}).encode()


def base_of(daemon: Daemon) -> str:
    return daemon.ingress_url_for("x", local=True).rsplit("/hooks", 1)[0]


async def post_event(http: aiohttp.ClientSession, daemon: Daemon, headers: dict[str, str],
                     **body: Any) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{base_of(daemon)}/v1/events", json=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def listed(http: aiohttp.ClientSession, daemon: Daemon, headers: dict[str, str],
                 **query: str) -> tuple[int, Any]:
    async with http.get(f"{base_of(daemon)}/v1/events", params=query,
                        headers=headers) as resp:
        return resp.status, await resp.json()


async def streamed(http: aiohttp.ClientSession, daemon: Daemon, headers: dict[str, str],
                   until_seq: int) -> list[dict[str, Any]]:
    """The events a stream from seq 0 sends, up to and including ``until_seq`` (which
    the caller makes sure the token may read)."""
    got: list[dict[str, Any]] = []
    async with http.get(f"{base_of(daemon)}/v1/events/stream", params={"after_seq": "0"},
                        headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        while True:
            line = await asyncio.wait_for(resp.content.readline(), 10)
            if line.startswith(b"data: "):
                event = json.loads(line[len(b"data: "):])
                got.append(event)
                if event["seq"] >= until_seq:
                    return got


async def admin_publish(admin: aiohttp.ClientSession, type_: str) -> int:
    async with admin.post("/v1/events", json={"type": type_}) as resp:
        answer = await resp.json()
        assert resp.status == 201, answer
        return int(answer["seq"])


# -- scopes: the rules ------------------------------------------------------------------


def test_scopes_are_normalised_and_bad_ones_are_named() -> None:
    assert parse_scope(" Publish:Entry.* ") == "publish:entry.*"
    assert parse_scope("read") == "read" and parse_scope("metrics") == "metrics"
    for bad in ("write", "admin:x", "metrics:*", "read:", "publish:a b", "read:" + "a" * 129,
                "publish:entry.[ab]"):
        with pytest.raises(ValueError):
            parse_scope(bad)


def test_hand_edited_scopes_are_validated_with_their_position(tmp_path: Path) -> None:
    text = ('version = 1\n[[tokens]]\ntoken_id = "abcdefgh2345"\nname = "x"\n'
            'secret_ref = "keyring:token:abcdefgh2345"\nscopes = ["publish", "root"]\n')
    with pytest.raises(RegistryError) as caught:
        parse_registry(text, tmp_path / "webhooks.toml")
    assert caught.value.field == "tokens[0].scopes[1]" and caught.value.line == 6
    with pytest.raises(RegistryError, match="1 to 32"):
        parse_registry(text.replace('["publish", "root"]', "[]"), tmp_path / "w.toml")
    registry = parse_registry(text.replace(', "root"', ""), tmp_path / "w.toml")
    assert registry.tokens["abcdefgh2345"].scopes == ("publish",)


def test_principal_rights() -> None:
    legacy = Principal("t1", "old", None)
    assert legacy.can_publish("anything.at_all") and legacy.can_read
    assert legacy.read_scope() is None and not legacy.can_scrape_metrics
    scoped = Principal("t2", "app", ("publish:entry.*", "metrics"))
    assert scoped.can_publish("entry.created") and not scoped.can_publish("entryx.created")
    assert not scoped.can_read and scoped.can_scrape_metrics
    assert Principal("t3", "ops", ("admin",)).can_scrape_metrics


async def test_token_creation_refuses_bad_scopes_and_expiry(
    admin: aiohttp.ClientSession,
) -> None:
    for fields, field in [
        ({"scopes": ["publish", "sudo"]}, "scopes[1]"),
        ({"scopes": []}, "scopes"),
        ({"scopes": None}, "scopes"),
        ({"scopes": ["read"] * 3 + [f"read:t{i}" for i in range(33)]}, "scopes"),
        ({"expires_in_s": 0}, "expires_in_s"),
        ({"expires_in_s": "90d"}, "expires_in_s"),
    ]:
        async with admin.post("/v1/tokens", json={"name": "x", **fields}) as resp:
            answer = await resp.json()
            assert (resp.status, answer.get("field")) == (400, field), (fields, answer)
    async with admin.get("/v1/tokens") as resp:
        assert (await resp.json())["tokens"] == []  # nothing half-made


# -- publish and read scopes ---------------------------------------------------------------


async def test_publish_scope_limits_the_types_and_grants_no_reading(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession,
) -> None:
    _, bearer = await create_token(admin, "app", scopes=["publish:entry.*"])
    assert (await post_event(http, daemon, bearer, type="entry.created"))[0] == 201
    status, answer = await post_event(http, daemon, bearer, type="deploy.done")
    assert (status, answer["error"]) == (403, "scope_denied")
    for path in ("/v1/events", "/v1/events/stream"):
        async with http.get(base_of(daemon) + path, headers=bearer) as resp:
            assert (resp.status, (await resp.json())["error"]) == (403, "scope_denied")


async def test_default_scope_is_publish(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession,
) -> None:
    _, bearer = await create_token(admin, "plain")
    assert (await post_event(http, daemon, bearer, type="any.thing"))[0] == 201
    assert (await listed(http, daemon, bearer))[0] == 403


async def test_read_scope_needs_a_namespaced_glob_for_webhooks_and_daemon_events(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession,
) -> None:
    await add_integration(admin, "gh-main")
    assert (await send_signed(http, daemon, "gh-main", PUSH))[0] == 202
    await admin_publish(admin, "entry.created")
    last = await admin_publish(admin, "deploy.done")
    _, bare = await create_token(admin, "bare", scopes=["read"])
    _, star = await create_token(admin, "star", scopes=["read:*", "read:g*"])
    _, entries = await create_token(admin, "entries", scopes=["read:entry.*"])
    _, github = await create_token(admin, "github", scopes=["read:github.*"])
    _, ops = await create_token(admin, "ops", scopes=["read:integration.*", "read:deploy.*"])

    def types(events: list[dict[str, Any]]) -> list[str]:
        return [e["kind"] if e["kind"] != "webhook.received" else "github." + e["event_type"]
                for e in events]

    for bearer in (bare, star):
        status, answer = await listed(http, daemon, bearer)
        assert status == 200 and types(answer["events"]) == ["entry.created", "deploy.done"]
        assert types(await streamed(http, daemon, bearer, last)) == ["entry.created",
                                                                    "deploy.done"]
    assert types((await listed(http, daemon, entries))[1]["events"]) == ["entry.created"]
    status, answer = await listed(http, daemon, github)
    assert types(answer["events"]) == ["github.push"]
    assert answer["events"][0]["payload"]["payload"] == {"ref": "refs/heads/main"}
    assert types((await listed(http, daemon, ops))[1]["events"]) == [
        "integration.created", "deploy.done"]
    # The query's own filter still applies on top of the scope.
    status, answer = await listed(http, daemon, bare, type="deploy.*")
    assert types(answer["events"]) == ["deploy.done"]


async def test_a_live_stream_keeps_to_the_tokens_read_scope(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession,
) -> None:
    await add_integration(admin, "gh-main")
    _, bare = await create_token(admin, "bare", scopes=["read"])
    async with http.get(f"{base_of(daemon)}/v1/events/stream", headers=bare) as resp:
        assert resp.status == 200, await resp.text()
        assert await asyncio.wait_for(resp.content.readline(), 10) == b": palyra event stream\n"
        # Both arrive after the stream joined its group: the hub sends them, not the journal.
        assert (await send_signed(http, daemon, "gh-main", PUSH))[0] == 202
        last = await admin_publish(admin, "entry.created")
        kinds: list[str] = []
        while not kinds or kinds[-1] != "entry.created":
            line = await asyncio.wait_for(resp.content.readline(), 10)
            if line.startswith(b"data: "):
                event = json.loads(line[len(b"data: "):])
                kinds.append(event["kind"])
                assert event["seq"] <= last
    assert kinds == ["entry.created"]


async def test_a_legacy_token_keeps_publishing_anything_and_reading_everything(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession,
) -> None:
    _, bearer = await create_token(admin, "old", scopes=["publish"])
    registry = daemon.registry_file.path
    registry.write_text(registry.read_text().replace('scopes = ["publish"]\n', ""))
    async with admin.post("/v1/reload") as resp:
        assert resp.status == 200
    async with admin.get("/v1/tokens") as resp:
        (token,) = (await resp.json())["tokens"]
    assert token["legacy"] is True and token["scopes"] is None
    await add_integration(admin, "gh")
    assert (await send_signed(http, daemon, "gh", PUSH))[0] == 202
    status, published = await post_event(http, daemon, bearer, type="anything.goes")
    assert status == 201
    status, answer = await listed(http, daemon, bearer)
    kinds = [e["kind"] for e in answer["events"]]
    assert status == 200 and {"daemon.started", "webhook.received", "anything.goes"} <= set(
        kinds)
    seen = await streamed(http, daemon, bearer, published["seq"])
    assert [e["kind"] for e in seen] == kinds
    async with http.get(f"{base_of(daemon)}/metrics", headers=bearer) as resp:
        assert resp.status == 403  # /metrics was never a token right


# -- expiry and last use ------------------------------------------------------------------


async def test_an_expired_token_is_refused_with_its_own_reason(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession,
    clock: ManualClock,
) -> None:
    _, bearer = await create_token(admin, "short", expires_in_s=60)
    async with admin.get("/v1/tokens") as resp:
        (token,) = (await resp.json())["tokens"]
    assert token["expires_at"] is not None
    assert (await post_event(http, daemon, bearer, type="a.b"))[0] == 201
    clock.advance(60)
    status, answer = await post_event(http, daemon, bearer, type="a.b")
    assert (status, answer["error"]) == (401, "token_expired")
    assert token["token_id"] in answer["message"]
    bad = {"Authorization": bearer["Authorization"][:-2] + "xx"}
    status, answer = await post_event(http, daemon, bad, type="a.b")
    assert (status, answer["error"]) == (401, "unauthorized")  # only a genuine one says so


async def test_last_use_is_listed_and_survives_a_restart(
    state_dir: Path, clock: ManualClock, memory_keyring: MemoryKeyring,
) -> None:
    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring) as d:
        async with admin_session(d.socket_path) as admin, aiohttp.ClientSession() as http:
            token_id, bearer = await create_token(admin, "app")
            async with admin.get("/v1/tokens") as resp:
                assert (await resp.json())["tokens"][0]["last_used_at"] is None
            clock.advance(30)
            assert (await post_event(http, d, bearer, type="a.b"))[0] == 201
            used = int(clock())
            async with admin.get("/v1/tokens") as resp:
                (token,) = (await resp.json())["tokens"]
            assert token["last_used_at"] is not None
            assert "webhooks.toml" not in {p.name for p in state_dir.iterdir()
                                           if p.stat().st_mtime > used}
    usage = json.loads((state_dir / "token-usage.json").read_text())
    assert usage == {token_id: used}
    assert (state_dir / "token-usage.json").stat().st_mode & 0o077 == 0
    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring) as d:
        async with admin_session(d.socket_path) as admin:
            async with admin.get("/v1/tokens") as resp:
                (again,) = (await resp.json())["tokens"]
    assert again["last_used_at"] == token["last_used_at"]


# -- item 3: forged provider events -------------------------------------------------------


async def test_a_token_cannot_forge_a_provider_event_and_its_events_name_it(
    outbound: Daemon, admin_o: aiohttp.ClientSession, http: aiohttp.ClientSession,
    receiver: CapturingReceiver,
) -> None:
    await add_integration(admin_o, "gh-main")
    async with admin_o.post("/v1/subscriptions", json={
        "subscription_id": "ci", "url": receiver.url, "events": ["github.*", "entry.*"],
    }) as resp:
        assert resp.status == 201
    token_id, bearer = await create_token(admin_o, "app")
    forged = {"type": "github.push", "source": "gh-main", "actor": "github",
              "data": {"ref": "refs/heads/main"}}
    status, answer = await post_event(http, outbound, bearer, **forged)
    assert (status, answer["field"]) == (400, "type")
    status, answer = await post_event(http, outbound, bearer, **{**forged, "type": "entry.x"})
    assert (status, answer["field"]) == (400, "source")
    async with admin_o.post("/v1/events", json=forged) as resp:  # nor may the socket
        assert resp.status == 400
    status, published = await post_event(http, outbound, bearer, type="entry.created",
                                         data={"n": 1})
    assert status == 201
    (got,) = await receiver.wait_for(1)
    body = got.json()
    assert body["id"] == published["event_id"] and body["type"] == "entry.created"
    assert body["published_by"] == f"token:{token_id}" and body["source"] == "app"
    # A real push still arrives, without published_by.
    assert (await send_signed(http, outbound, "gh-main", PUSH))[0] == 202
    second = (await receiver.wait_for(2))[1].json()
    assert second["type"] == "github.push" and "published_by" not in second


async def test_a_token_named_like_an_integration_publishes_under_its_id(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession,
) -> None:
    await add_integration(admin, "gh-main")
    token_id, bearer = await create_token(admin, "gh-main")
    assert (await post_event(http, daemon, bearer, type="entry.created"))[0] == 201
    async with admin.get("/v1/events", params={"type": "entry.created"}) as resp:
        (event,) = (await resp.json())["events"]
    assert event["source"] == f"token:{token_id}"
    assert event["payload"]["published_by"] == f"token:{token_id}"


# -- idempotency keys per token -----------------------------------------------------------


async def test_idempotency_keys_are_scoped_per_token(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession,
) -> None:
    _, first = await create_token(admin, "one")
    _, second = await create_token(admin, "two")
    event = {"type": "sync.finished", "idempotency_key": "sync-2026-12-07"}
    status, a = await post_event(http, daemon, first, **event)
    assert status == 201
    status, b = await post_event(http, daemon, second, **event)  # not suppressed by "one"
    assert status == 201 and b["event_id"] != a["event_id"] and b["duplicate"] is False
    status, again = await post_event(http, daemon, first, **event)
    assert (status, again["event_id"], again["duplicate"]) == (200, a["event_id"], True)
    async with admin.post("/v1/events", json=event) as resp:  # the socket has its own
        assert resp.status == 201


# -- item 15: /metrics and the Server header ----------------------------------------------


async def test_metrics_need_a_metrics_or_admin_token(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession,
) -> None:
    url = f"{base_of(daemon)}/metrics"
    async with http.get(url) as resp:
        assert (resp.status, (await resp.json())["error"]) == (401, "unauthorized")
    _, publisher = await create_token(admin, "pub", scopes=["publish", "read"])
    async with http.get(url, headers=publisher) as resp:
        assert (resp.status, (await resp.json())["error"]) == (403, "scope_denied")
    for scope in ("metrics", "admin"):
        _, bearer = await create_token(admin, scope, scopes=[scope])
        async with http.get(url, headers=bearer) as resp:
            text = await resp.text()
            assert resp.status == 200 and "palyra_ingress_connections" in text
    # Each refusal has its metric label.
    assert 'palyra_token_refusals_total{reason="unauthorized"} 1.0' in text
    assert 'palyra_token_refusals_total{reason="scope_denied"} 1.0' in text


async def test_metrics_public_setting_serves_them_without_a_token(
    http: aiohttp.ClientSession,
) -> None:
    async with running_daemon(clock=ManualClock(), metrics__public=True) as d:
        async with http.get(f"{base_of(d)}/metrics") as resp:
            assert resp.status == 200


async def test_no_listener_sends_a_version_banner(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession,
) -> None:
    servers: list[str] = []
    for path in ("/healthz", "/metrics", "/hooks/nope", "/nowhere"):
        async with http.get(base_of(daemon) + path) as resp:
            servers.append(resp.headers.get("Server", ""))
    async with admin.get("/v1/status") as resp:
        servers.append(resp.headers.get("Server", ""))
    # A request the HTTP parser refuses before any handler runs.
    broken = await exchange(daemon.ingress_port,
                            b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", timeout=5)
    assert broken.status == 400
    servers.append(broken.headers.get("server", ""))
    ok = await exchange(daemon.ingress_port, request_bytes("GET", "/healthz"), timeout=5)
    servers.append(ok.headers.get("server", ""))
    assert servers == ["palyra"] * len(servers)
