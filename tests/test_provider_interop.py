"""Every signature scheme checked both ways against its official library, on the real
daemon: the library signs, our ingress must accept (202) and refuse what was tampered with;
where palyra signs (outbound deliveries, ``webhooks test``), the library verifies.

Libraries: ``standardwebhooks`` and ``svix`` (Standard Webhooks, GitLab signing tokens),
``stripe``, ``slack_sdk``, and ``cryptography`` as the Ed25519 (``v1a``) sender, which no
reference library implements in Python. Shopify ships no verifier of its own for Python;
its newer header spelling is signed here with the standard library's HMAC.

The reference libraries read the real clock, so the daemon's clock starts at the real time
(it still moves only when a test moves it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import standardwebhooks
import stripe
import svix
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from slack_sdk.signature import SignatureVerifier

from palyra_py.providers import get_provider
from palyra_py.server.daemon import Daemon
from palyra_py.testing import CapturingReceiver, ManualClock
from tests.fault_helpers import publish, subscribe
from tests.helpers import add_integration, events
from tests.test_cli_e2e import palyra

STRIPE_BODY = json.dumps({
    "id": "evt_1Interop", "object": "event", "type": "payment_intent.succeeded",
    "data": {"object": {"id": "pi_1", "object": "payment_intent"}},
}).encode()
SW_BODY = json.dumps({"type": "invoice.paid", "timestamp": "2024-01-01T00:00:00Z",
                      "data": {"invoice_id": "inv_1"}}).encode()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=time.time())


def whsec(*, padded: bool = True) -> str:
    text = base64.b64encode(os.urandom(32)).decode()
    assert text.endswith("=")  # 32 bytes: one pad character
    return "whsec_" + (text if padded else text.rstrip("="))


def tampered(body: bytes) -> bytes:
    return body.replace(b"inv_1", b"inv_2").replace(b"pi_1", b"pi_2").replace(b"main", b"evil")


async def post(http: aiohttp.ClientSession, daemon: Daemon, integration_id: str, body: bytes,
               headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    async with http.post(daemon.ingress_url_for(integration_id, local=True), data=body,
                         headers={"Content-Type": "application/json", **headers}) as resp:
        return resp.status, await resp.json()


async def received(admin: aiohttp.ClientSession, integration_id: str) -> list[dict[str, Any]]:
    return await events(admin, type="webhook.received", integration=integration_id)


def sw_headers(library: Any, secret: str, body: bytes, *, msg_id: str | None = None,
               prefix: str = "webhook") -> dict[str, str]:
    """Headers a Standard Webhooks / Svix sender writes, signed by ``library``."""
    msg_id = msg_id or "msg_" + uuid.uuid4().hex
    now = datetime.now(tz=UTC)
    signature = library.Webhook(secret).sign(msg_id, now, body)
    return {f"{prefix}-id": msg_id, f"{prefix}-timestamp": str(int(now.timestamp())),
            f"{prefix}-signature": signature}


# -- Standard Webhooks and Svix (items 17, 18) -------------------------------------------------

@pytest.mark.parametrize("library", [standardwebhooks, svix], ids=["standardwebhooks", "svix"])
async def test_reference_libraries_sign_what_the_daemon_accepts(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession, library: Any,
) -> None:
    secret = whsec()
    await add_integration(admin, "sw", "standard-webhooks", secret)
    headers = sw_headers(library, secret, SW_BODY)
    assert (await post(http, daemon, "sw", SW_BODY, headers))[0] == 202
    status, answer = await post(http, daemon, "sw", tampered(SW_BODY), headers)
    assert (status, answer["error"]) == (401, "signature_mismatch")
    other_id = {**headers, "webhook-id": "msg_other"}
    assert (await post(http, daemon, "sw", SW_BODY, other_id))[0] == 401


async def test_svix_default_headers_are_accepted(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession,
) -> None:
    """Item 17: Svix sends svix-id / svix-timestamp / svix-signature by default."""
    secret = whsec()
    await add_integration(admin, "svx", "standard-webhooks", secret)
    headers = sw_headers(svix, secret, SW_BODY, msg_id="msg_svix_1", prefix="svix")
    svix.Webhook(secret).verify(SW_BODY, headers)  # what the library itself accepts
    status, answer = await post(http, daemon, "svx", SW_BODY, headers)
    assert status == 202, answer
    (event,) = await received(admin, "svx")
    assert event["payload"]["event"] == "invoice.paid"
    assert event["payload"]["headers"]["svix-id"] == "msg_svix_1"
    # The signed svix-id is the dedupe key: the same delivery again is a duplicate.
    assert (await post(http, daemon, "svx", SW_BODY, headers))[1]["status"] == "duplicate"
    status, answer = await post(http, daemon, "svx", tampered(SW_BODY), headers)
    assert (status, answer["error"]) == (401, "signature_mismatch")
    # The families are never mixed: a svix signature with another family's id is refused.
    mixed = {"webhook-id": "msg_other", "webhook-timestamp": headers["svix-timestamp"],
             "svix-signature": headers["svix-signature"]}
    status, answer = await post(http, daemon, "svx", SW_BODY, mixed)
    assert (status, answer["error"]) == (401, "signature_missing")


async def test_unpadded_whsec_secret_verifies_both_ways(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession,
) -> None:
    """Item 18: a whsec_ secret without its '=' padding works like the padded one."""
    secret = whsec(padded=False)
    await add_integration(admin, "nopad", "standard-webhooks", secret)
    for library in (standardwebhooks, svix):
        headers = sw_headers(library, secret, SW_BODY)
        status, answer = await post(http, daemon, "nopad", SW_BODY, headers)
        assert status == 202, answer
    # palyra's own signature (``webhooks test``) verifies with both libraries.
    signed = get_provider("standard-webhooks").sign(SW_BODY, secret, time.time(), "x", "msg_p")
    standardwebhooks.Webhook(secret).verify(signed.body, signed.headers)
    svix.Webhook(secret).verify(signed.body, signed.headers)
    async with admin.post("/v1/webhooks/nopad/test", json={}) as resp:
        assert (resp.status, (await resp.json())["outcome"]) == (200, "accepted")


BAD_SECRETS = ["whsec_not*base64!", "whsec_", "whsec_QUJD=A", "whpk_" + "A" * 10]


@pytest.mark.parametrize("bad", BAD_SECRETS, ids=["bad-char", "empty", "bad-pad", "short-pk"])
async def test_add_refuses_a_secret_that_cannot_decode(
    daemon: Daemon, admin: aiohttp.ClientSession, bad: str,
) -> None:
    """Item 18: webhooks add (admin API) refuses it with a clear message, never echoing it."""
    body = {"integration_id": "bad", "provider": "standard-webhooks", "secret": {"value": bad}}
    async with admin.post("/v1/webhooks", json=body) as resp:
        answer = await resp.json()
        assert (resp.status, answer["error"], answer["field"]) == (
            400, "invalid_request", "secret.value"), answer
    rest = bad.removeprefix("whsec_").removeprefix("whpk_")
    assert "base64" in answer["message"] and not (rest and rest in json.dumps(answer))
    async with admin.get("/v1/webhooks/bad") as resp:
        assert resp.status == 404
    # The same check on rotation, and for a GitLab signing token.
    await add_integration(admin, "good", "standard-webhooks", whsec())
    async with admin.post("/v1/webhooks/good/rotate-secret",
                          json={"secret": {"value": bad}}) as resp:
        assert resp.status == 400
    if bad.startswith("whsec_"):
        gitlab = {**body, "integration_id": "gl", "provider": "gitlab"}
        async with admin.post("/v1/webhooks", json=gitlab) as resp:
            assert resp.status == 400


async def test_cli_add_refuses_a_secret_that_cannot_decode(daemon: Daemon) -> None:
    code, out, err = await palyra(daemon.state_dir, "webhooks", "add", "bad", "--provider",
                                  "standard-webhooks", "--secret-stdin",
                                  stdin=b"whsec_not*base64!\n")
    assert code == 1, (out, err)
    assert "does not decode" in out + err and "not*base64" not in out + err


# -- Standard Webhooks v1a / Ed25519 (items 19, 20) ---------------------------------------------

def ed25519_pair() -> tuple[Ed25519PrivateKey, str]:
    private = Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return private, "whpk_" + base64.b64encode(raw).decode()


def v1a_headers(private: Ed25519PrivateKey, body: bytes, msg_id: str) -> dict[str, str]:
    stamp = str(int(time.time()))
    signature = private.sign(f"{msg_id}.{stamp}.".encode() + body)
    return {"webhook-id": msg_id, "webhook-timestamp": stamp,
            "webhook-signature": "v1a," + base64.b64encode(signature).decode()}


async def test_v1a_ed25519_signature_verifies_with_a_whpk_key(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession,
) -> None:
    private, public = ed25519_pair()
    await add_integration(admin, "ed", "standard-webhooks", public)
    headers = v1a_headers(private, SW_BODY, "msg_ed_1")
    status, answer = await post(http, daemon, "ed", SW_BODY, headers)
    assert status == 202, answer
    # Among other entries (a v1 one that cannot match, an unknown version), still found.
    mixed = v1a_headers(private, SW_BODY, "msg_ed_2")
    mixed["webhook-signature"] = "v1,AAAA v2,zzz " + mixed["webhook-signature"]
    assert (await post(http, daemon, "ed", SW_BODY, mixed))[0] == 202
    # Tampered body, another signer's key, or a v1a entry under a v1 label: refused.
    refused = [
        (tampered(SW_BODY), v1a_headers(private, SW_BODY, "msg_ed_3")),
        (SW_BODY, v1a_headers(Ed25519PrivateKey.generate(), SW_BODY, "msg_ed_4")),
    ]
    relabelled = v1a_headers(private, SW_BODY, "msg_ed_5")
    relabelled["webhook-signature"] = relabelled["webhook-signature"].replace("v1a,", "v1,")
    refused.append((SW_BODY, relabelled))
    for body, bad in refused:
        status, answer = await post(http, daemon, "ed", body, bad)
        assert (status, answer["error"]) == (401, "signature_mismatch")
    assert len(await received(admin, "ed")) == 2


async def test_webhooks_test_is_an_outcome_for_secrets_that_cannot_sign(
    daemon: Daemon, admin: aiohttp.ClientSession, state_dir: Path,
) -> None:
    """Item 20: a whpk_ key (palyra holds no private key) and a secret behind a reference
    that does not decode both answer 200 with outcome cannot_sign; the CLI exits 4."""
    _, public = ed25519_pair()
    await add_integration(admin, "ed", "standard-webhooks", public)
    bad_file = state_dir / "bad-secret"
    bad_file.write_text("whsec_not*base64!\n")
    bad_file.chmod(0o600)
    body = {"integration_id": "badref", "provider": "standard-webhooks",
            "secret": {"ref": f"file:{bad_file}"}}
    async with admin.post("/v1/webhooks", json=body) as resp:
        assert resp.status == 201, await resp.json()
    for integration_id, words in (("ed", "whpk_"), ("badref", "whsec_<base64>")):
        async with admin.post(f"/v1/webhooks/{integration_id}/test", json={}) as resp:
            answer = await resp.json()
            assert resp.status == 200, answer
        assert answer["outcome"] == "cannot_sign" and answer["status_code"] is None
        assert words in answer["reason"] and "not*base64" not in answer["reason"]
        async with admin.get(f"/v1/webhooks/{integration_id}") as resp:
            assert (await resp.json())["webhook"]["last_test_status"] == "cannot_sign"
        code, out, err = await palyra(daemon.state_dir, "webhooks", "test", integration_id)
        assert code == 4, (out, err)
        assert "cannot_sign" in out + err
        code, out, err = await palyra(daemon.state_dir, "webhooks", "test", integration_id,
                                      "--json")
        assert code == 4 and json.loads(out)["outcome"] == "cannot_sign"


# -- Stripe and Slack ------------------------------------------------------------------------

async def test_stripe_library_both_ways(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession,
) -> None:
    secret = "whsec_" + uuid.uuid4().hex
    await add_integration(admin, "pay", "stripe", secret)
    header = stripe.WebhookSignature.generate_signature_header(STRIPE_BODY.decode(), secret)
    status, answer = await post(http, daemon, "pay", STRIPE_BODY, {"Stripe-Signature": header})
    assert status == 202, answer
    status, answer = await post(http, daemon, "pay", tampered(STRIPE_BODY),
                                {"Stripe-Signature": header})
    assert (status, answer["error"]) == (401, "signature_mismatch")
    # What palyra signs (webhooks test), stripe-python verifies; and refuses once changed.
    signed = get_provider("stripe").sign(STRIPE_BODY, secret, time.time(), "x", "y")
    event = stripe.Webhook.construct_event(signed.body, signed.headers["Stripe-Signature"],
                                           secret)
    assert event["id"] == "evt_1Interop"
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(tampered(signed.body),
                                       signed.headers["Stripe-Signature"], secret)


async def test_slack_sdk_both_ways(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession,
) -> None:
    secret = uuid.uuid4().hex
    await add_integration(admin, "sl", "slack", secret)
    body = json.dumps({"type": "event_callback", "event_id": "EvInterop",
                       "event": {"type": "message", "text": "main"}}).encode()
    verifier = SignatureVerifier(secret)
    stamp = str(int(time.time()))
    signature = verifier.generate_signature(timestamp=stamp, body=body)
    assert signature is not None
    headers = {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": signature}
    assert (await post(http, daemon, "sl", body, headers))[0] == 202
    status, answer = await post(http, daemon, "sl", tampered(body), headers)
    assert (status, answer["error"]) == (401, "signature_mismatch")
    signed = get_provider("slack").sign(body, secret, time.time(), "message", "y")
    assert verifier.is_valid_request(signed.body, signed.headers)
    assert not verifier.is_valid_request(tampered(signed.body), signed.headers)


# -- Shopify's newer header spelling, GitLab signing tokens ------------------------------------

async def test_shopify_headers_without_the_x_prefix(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession,
) -> None:
    secret = uuid.uuid4().hex
    await add_integration(admin, "shop", "shopify", secret)
    body = b'{"id":820982911946154508,"email":"jon@example.com","note":"main"}'
    mac = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    headers = {"Shopify-Hmac-Sha256": mac, "Shopify-Topic": "orders/create",
               "Shopify-Event-Id": "evt-shop-1", "Shopify-Webhook-Id": "wh-1",
               "Shopify-Shop-Domain": "example.myshopify.com"}
    status, answer = await post(http, daemon, "shop", body, headers)
    assert status == 202, answer
    (event,) = await received(admin, "shop")
    assert event["payload"]["event"] == "orders/create"
    assert event["payload"]["headers"]["Shopify-Event-Id"] == "evt-shop-1"
    assert (await post(http, daemon, "shop", body, headers))[1]["status"] == "duplicate"
    status, answer = await post(http, daemon, "shop", tampered(body), headers)
    assert (status, answer["error"]) == (401, "signature_mismatch")


async def test_gitlab_signing_token_headers_are_verified(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession,
) -> None:
    secret = whsec()
    await add_integration(admin, "gl", "gitlab", secret)
    body = b'{"object_kind":"push","ref":"refs/heads/main"}'
    headers = {**sw_headers(standardwebhooks, secret, body, msg_id="idem-1"),
               "X-Gitlab-Event": "Push Hook", "Idempotency-Key": "idem-1"}
    status, answer = await post(http, daemon, "gl", body, headers)
    assert status == 202, answer
    (event,) = await received(admin, "gl")
    assert event["payload"]["event"] == "Push Hook"
    # The dedupe key is the signed webhook-id, not the unsigned Idempotency-Key.
    again = {**headers, "Idempotency-Key": "idem-relabelled"}
    assert (await post(http, daemon, "gl", body, again))[1]["status"] == "duplicate"
    # A signature that does not match is refused, even with the token header also sent.
    status, answer = await post(http, daemon, "gl", tampered(body),
                                {**headers, "X-Gitlab-Token": "guess"})
    assert (status, answer["error"]) == (401, "signature_mismatch")
    # palyra's GitLab signer (webhooks test) writes what the reference library verifies.
    signed = get_provider("gitlab").sign(body, secret, time.time(), "Push Hook", "idem-2")
    assert "X-Gitlab-Token" not in signed.headers
    standardwebhooks.Webhook(secret).verify(signed.body, signed.headers)
    async with admin.post("/v1/webhooks/gl/test", json={}) as resp:
        assert (await resp.json())["outcome"] == "accepted"


# -- outbound deliveries: the libraries as receivers --------------------------------------------

async def test_outbound_deliveries_verify_with_svix_and_standardwebhooks(
    outbound: Daemon, admin_o: aiohttp.ClientSession, receiver: CapturingReceiver,
) -> None:
    created = await subscribe(admin_o, "app", receiver.url, events=["entry.*"])
    secret = created["secret"]
    status, _ = await publish(admin_o, "entry.created", n=1)
    assert status == 201
    await outbound.dispatcher.wait_for_attempts(1)
    (got,) = receiver.received
    svix.Webhook(secret).verify(got.body, got.headers)
    assert standardwebhooks.Webhook(secret).verify(got.body, got.headers)["type"] == (
        "entry.created")
    for library in (svix, standardwebhooks):
        with pytest.raises(library.webhooks.WebhookVerificationError):
            library.Webhook(secret).verify(got.body.replace(b'"n":1', b'"n":2'), got.headers)
