"""The real daemon on loopback and a temp socket: signed requests in, every documented
answer out, and what reaches the journal."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import aiohttp
import pytest

from palyra_py.providers import get_provider
from palyra_py.server.daemon import Daemon
from palyra_py.testing import ManualClock, MemoryKeyring
from tests.helpers import add_integration, create_token, events, send_signed

PUSH = json.dumps({"ref": "refs/heads/main", "commits": [{"id": "abc"}]}).encode()
SECRET = "It's a Secret to Everybody"


async def test_signed_github_push_is_journaled_once(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession
) -> None:
    await add_integration(admin, "gh")
    status, body, _ = await send_signed(http, daemon, "gh", PUSH)
    assert status == 202 and body["status"] == "accepted"
    seq, event_id = body["seq"], body["event_id"]

    status, again, _ = await send_signed(http, daemon, "gh", PUSH)  # a redelivery
    assert status == 200 and again == {"status": "duplicate", "event_id": event_id, "seq": seq}

    received = await events(admin, type="webhook.received")
    assert [e["seq"] for e in received] == [seq]
    envelope = received[0]["payload"]
    assert envelope["v"] == 1 and envelope["id"] == event_id
    assert envelope["event"] == "push" and envelope["source"] == "gh"
    assert envelope["payload"]["ref"] == "refs/heads/main"
    assert envelope["replay_protection"]["nonce"] == "8f7d1c3e-0000-4000-8000-000000000001"
    assert not any("signature" in h.lower() for h in envelope["headers"])


async def test_a_new_delivery_id_is_a_new_event(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession
) -> None:
    await add_integration(admin, "gh")
    first = await send_signed(http, daemon, "gh", PUSH, delivery_id="a" * 36)
    other = json.dumps({"ref": "refs/heads/main", "commits": [{"id": "def"}]}).encode()
    second = await send_signed(http, daemon, "gh", other, delivery_id="b" * 36)
    assert first[0] == second[0] == 202
    assert second[1]["seq"] == first[1]["seq"] + 1


# Schemes whose delivery id (and event type) header is not signed: options, the headers
# the id is read from, the event type header.
UNSIGNED_IDS: dict[str, tuple[dict[str, str], tuple[str, ...], str]] = {
    "github": ({}, ("X-GitHub-Delivery",), "X-GitHub-Event"),
    "shopify": ({}, ("X-Shopify-Event-Id", "X-Shopify-Webhook-Id"), "X-Shopify-Topic"),
    "gitlab": ({}, ("Idempotency-Key", "X-Gitlab-Event-UUID"), "X-Gitlab-Event"),
    "generic": ({"delivery_header": "X-Delivery", "event_header": "X-Event"}, ("X-Delivery",),
                "X-Event"),
}


@pytest.mark.parametrize("provider", sorted(UNSIGNED_IDS))
async def test_a_captured_request_replayed_under_a_new_delivery_id_is_a_duplicate(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession,
    clock: ManualClock, provider: str,
) -> None:
    """Anyone who saw one request whole (GitHub's "Recent deliveries" page shows them) can
    send it again with another delivery id, none, or another event type: all unsigned, so
    the signed content is a key too."""
    options, id_headers, event_header = UNSIGNED_IDS[provider]
    await add_integration(admin, "hook", provider=provider, secret=SECRET,
                          replay_window_s=3600, provider_options=options)
    captured = get_provider(provider, options).sign(
        PUSH, SECRET, clock(), "push", "8f7d1c3e-0000-4000-8000-000000000001")
    url = daemon.ingress_url_for("hook", local=True)

    async def replay(**changes: str | None) -> tuple[int, dict[str, Any]]:
        headers = {k: v for k, v in captured.headers.items() if changes.get(k, "") is not None}
        headers.update({k: v for k, v in changes.items() if v is not None})
        async with http.post(url, data=captured.body, headers=headers) as resp:
            return resp.status, await resp.json()

    status, first = await replay()
    assert (status, first["status"]) == (202, "accepted")
    original = {"status": "duplicate", "event_id": first["event_id"], "seq": first["seq"]}
    fresh_ids = {name: f"replayed-{uuid.uuid4()}" for name in id_headers}
    assert await replay(**fresh_ids) == (200, original)
    assert await replay(**dict.fromkeys(id_headers)) == (200, original)
    assert await replay(**{event_header: "release"}) == (200, original)
    assert await replay(**fresh_ids, **{event_header: "deployment"}) == (200, original)
    assert [e["seq"] for e in await events(admin, type="webhook.received")] == [first["seq"]]

    clock.advance(3601)  # past the replay window: the same content is an event again
    status, later = await replay(**{name: f"later-{uuid.uuid4()}" for name in id_headers})
    assert (status, later["status"]) == (202, "accepted")
    assert later["seq"] > first["seq"]


async def test_signed_delivery_ids_keep_their_own_key(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession
) -> None:
    """Standard Webhooks signs webhook-id: the same body under another id came from the
    secret's holder, and is another event."""
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    await add_integration(admin, "sw", provider="standard-webhooks", secret=secret)
    body = json.dumps({"type": "invoice.paid", "data": {}}).encode()
    answers = [await send_signed(http, daemon, "sw", body, provider="standard-webhooks",
                                 secret=secret, delivery_id=f"msg_{n:020d}") for n in range(2)]
    assert [(status, body["status"]) for status, body, _ in answers] == [(202, "accepted")] * 2


async def test_replay_window_expiry_journals_again(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession,
    clock: ManualClock,
) -> None:
    await add_integration(admin, "gh", replay_window_s=3600)
    assert (await send_signed(http, daemon, "gh", PUSH))[0] == 202
    clock.advance(3599)
    assert (await send_signed(http, daemon, "gh", PUSH))[1]["status"] == "duplicate"
    clock.advance(2)
    assert (await send_signed(http, daemon, "gh", PUSH))[0] == 202


async def test_refusals_have_documented_status_and_reason(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession,
    clock: ManualClock,
) -> None:
    await add_integration(admin, "gh", max_payload_bytes=1024)
    await add_integration(admin, "st", provider="stripe", secret="whsec_test")
    await add_integration(admin, "only-ci", allowed_sources=["10.1.0.0/16"])
    await add_integration(admin, "off", enabled=False)
    url = daemon.ingress_url_for("gh", local=True)

    async def post(url: str, **kw: object) -> tuple[int, dict[str, object]]:
        async with http.post(url, **kw) as resp:  # type: ignore[arg-type]
            return resp.status, await resp.json()

    assert await post(daemon.ingress_url_for("nope", local=True), data=b"{}") == (
        404, {"error": "unknown_integration"})
    async with http.get(url) as resp:
        assert resp.status == 405 and (await resp.json())["error"] == "method_not_allowed"
    status, body = await post(url, data=PUSH, headers={"Content-Type": "application/json"})
    assert (status, body["error"]) == (401, "signature_missing")
    status, body, _ = await send_signed(http, daemon, "gh", PUSH, secret="wrong")
    assert (status, body["error"]) == (401, "signature_mismatch")
    stale = clock() - 301
    status, body, _ = await send_signed(
        http, daemon, "st", json.dumps({"id": "evt_1", "type": "charge.succeeded"}).encode(),
        provider="stripe", secret="whsec_test", now=stale)
    assert (status, body["error"]) == (401, "timestamp_out_of_tolerance")
    status, body, _ = await send_signed(http, daemon, "only-ci", PUSH)
    assert (status, body["error"]) == (403, "source_not_allowed")
    status, body, headers = await send_signed(http, daemon, "off", PUSH)
    assert (status, body["error"]) == (503, "integration_disabled")
    assert int(headers["Retry-After"]) > 0
    status, body = await post(url, data=b"x" * 1025, headers={"Content-Type": "application/json"})
    assert (status, body["error"]) == (413, "payload_too_large")

    async def chunks() -> object:
        for _ in range(4):
            yield b"x" * 512

    status, body = await post(url, data=chunks(), headers={"Content-Type": "application/json"})
    assert (status, body["error"]) == (413, "payload_too_large")
    status, body, _ = await send_signed(http, daemon, "gh", PUSH,
                                        extra_headers={"Content-Type": "text/plain"})
    assert (status, body["error"]) == (415, "unsupported_media_type")
    status, body, _ = await send_signed(http, daemon, "gh", b"{not json")
    assert (status, body["error"]) == (400, "malformed_json")
    status, body, _ = await send_signed(http, daemon, "gh", b"[1, 2]")
    assert (status, body["error"]) == (400, "schema_violation")
    assert await events(admin, type="webhook.received") == []
    async with http.get(daemon.ingress_url_for("x", local=True).replace("/hooks/x", "/healthz")
                        ) as resp:
        assert resp.status == 200


async def test_event_type_not_allowed_is_ignored(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession
) -> None:
    await add_integration(admin, "gh", allowed_events=["pull_request*", "ping"])
    status, body, _ = await send_signed(http, daemon, "gh", PUSH, event="push")
    assert (status, body["status"]) == (200, "ignored")
    status, body, _ = await send_signed(http, daemon, "gh", PUSH, event="pull_request_review")
    assert status == 202


async def test_rejections_are_journaled_as_bounded_aggregates(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession
) -> None:
    for i in range(300):
        async with http.post(daemon.ingress_url_for(f"ghost{i}", local=True), data=b"{}") as r:
            assert r.status == 404
    await daemon.rejections.flush(daemon.journal)
    rejected = await events(admin, type="webhook.rejected")
    assert len(rejected) == 1
    payload = rejected[0]["payload"]
    assert payload["reason"] == "unknown_integration" and payload["count"] == 300
    assert len(payload["requested_ids"]) <= 5


async def test_secret_rotation_accepts_both_during_grace(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession,
    clock: ManualClock,
) -> None:
    await add_integration(admin, "gh", secret="old-secret")
    async with admin.post("/v1/webhooks/gh/rotate-secret",
                          json={"grace_s": 3600, "secret": {"value": "new-secret"}}) as resp:
        assert resp.status == 200
        rotated = await resp.json()
    assert "secret" not in rotated  # a given value is never echoed back
    assert rotated["webhook"]["previous_secret_ref"] == "keyring:webhook:gh:previous"
    for n, secret in enumerate(["old-secret", "new-secret"]):
        body = json.dumps({"ref": "refs/heads/main", "n": n}).encode()
        status, _, _ = await send_signed(http, daemon, "gh", body, secret=secret,
                                         delivery_id=f"rotation-delivery-{n:04d}")
        assert status == 202
    clock.advance(3601)
    status, body, _ = await send_signed(http, daemon, "gh", PUSH, secret="old-secret",
                                        delivery_id="rotation-delivery-0009")
    assert (status, body["error"]) == (401, "signature_mismatch")
    status, _, _ = await send_signed(http, daemon, "gh", PUSH, secret="new-secret",
                                     delivery_id="rotation-delivery-0010")
    assert status == 202


async def test_a_rotation_whose_registry_edit_is_refused_leaves_the_secrets_alone(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession,
    memory_keyring: MemoryKeyring,
) -> None:
    await add_integration(admin, "gh", secret="old-secret")
    registry = daemon.state_dir / "webhooks.toml"
    # A hand-made error on disk: every registry edit is refused until it is fixed.
    registry.write_text(registry.read_text() + '\n[[webhooks]]\nintegration_id = "x"\n')
    async with admin.post("/v1/webhooks/gh/rotate-secret",
                          json={"grace_s": 3600, "secret": {"value": "new-secret"}}) as resp:
        assert resp.status == 422, await resp.text()
    # The registry still names keyring:webhook:gh, which must still hold what GitHub signs
    # with (else every delivery would be refused, and the new secret was never shown).
    assert memory_keyring.passwords[("palyra", "webhook:gh")] == "old-secret"
    assert ("palyra", "webhook:gh:previous") not in memory_keyring.passwords
    status, _, _ = await send_signed(http, daemon, "gh", PUSH, secret="old-secret",
                                     delivery_id="after-refused-rotation-0001")
    assert status == 202


async def test_slack_handshake_and_form_encoded_command(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession
) -> None:
    await add_integration(admin, "sl", provider="slack", secret="8f742231b10e8888abcd99yyyzzz85a5")
    handshake = json.dumps({"type": "url_verification", "challenge": "3eZbrw1aBm2rZgRNFdxV"})
    status, body, _ = await send_signed(http, daemon, "sl", handshake.encode(), provider="slack",
                                        secret="8f742231b10e8888abcd99yyyzzz85a5")
    assert (status, body) == (200, {"challenge": "3eZbrw1aBm2rZgRNFdxV"})
    command = b"command=%2Fdeploy&text=prod&trigger_id=123.456.abc&user_id=U1"
    status, body, _ = await send_signed(
        http, daemon, "sl", command, provider="slack", secret="8f742231b10e8888abcd99yyyzzz85a5",
        extra_headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 202, body
    (event,) = await events(admin, type="webhook.received")
    assert event["event_type"] == "/deploy"
    assert event["payload"]["payload"] == {"command": "/deploy", "text": "prod",
                                           "trigger_id": "123.456.abc", "user_id": "U1"}


async def test_palyra_sender_posts_its_own_envelope(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession
) -> None:
    await add_integration(admin, "peer", provider="palyra", secret="peer-secret")
    envelope = {
        "v": 1, "id": "01J9ZQ4M7G7Y6K2Y3V8W9X0A1B", "event": "entry.created",
        "source": "kb-sync", "payload": {"entry": 42},
        "replay_protection": {"nonce": "n" * 20, "timestamp_unix_ms": 0},
    }
    status, body, _ = await send_signed(http, daemon, "peer", json.dumps(envelope).encode(),
                                        provider="palyra", secret="peer-secret",
                                        delivery_id="nonce-0000000000001")
    assert status == 202, body
    (event,) = await events(admin, type="entry.created")
    assert event["payload"]["payload"] == {"entry": 42}
    assert event["payload"]["headers"]["palyra-envelope-id"] == envelope["id"]
    status, body, _ = await send_signed(http, daemon, "peer", json.dumps(envelope).encode(),
                                        provider="palyra", secret="peer-secret",
                                        delivery_id="nonce-0000000000001")
    assert body["status"] == "duplicate"


async def test_unsigned_integration_still_dedupes_on_the_body(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession
) -> None:
    async with admin.post("/v1/webhooks", json={
        "integration_id": "open", "provider": "generic", "signature_required": False,
    }) as resp:
        assert resp.status == 201, await resp.text()
    url = daemon.ingress_url_for("open", local=True)
    for expected in ("accepted", "duplicate"):
        async with http.post(url, json={"type": "ping"}) as resp:
            assert (await resp.json())["status"] == expected


async def test_metrics_count_answers_with_bounded_labels(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession
) -> None:
    await add_integration(admin, "gh")
    assert (await send_signed(http, daemon, "gh", PUSH))[0] == 202
    assert (await send_signed(http, daemon, "gh", PUSH, secret="bad"))[0] == 401
    for i in range(3):
        async with http.post(daemon.ingress_url_for(f"stranger-{i}", local=True)) as resp:
            assert resp.status == 404
    base = daemon.ingress_url_for("x", local=True).rsplit("/hooks", 1)[0]
    bearer = (await create_token(admin, "prom", scopes=["metrics"])).bearer
    async with http.get(f"{base}/metrics", headers=bearer) as resp:
        text = await resp.text()
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    assert ('palyra_ingress_requests_total{integration="gh",reason="accepted",status="202"} 1.0'
            in text)
    assert 'reason="signature_mismatch",status="401"} 1.0' in text
    assert ('palyra_ingress_requests_total{integration="(unknown)",'
            'reason="unknown_integration",status="404"} 3.0') in text
    assert "stranger" not in text
    assert "palyra_journal_append_seconds_count 1.0" in text


async def test_form_payload_json_is_held_to_the_json_body_rules(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession
) -> None:
    # Found by fuzzing: a form's JSON `payload` field went through a laxer parser.
    from urllib.parse import quote

    secret = "8f742231b10e8888abcd99yyyzzz85a5"
    await add_integration(admin, "sl", provider="slack", secret=secret)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    cases = {
        '{"type": "block_actions", "a\\udc00": 1}': (400, "malformed_json"),
        '{"type": "block_actions", "n": 1e400}': (400, "malformed_json"),
        json.dumps({f"k{i}": i for i in range(2049)}): (400, "schema_violation"),
    }
    for text, expected in cases.items():
        body = ("payload=" + quote(text)).encode()
        status, answer, _ = await send_signed(http, daemon, "sl", body, provider="slack",
                                              secret=secret, extra_headers=form)
        assert (status, answer.get("error")) == expected, text[:40]
    exact = '{"type": "block_actions", "n": 18446744073709551617}'
    status, answer, _ = await send_signed(http, daemon, "sl", ("payload=" + quote(exact)).encode(),
                                          provider="slack", secret=secret, extra_headers=form)
    assert status == 202, answer
    (event,) = await events(admin, type="webhook.received")
    assert event["payload"]["payload"]["n"] == 18446744073709551617


def test_stored_answer_is_byte_for_byte_the_json_answer() -> None:
    from palyra_py.inbound.ingress import answer, stored_answer
    from palyra_py.reasons import Reason

    cases = [(Reason.ACCEPTED, "01J9ZQ4M7G7Y6K2Y3V8W9X0A1B", 1),
             (Reason.DUPLICATE, "01J9ZQ4M7G7Y6K2Y3V8W9X0A1B", 2**40),
             (Reason.DUPLICATE, 'caller "id" \u00e9', 7),  # not a ULID: the general encoder
             (Reason.IGNORED, "x", 3)]
    for reason, event_id, seq in cases:
        fast = stored_answer(reason, event_id, seq)
        slow = answer(reason, {"event_id": event_id, "seq": seq})
        assert (fast.status, fast.body, dict(fast.headers)) == (
            slow.status, slow.body, dict(slow.headers))


def test_header_lookups_agree_on_aiohttp_headers_and_plain_dicts() -> None:
    from multidict import CIMultiDict, CIMultiDictProxy

    from palyra_py.providers._common import kept_headers
    from palyra_py.providers.base import get_header

    raw = {"X-GitHub-Event": "push", "user-agent": "GitHub-Hookshot/1", "X-Other": "y" * 300}
    proxy = CIMultiDictProxy(CIMultiDict(raw))
    lower = {k.lower(): v for k, v in raw.items()}
    names = ["X-GitHub-Event", "User-Agent", "X-Other", "X-GitHub-Delivery"]
    for name in names:
        assert get_header(proxy, name) == get_header(raw, name) == get_header(lower, name)
    assert get_header(proxy, "X-GitHub-Delivery") is None
    assert kept_headers(proxy, names) == kept_headers(raw, names) == kept_headers(lower, names)
    assert kept_headers(proxy, names) == {
        "X-GitHub-Event": "push", "User-Agent": "GitHub-Hookshot/1", "X-Other": "y" * 256}


async def test_many_concurrent_webhooks_mixing_accepted_and_replayed(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession
) -> None:
    # 40 bodies of about 8 KB, each sent three times at once under its own delivery ids:
    # the batches hold big rows (a statement journal past SQLite's 64 KiB spill) and
    # replays of rows written in the same batch or an earlier one.
    await add_integration(admin, "gh")
    start = await daemon.journal.last_seq()
    bodies = [json.dumps({"n": i, "pad": "x" * 8000}).encode() for i in range(40)]
    sends = [(i, copy) for copy in range(3) for i in range(40)]
    answers = await asyncio.gather(*(
        send_signed(http, daemon, "gh", bodies[i], delivery_id=str(uuid.uuid4()))
        for i, _ in sends
    ))
    accepted = {i: body for (i, _), (status, body, _) in zip(sends, answers, strict=True)
                if status == 202}
    assert sorted(accepted) == list(range(40))  # each body exactly once
    assert sorted(b["seq"] for b in accepted.values()) == list(range(start + 1, start + 41))
    for (i, _), (status, body, _) in zip(sends, answers, strict=True):
        if status != 202:  # the others answer with the original
            assert status == 200 and body["status"] == "duplicate"
            assert (body["seq"], body["event_id"]) == (accepted[i]["seq"],
                                                       accepted[i]["event_id"])
    received = await events(admin, type="webhook.received", limit=100)
    assert sorted(e["payload"]["payload"]["n"] for e in received) == list(range(40))
    assert (await daemon.journal.verify()).ok
