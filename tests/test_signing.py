from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from palyra_py.outbound.signing import (
    StandardWebhooksSigner,
    generate_subscription_secret,
    github_signature,
)
from palyra_py.providers.github import GitHubSignature
from palyra_py.providers.standard_webhooks import (
    StandardWebhooksSignature,
    decode_secret,
    sign_v1,
)

BODY = b'{"id":"01J0000000000000000000000A","type":"github.push","data":{"ref":"main"}}'


def test_generated_secrets_are_whsec_32_bytes_and_distinct() -> None:
    secrets = {generate_subscription_secret() for _ in range(20)}
    assert len(secrets) == 20
    for secret in secrets:
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32


def test_reference_receiver_accepts_each_secret_during_rotation() -> None:
    current, previous = generate_subscription_secret(), generate_subscription_secret()
    signer = StandardWebhooksSigner([current, previous])
    # The reference library checks the timestamp against its own clock (±5 min).
    now = int(time.time())
    headers = signer.headers("01J0000000000000000000000A", now, BODY)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    entries = headers["webhook-signature"].split(" ")
    assert len(entries) == 2 and all(e.startswith("v1,") for e in entries)
    for secret in (current, previous):
        assert Webhook(secret).verify(BODY, headers)["type"] == "github.push"
    # Current first: a receiver that only knows the current secret matches the first entry.
    only_current = StandardWebhooksSigner([current]).headers("01J0000000000000000000000A",
                                                             now, BODY)
    assert entries[0] == only_current["webhook-signature"]


def test_reference_receiver_refuses_changes() -> None:
    secret = generate_subscription_secret()
    now = int(time.time())
    headers = StandardWebhooksSigner([secret]).headers("msg_1", now, BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace(b"main", b"evil"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, {**headers, "webhook-id": "msg_2"})
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_subscription_secret()).verify(BODY, headers)


def test_our_ingress_verifier_accepts_the_signer() -> None:
    secret = generate_subscription_secret()
    headers = StandardWebhooksSigner([secret]).headers("msg_1", 1_800_000_000, BODY)
    verified = StandardWebhooksSignature().verify(headers, BODY, [secret], 1_800_000_010, 300)
    assert verified.delivery_id == "msg_1"
    assert verified.timestamp == 1_800_000_000


def test_signer_refuses_bad_secrets_without_echoing_them() -> None:
    with pytest.raises(ValueError, match="at least one"):
        StandardWebhooksSigner([])
    with pytest.raises(ValueError, match="at least one"):
        StandardWebhooksSigner("whsec_abc")  # a bare string is a sequence of characters
    bad = "whsec_not*base64!"
    with pytest.raises(ValueError, match="#2") as info:
        StandardWebhooksSigner([generate_subscription_secret(), bad])
    assert "not*base64" not in str(info.value)


def test_github_signature_docs_vector_and_verifier() -> None:
    # GitHub's documented example (validating webhook deliveries).
    assert github_signature("It's a Secret to Everybody", b"Hello, World!") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )
    secret = generate_subscription_secret()
    headers = {"X-Hub-Signature-256": github_signature(secret, BODY), "X-GitHub-Event": "push"}
    # Keyed by the whole whsec_ string as a plain shared secret, as GitHub receivers expect.
    verified = GitHubSignature().verify(headers, BODY, [secret], 0, 300)
    assert verified.event_type == "push"


def test_signer_matches_the_verifier_helper_call_after_call() -> None:
    # The signer keeps one keyed HMAC per secret and copies it per message: signing twice,
    # or another message in between, must give what the provider helper gives each time.
    secrets = [generate_subscription_secret(), generate_subscription_secret()]
    signer = StandardWebhooksSigner(secrets)
    keys = [decode_secret(s) for s in secrets]
    for msg_id, stamp, body in (("m1", 1_800_000_000, BODY), ("m2", 1_800_000_001, b"{}"),
                                ("m1", 1_800_000_000, BODY)):
        expected = " ".join(sign_v1(k, msg_id, str(stamp), body) for k in keys if k)
        assert signer.headers(msg_id, stamp, body)["webhook-signature"] == expected
