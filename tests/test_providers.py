"""Signature schemes: published vectors, round trips, tampering, freshness, rotation, bounds.

Vectors marked "docs" are the providers' own published examples; the ones marked "built" were
computed once with ``openssl dgst -hmac`` (independently of this code) and frozen, because the
provider publishes none.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from palyra_py.providers import (
    PROVIDER_NAMES,
    CannotSign,
    Provider,
    SignedRequest,
    Verified,
    check_secret,
    get_provider,
    secret_format,
)
from palyra_py.reasons import Reason, Rejection

NOW = 1_700_000_000.0
TOL = 300.0
DELIVERY = "01HV6Z2Q7X8J9K0M1N2P3Q4R5S"
ROOT = Path(__file__).resolve().parent.parent
GARBAGE_64K = "".join(random.Random(7).choices("v1=,abc0123 t", k=64 * 1024))


@dataclass(frozen=True)
class Case:
    id: str
    name: str
    signed_headers: tuple[str, ...]
    timestamped: bool
    options: Mapping[str, Any] = field(default_factory=dict)
    body_signed: bool = True

    def provider(self) -> Provider:
        return get_provider(self.name, self.options)

    def secret(self, n: int = 0) -> str:
        raw = hashlib.sha256(f"{self.id}-{n}".encode()).digest()
        if self.name == "standard-webhooks":
            return "whsec_" + base64.b64encode(raw).decode()
        return raw.hex()


GENERIC_FULL = {
    "header": "X-Hub-Signature",
    "algorithm": "sha512",
    "encoding": "base64",
    "prefix": "sha512=",
    "timestamp_header": "X-Timestamp",
    "event_header": "X-Event",
    "delivery_header": "X-Delivery",
}

CASES = [
    Case("github", "github", ("X-Hub-Signature-256",), False),
    Case("stripe", "stripe", ("Stripe-Signature",), True),
    Case("slack", "slack", ("X-Slack-Signature", "X-Slack-Request-Timestamp"), True),
    Case("gitlab", "gitlab", ("X-Gitlab-Token",), False, body_signed=False),
    Case("shopify", "shopify", ("X-Shopify-Hmac-Sha256",), False),
    Case(
        "standard-webhooks",
        "standard-webhooks",
        ("webhook-id", "webhook-timestamp", "webhook-signature"),
        True,
    ),
    Case("generic", "generic", ("X-Signature",), False),
    Case(
        "generic-sha1-prefix", "generic", ("X-Signature",), False,
        {"algorithm": "sha1", "prefix": "sha1="},
    ),
    Case("generic-full", "generic", ("X-Hub-Signature", "X-Timestamp"), True, GENERIC_FULL),
    Case("palyra", "palyra", ("X-Palyra-Signature",), True),
]
TIMESTAMPED = [case for case in CASES if case.timestamped]
BODY_SIGNED = [case for case in CASES if case.body_signed]
by_id = pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)


def signed(case: Case, now: float = NOW, secret: str | None = None) -> SignedRequest:
    provider = case.provider()
    event_type, body = provider.sample_event()
    key = case.secret() if secret is None else secret
    return provider.sign(body, key, now, event_type, DELIVERY)


def verify(case: Case, request: SignedRequest, *secrets: str, now: float = NOW) -> Verified:
    keys = list(secrets) if secrets else [case.secret()]
    return case.provider().verify(request.headers, request.body, keys, now, TOL)


def refused(
    reason: Reason, case: Case, request: SignedRequest, *secrets: str, now: float = NOW
) -> None:
    with pytest.raises(Rejection) as info:
        verify(case, request, *secrets, now=now)
    assert info.value.reason is reason, info.value


def with_headers(request: SignedRequest, **changes: str | None) -> SignedRequest:
    headers = dict(request.headers)
    for name, value in changes.items():
        name = name.replace("_", "-")
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    return SignedRequest(headers=headers, body=request.body)


def flip(text: str, index: int, bit: int) -> str:
    return text[:index] + chr(ord(text[index]) ^ bit) + text[index + 1 :]


# ---- registry of providers -------------------------------------------------------------


def test_provider_names_are_sorted_and_complete() -> None:
    assert PROVIDER_NAMES == (
        "generic", "github", "gitlab", "palyra", "shopify", "slack", "standard-webhooks", "stripe",
    )
    for name in PROVIDER_NAMES:
        assert get_provider(name).name == name


def test_unknown_provider_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown provider 'bitbucket'.*github.*stripe"):
        get_provider("bitbucket")
    with pytest.raises(ValueError, match="allowed"):
        secret_format("bitbucket")


@pytest.mark.parametrize("name", PROVIDER_NAMES)
def test_unknown_option_is_refused_by_name(name: str) -> None:
    with pytest.raises(ValueError, match="'tolerance'"):
        get_provider(name, {"tolerance": 5})


def test_secret_formats() -> None:
    assert secret_format("standard-webhooks") == "whsec"
    assert secret_format("stripe") == "token"
    assert {secret_format(n) for n in PROVIDER_NAMES} - {"whsec", "token"} == {"hex"}


@by_id
def test_timestamped_flag_matches_the_scheme(case: Case) -> None:
    assert case.provider().timestamped is case.timestamped


@by_id
def test_delivery_id_signed_flag_matches_the_scheme(case: Case) -> None:
    """Every header the signature does not cover rewritten: the request still verifies, and
    its delivery id changed exactly when the class says the id is not signed."""
    request = signed(case)
    original = verify(case, request)
    rewritten = {name: value if name in case.signed_headers or name == "Content-Type"
                 else f"rewritten-by-a-replayer-{name}" for name, value in request.headers.items()}
    replayed = verify(case, SignedRequest(headers=rewritten, body=request.body))
    if original.delivery_id is not None:
        changed = replayed.delivery_id != original.delivery_id
        assert case.provider().delivery_id_signed is not changed
    else:  # no id at all: the ingress dedupes on the signed content alone
        assert replayed.delivery_id is None


# ---- published and built vectors -------------------------------------------------------


GITHUB_DOC_SECRET = "It's a Secret to Everybody"
GITHUB_DOC_HEX = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def test_github_docs_vector() -> None:
    headers = {
        "X-Hub-Signature-256": "sha256=" + GITHUB_DOC_HEX,
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "X-GitHub-Hook-ID": "292430182",
    }
    v = get_provider("github").verify(headers, b"Hello, World!", [GITHUB_DOC_SECRET], NOW, TOL)
    assert (v.event_type, v.delivery_id, v.timestamp) == (
        "push", "72d3162e-cc78-11e3-81ab-4c9367dc0958", None,
    )
    assert v.headers_kept["X-GitHub-Hook-ID"] == "292430182"
    assert "X-Hub-Signature-256" not in v.headers_kept


def test_github_legacy_sha1_only_when_allowed() -> None:
    # built: openssl dgst -sha1 -hmac "It's a Secret to Everybody"
    headers = {"X-Hub-Signature": "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59"}
    secrets = ["It's a Secret to Everybody"]
    with pytest.raises(Rejection) as info:
        get_provider("github").verify(headers, b"Hello, World!", secrets, NOW, TOL)
    assert info.value.reason is Reason.SIGNATURE_MISSING
    sha1 = get_provider("github", {"allow_sha1": True})
    assert sha1.verify(headers, b"Hello, World!", secrets, NOW, TOL).event_type == "unknown"
    # A present SHA-256 header is always the one checked, even when SHA-1 is allowed.
    bad256 = {**headers, "X-Hub-Signature-256": "sha256=" + "0" * 64}
    with pytest.raises(Rejection) as info:
        sha1.verify(bad256, b"Hello, World!", secrets, NOW, TOL)
    assert info.value.reason is Reason.SIGNATURE_MISMATCH
    with pytest.raises(ValueError, match="allow_sha1"):
        get_provider("github", {"allow_sha1": "yes"})


def test_github_hex_is_case_sensitive() -> None:
    upper = "sha256=" + GITHUB_DOC_HEX.upper()
    with pytest.raises(Rejection) as info:
        get_provider("github").verify(
            {"X-Hub-Signature-256": upper}, b"Hello, World!", [GITHUB_DOC_SECRET], NOW, TOL
        )
    assert info.value.reason is Reason.SIGNATURE_MISMATCH


SLACK_DOC_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&"
    b"channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&"
    b"command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2F"
    b"commands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&"
    b"trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)


def test_slack_docs_vector() -> None:
    headers = {
        "X-Slack-Signature": "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
        "X-Slack-Request-Timestamp": "1531420618",
    }
    secret = ["8f742231b10e8888abcd99yyyzzz85a5"]
    v = get_provider("slack").verify(headers, SLACK_DOC_BODY, secret, 1531420618.0, TOL)
    assert (v.event_type, v.delivery_id, v.timestamp) == ("/webhook-collect", None, 1531420618.0)
    with pytest.raises(Rejection) as info:
        get_provider("slack").verify(headers, SLACK_DOC_BODY, secret, 1531420618.0 + 301, TOL)
    assert info.value.reason is Reason.TIMESTAMP_OUT_OF_TOLERANCE


def test_standard_webhooks_reference_vector() -> None:
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }
    body = b'{"test": 2432232314}'
    provider = get_provider("standard-webhooks")
    for secret in ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"):
        v = provider.verify(headers, body, [secret], 1614265330.0, TOL)
        assert (v.event_type, v.delivery_id, v.timestamp) == (
            "unknown", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330.0,
        )
    secret, msg_id = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek"
    signed_again = provider.sign(body, secret, 1614265330.9, "x", msg_id)
    assert signed_again.headers["webhook-signature"] == headers["webhook-signature"]


def test_stripe_built_vector() -> None:
    # built: openssl dgst -sha256 -hmac whsec_test_secret over "1492774577.<body>"
    body = b'{"id":"evt_test_webhook","object":"event","type":"payment_intent.succeeded"}'
    sig = "add268875c77da0b0493b2ae7deba5dabc736b8c4b5a40755158e5471b4c3fe2"
    headers = {"Stripe-Signature": f"t=1492774577,v1={'0' * 64},v1={sig},v0={'1' * 64}"}
    v = get_provider("stripe").verify(headers, body, ["whsec_test_secret"], 1492774577.0, TOL)
    assert (v.event_type, v.delivery_id, v.timestamp) == (
        "payment_intent.succeeded", "evt_test_webhook", 1492774577.0,
    )
    # v0 is another scheme, never a signature.
    only_v0 = {"Stripe-Signature": f"t=1492774577,v0={sig}"}
    with pytest.raises(Rejection) as info:
        get_provider("stripe").verify(only_v0, body, ["whsec_test_secret"], 1492774577.0, TOL)
    assert info.value.reason is Reason.SIGNATURE_MISMATCH


def test_shopify_built_vector() -> None:
    # built: openssl dgst -sha256 -hmac hush -binary | base64
    headers = {
        "X-Shopify-Hmac-Sha256": "D0UMXmhjwBRi4y66TmhJrDlhQABD7zI2fm3p6/QLMo8=",
        "X-Shopify-Topic": "orders/create",
        "X-Shopify-Webhook-Id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
    }
    body = b'{"id":820982911946154508,"email":"jon@example.com"}'
    v = get_provider("shopify").verify(headers, body, ["hush"], NOW, TOL)
    assert (v.event_type, v.delivery_id) == ("orders/create", headers["X-Shopify-Webhook-Id"])
    with_event_id = {**headers, "X-Shopify-Event-Id": "98880550"}
    v = get_provider("shopify").verify(with_event_id, body, ["hush"], NOW, TOL)
    assert v.delivery_id == "98880550"


@pytest.mark.parametrize(
    ("options", "headers"),
    [
        (
            {"algorithm": "sha512"},
            {"X-Signature": "73ff812b04963c552d993e6cb5b10bca9f83a0127ce61a0bd385778f96a3b769"
             "8add39df63abcb3b0edec300c2cf021af33ae508b574d97868ac72a7006083bd"},
        ),
        (
            {"algorithm": "sha1", "encoding": "base64", "header": "X-Sig", "prefix": "sha1="},
            {"X-Sig": "sha1=bm9wZQ==, sha1=GddJkV0UoDD999/NzvwrUMTd6YA="},
        ),
        (
            {"timestamp_header": "X-Timestamp"},
            {"X-Signature": "3f095721c25a14dbe14f54ab356a14fe55a62a4f16824adfce25d5fb70032cd6",
             "X-Timestamp": "1700000000"},
        ),
    ],
    ids=["sha512-hex", "sha1-base64-list", "timestamped"],
)
def test_generic_built_vectors(options: dict[str, Any], headers: dict[str, str]) -> None:
    # built: openssl dgst -<alg> -hmac generic-secret over the body (or "1700000000.<body>")
    provider = get_provider("generic", options)
    v = provider.verify(headers, b'{"type":"test"}', ["generic-secret"], NOW, TOL)
    assert v.event_type == "test"
    assert v.timestamp == (NOW if "timestamp_header" in options else None)


def test_palyra_built_vector_then_schema() -> None:
    # built: openssl dgst -sha256 -hmac palyra-secret over '{"v":1}': the signature matches,
    # then the body is refused for what it is, not for its signature.
    hexdigest = "38367e99a39b7e6dafce53f915c3cb96c3224a65c27899e165e403b34d4d606b"
    headers = {"X-Palyra-Signature": "sha256=" + hexdigest}
    with pytest.raises(Rejection) as info:
        get_provider("palyra").verify(headers, b'{"v":1}', ["palyra-secret"], NOW, TOL)
    assert info.value.reason is Reason.SCHEMA_VIOLATION


# ---- properties every scheme shares ----------------------------------------------------


def expected_delivery(case: Case, request: SignedRequest) -> str | None:
    if case.name in ("stripe", "slack"):
        body = json.loads(request.body)
        return str(body["id"] if case.name == "stripe" else body["event_id"])
    if case.name == "generic" and "delivery_header" not in case.options:
        return None
    return DELIVERY


@by_id
def test_sign_verify_round_trip(case: Case) -> None:
    event_type, _ = case.provider().sample_event()
    request = signed(case)
    v = verify(case, request)
    assert v.event_type == event_type
    assert v.delivery_id == expected_delivery(case, request)
    assert v.timestamp == (NOW if case.timestamped else None)
    assert v.challenge is None
    assert request.headers["Content-Type"].startswith("application/json")
    not_secret = ("webhook-id", "webhook-timestamp", "X-Slack-Request-Timestamp", "X-Timestamp")
    for header in case.signed_headers:
        if header not in not_secret:
            assert header not in v.headers_kept


@pytest.mark.parametrize("name", ["stripe", "slack"])
def test_sample_events_carry_fresh_delivery_ids(name: str) -> None:
    # These schemes take the delivery id from the body, so two `webhooks test` runs must not
    # look like one redelivery.
    case = next(c for c in CASES if c.name == name)
    assert verify(case, signed(case)).delivery_id != verify(case, signed(case)).delivery_id


@pytest.mark.parametrize("case", BODY_SIGNED, ids=lambda c: c.id)
def test_every_single_byte_change_to_the_body_is_refused(case: Case) -> None:
    request = signed(case)
    body = request.body
    for i in range(len(body)):
        tampered = body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1 :]
        refused(Reason.SIGNATURE_MISMATCH, case, SignedRequest(request.headers, tampered))
    refused(Reason.SIGNATURE_MISMATCH, case, SignedRequest(request.headers, body + b" "))
    refused(Reason.SIGNATURE_MISMATCH, case, SignedRequest(request.headers, body[:-1]))


def test_gitlab_token_does_not_protect_the_body() -> None:
    # GitLab signs nothing: this documents the limit rather than hiding it.
    case = next(c for c in CASES if c.name == "gitlab")
    request = signed(case)
    tampered = SignedRequest(request.headers, request.body + b" ")
    assert verify(case, tampered).event_type == "Push Hook"


@by_id
def test_every_single_byte_change_to_a_signed_header_is_refused(case: Case) -> None:
    request = signed(case)
    for header in case.signed_headers:
        value = request.headers[header]
        for i in range(len(value)):
            for bit in (0x01, 0x20, 0x80):
                tampered = with_headers(request, **{header: flip(value, i, bit)})
                refused(Reason.SIGNATURE_MISMATCH, case, tampered)


@by_id
def test_missing_or_blank_headers(case: Case) -> None:
    request = signed(case)
    for header in case.signed_headers:
        refused(Reason.SIGNATURE_MISSING, case, with_headers(request, **{header: None}))
        refused(Reason.SIGNATURE_MISSING, case, with_headers(request, **{header: "  "}))
    refused(Reason.SIGNATURE_MISSING, case, SignedRequest({}, request.body))


@by_id
def test_wrong_or_no_secret(case: Case) -> None:
    request = signed(case)
    refused(Reason.SIGNATURE_MISMATCH, case, request, case.secret(1))
    with pytest.raises(Rejection) as info:
        case.provider().verify(request.headers, request.body, [], NOW, TOL)
    assert info.value.reason is Reason.SIGNATURE_MISMATCH
    with pytest.raises(Rejection) as info:
        case.provider().verify(request.headers, request.body, [""], NOW, TOL)
    assert info.value.reason is Reason.SIGNATURE_MISMATCH


@by_id
def test_rotation_accepts_old_and_new_only(case: Case) -> None:
    old, new, other = case.secret(0), case.secret(1), case.secret(2)
    for secret in (old, new):
        assert verify(case, signed(case, secret=secret), new, old).event_type != ""
    refused(Reason.SIGNATURE_MISMATCH, case, signed(case, secret=other), new, old)


@pytest.mark.parametrize("case", TIMESTAMPED, ids=lambda c: c.id)
def test_timestamp_tolerance_both_ways_edges_included(case: Case) -> None:
    for skew in (-TOL, TOL):
        assert verify(case, signed(case, now=NOW + skew)).timestamp == NOW + skew
    for skew in (-TOL - 1, TOL + 1, -86_400.0):
        refused(Reason.TIMESTAMP_OUT_OF_TOLERANCE, case, signed(case, now=NOW + skew))
    # The tolerance is checked only once the signature matched.
    refused(Reason.SIGNATURE_MISMATCH, case, signed(case, now=NOW - 86_400, secret=case.secret(5)))


@pytest.mark.parametrize("case", [c for c in CASES if not c.timestamped], ids=lambda c: c.id)
def test_untimestamped_schemes_ignore_the_clock(case: Case) -> None:
    assert verify(case, signed(case), now=NOW + 10 * 365 * 86_400).timestamp is None


@by_id
def test_header_lookup_is_case_insensitive(case: Case) -> None:
    request = signed(case)
    lower = {k.lower(): v for k, v in request.headers.items()}
    assert verify(case, SignedRequest(lower, request.body)).event_type
    proxy = CIMultiDictProxy(CIMultiDict({k.upper(): v for k, v in request.headers.items()}))
    assert case.provider().verify(proxy, request.body, [case.secret()], NOW, TOL).event_type


@by_id
def test_oversized_signature_header_is_malformed(case: Case) -> None:
    request = signed(case)
    header = case.signed_headers[0]
    refused(Reason.SIGNATURE_MISMATCH, case, with_headers(request, **{header: GARBAGE_64K}))
    padded = request.headers[header] + "," + "0" * 9000
    refused(Reason.SIGNATURE_MISMATCH, case, with_headers(request, **{header: padded}))


@by_id
def test_rejections_never_echo_secret_or_signature(case: Case) -> None:
    request = signed(case)
    tampered = with_headers(request, **{case.signed_headers[0]: "0" * 40})
    for bad in (tampered, signed(case, secret=case.secret(3))):
        with pytest.raises(Rejection) as info:
            verify(case, bad)
        message = str(info.value)
        assert case.secret() not in message
        for header in case.signed_headers:
            value = bad.headers[header]
            if len(value) > 12:
                assert value not in message and value[-12:] not in message


@by_id
def test_verify_unsigned_reads_event_without_signature(case: Case) -> None:
    request = signed(case)
    stripped = {k: v for k, v in request.headers.items() if k not in case.signed_headers}
    v = case.provider().verify_unsigned(stripped, request.body)
    assert v.event_type == case.provider().sample_event()[0]
    assert v.timestamp == (NOW if case.name == "palyra" else None)


# ---- bounded work on many signatures ---------------------------------------------------


@pytest.mark.parametrize(("position", "accepted"), [(0, True), (15, True), (16, False)])
def test_only_the_first_16_candidates_are_compared(position: int, accepted: bool) -> None:
    case = next(c for c in CASES if c.name == "stripe")
    request = signed(case)
    stamp, v1 = request.headers["Stripe-Signature"].split(",")
    entries = ["v1=00"] * 20
    entries[position] = v1
    tampered = with_headers(request, Stripe_Signature=",".join([stamp, *entries]))
    if accepted:
        assert verify(case, tampered).delivery_id
    else:
        refused(Reason.SIGNATURE_MISMATCH, case, tampered)


def test_thousand_entry_headers_are_refused() -> None:
    stripe = next(c for c in CASES if c.name == "stripe")
    request = signed(stripe)
    stamp, v1 = request.headers["Stripe-Signature"].split(",")
    # Short entries fit in 8 KiB: the valid one is past the 16 compared.
    short = ",".join([stamp, *["v1=0"] * 999, v1])
    assert len(short) < 8192
    refused(Reason.SIGNATURE_MISMATCH, stripe, with_headers(request, Stripe_Signature=short))
    # Full-length entries exceed 8 KiB: malformed outright.
    full = ",".join([stamp, *[f"v1={'0' * 64}"] * 999, v1])
    refused(Reason.SIGNATURE_MISMATCH, stripe, with_headers(request, Stripe_Signature=full))

    sw = next(c for c in CASES if c.name == "standard-webhooks")
    request = signed(sw)
    valid = request.headers["webhook-signature"]
    short = " ".join([*["v1,AA=="] * 999, valid])
    assert len(short) < 8192
    refused(Reason.SIGNATURE_MISMATCH, sw, with_headers(request, webhook_signature=short))
    # v1a (Ed25519) and unknown versions are skipped, not counted as v1 candidates.
    skipped = " ".join([*["v1a,AA=="] * 100, valid])
    assert verify(sw, with_headers(request, webhook_signature=skipped))

    generic = next(c for c in CASES if c.id == "generic")
    request = signed(generic)
    valid = request.headers["X-Signature"]
    short = ",".join([*["0"] * 999, valid])
    refused(Reason.SIGNATURE_MISMATCH, generic, with_headers(request, X_Signature=short))
    assert verify(generic, with_headers(request, X_Signature=f"00, {valid}"))


# ---- Slack -----------------------------------------------------------------------------

SLACK = next(c for c in CASES if c.name == "slack")


def slack_request(body: bytes) -> SignedRequest:
    return SLACK.provider().sign(body, SLACK.secret(), NOW, "ignored", "ignored")


def test_slack_url_verification_challenge() -> None:
    challenge = "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    body = json.dumps({"token": "t", "challenge": challenge, "type": "url_verification"})
    v = verify(SLACK, slack_request(body.encode()))
    assert v.challenge == challenge
    assert (v.event_type, v.delivery_id) == ("url_verification", None)
    # Only url_verification carries a challenge.
    event = {"type": "app_mention", "text": "hi"}
    other = json.dumps(
        {"type": "event_callback", "challenge": "x", "event_id": "Ev1", "event": event}
    ).encode()
    v = verify(SLACK, slack_request(other))
    assert (v.challenge, v.event_type, v.delivery_id) == (None, "app_mention", "Ev1")


@pytest.mark.parametrize(
    ("body", "event_type"),
    [
        (b"token=t&team_id=T1&command=%2Fdeploy&text=prod&user_id=U1", "/deploy"),
        (b"team_id=T1&command=&text=prod", "slash_command"),
        (b"payload=" + quote('{"type":"block_actions","user":{}}').encode(), "block_actions"),
        (b"payload=not-json&command=%2Fdeploy", "unknown"),
        (b"team_id=T1", "unknown"),
        (b"&".join([b"f=1"] * 2000), "unknown"),
    ],
    ids=["command", "empty-command", "interactive", "bad-payload", "no-command", "too-many-fields"],
)
def test_slack_form_bodies(body: bytes, event_type: str) -> None:
    request = slack_request(body)
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    v = verify(SLACK, request)
    assert (v.event_type, v.delivery_id, v.challenge) == (event_type, None, None)


@pytest.mark.parametrize(
    "stamp", ["1700000000.5", "-1700000000", "abc", "\uff11\uff17\uff10\uff10", "9" * 16]
)
def test_slack_malformed_timestamp(stamp: str) -> None:
    tampered = with_headers(slack_request(b"{}"), X_Slack_Request_Timestamp=stamp)
    refused(Reason.SIGNATURE_MISMATCH, SLACK, tampered)


def test_slack_retry_headers_are_kept() -> None:
    request = with_headers(
        slack_request(b"{}"), X_Slack_Retry_Num="1", X_Slack_Retry_Reason="http_timeout"
    )
    assert verify(SLACK, request).headers_kept["X-Slack-Retry-Num"] == "1"


# ---- Stripe ----------------------------------------------------------------------------

STRIPE = next(c for c in CASES if c.name == "stripe")


@pytest.mark.parametrize(
    ("body", "event_type", "delivery"),
    [
        (b'{"id":"evt_1","type":"charge.refunded"}', "charge.refunded", "evt_1"),
        (b'{"id":42,"type":["x"]}', "unknown", None),
        (b'["evt_1"]', "unknown", None),
        (b"not json", "unknown", None),
    ],
)
def test_stripe_event_fields_come_from_the_body(
    body: bytes, event_type: str, delivery: str | None
) -> None:
    request = STRIPE.provider().sign(body, STRIPE.secret(), NOW, "ignored", "ignored")
    v = verify(STRIPE, request)
    assert (v.event_type, v.delivery_id) == (event_type, delivery)


@pytest.mark.parametrize("header", ["garbage", "v1=abc", "t=1700000000", "t=17e8,v1=ab", ",,,="])
def test_stripe_malformed_header(header: str) -> None:
    tampered = with_headers(signed(STRIPE), Stripe_Signature=header)
    refused(Reason.SIGNATURE_MISMATCH, STRIPE, tampered)


def test_stripe_key_is_the_whole_secret_string() -> None:
    secret = "whsec_" + "A" * 32
    request = STRIPE.provider().sign(b"{}", secret, NOW, "x", "y")
    assert verify(STRIPE, request, secret)
    refused(Reason.SIGNATURE_MISMATCH, STRIPE, request, "A" * 32)


# ---- Standard Webhooks -----------------------------------------------------------------

SW = next(c for c in CASES if c.name == "standard-webhooks")


@pytest.mark.parametrize("stamp", ["1700000000.0", "-1700000000", "1.7e9", "now", ""])
def test_standard_webhooks_non_integer_timestamp_is_a_mismatch(stamp: str) -> None:
    reason = Reason.SIGNATURE_MISSING if not stamp else Reason.SIGNATURE_MISMATCH
    refused(reason, SW, with_headers(signed(SW), webhook_timestamp=stamp))


def test_standard_webhooks_bad_secrets_never_match() -> None:
    request = signed(SW)
    for bad in ("whsec_not base64!", "whsec_", "plain-text-key", "whsec_ééé"):
        refused(Reason.SIGNATURE_MISMATCH, SW, request, bad)
        with pytest.raises(ValueError, match="whsec"):
            SW.provider().sign(b"{}", bad, NOW, "x", "y")
    # A bad secret next to the good one does not spoil the good one.
    assert verify(SW, request, "whsec_not base64!", SW.secret())


def test_standard_webhooks_event_type_from_body() -> None:
    for body, expected in (
        (b'{"type":"invoice.paid"}', "invoice.paid"),
        (b'{"type":1}', "unknown"),
        (b"[]", "unknown"),
    ):
        v = verify(SW, SW.provider().sign(body, SW.secret(), NOW, "ignored", "msg_1"))
        assert (v.event_type, v.delivery_id) == (expected, "msg_1")


# ---- GitLab ----------------------------------------------------------------------------

GITLAB = next(c for c in CASES if c.name == "gitlab")


def test_gitlab_delivery_id_precedence() -> None:
    request = signed(GITLAB)
    assert verify(GITLAB, request).delivery_id == DELIVERY
    only_uuid = with_headers(request, Idempotency_Key=None, X_Gitlab_Event_UUID="uuid-1")
    assert verify(GITLAB, only_uuid).delivery_id == "uuid-1"
    both = with_headers(request, Idempotency_Key="idem-1", X_Gitlab_Event_UUID="uuid-1")
    assert verify(GITLAB, both).delivery_id == "idem-1"
    neither = with_headers(request, Idempotency_Key=None, X_Gitlab_Event_UUID=None)
    assert verify(GITLAB, neither).delivery_id is None
    assert "X-Gitlab-Token" not in verify(GITLAB, request).headers_kept


def test_gitlab_token_prefix_or_extension_is_refused() -> None:
    request = signed(GITLAB)
    token = request.headers["X-Gitlab-Token"]
    for bad in (token[:-1], token + "0", token.upper()):
        refused(Reason.SIGNATURE_MISMATCH, GITLAB, with_headers(request, X_Gitlab_Token=bad))


# ---- generic ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"algorithm": "md5"}, "algorithm"),
        ({"algorithm": None}, "algorithm"),
        ({"encoding": "base32"}, "encoding"),
        ({"header": ""}, "header"),
        ({"header": "X Signature"}, "header"),
        ({"header": 7}, "header"),
        ({"timestamp_header": "X-Signature"}, "timestamp_header"),
        ({"event_header": "X-Ev", "delivery_header": "x-ev"}, "delivery_header"),
        ({"prefix": 1}, "prefix"),
        ({"prefix": "a,b"}, "prefix"),
        ({"prefix": " sha256="}, "prefix"),
        ({"prefix": "x" * 33}, "prefix"),
        ({"secret": "nope"}, "secret"),
    ],
)
def test_generic_options_are_validated(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=f"'{named}'"):
        get_provider("generic", options)


def test_generic_event_and_delivery_sources() -> None:
    provider = get_provider("generic", {"event_header": "X-Event", "delivery_header": "X-Delivery"})
    request = provider.sign(b'{"type":"from.body"}', "k", NOW, "from.header", "d-1")
    v = provider.verify(request.headers, request.body, ["k"], NOW, TOL)
    assert (v.event_type, v.delivery_id) == ("from.header", "d-1")
    bare = {k: v for k, v in request.headers.items() if k not in ("X-Event", "X-Delivery")}
    v = provider.verify(bare, request.body, ["k"], NOW, TOL)
    assert (v.event_type, v.delivery_id) == ("from.body", None)


def test_generic_prefix_is_required_on_every_entry() -> None:
    provider = get_provider("generic", {"prefix": "sha256="})
    request = provider.sign(b"{}", "k", NOW, "x", "y")
    bare = request.headers["X-Signature"].removeprefix("sha256=")
    with pytest.raises(Rejection) as info:
        provider.verify({"X-Signature": bare}, b"{}", ["k"], NOW, TOL)
    assert info.value.reason is Reason.SIGNATURE_MISMATCH


# ---- palyra ----------------------------------------------------------------------------

PALYRA = next(c for c in CASES if c.name == "palyra")


def palyra_request(body: bytes) -> SignedRequest:
    return PALYRA.provider().sign(body, PALYRA.secret(), NOW, "ignored", DELIVERY)


def test_palyra_sign_sets_nonce_and_timestamp_and_verify_returns_the_envelope() -> None:
    _, sample = PALYRA.provider().sample_event()
    assert json.loads(sample)["replay_protection"]["timestamp_unix_ms"] == 0
    request = palyra_request(sample)
    v = verify(PALYRA, request)
    assert v.envelope is not None
    replay = {"nonce": DELIVERY, "timestamp_unix_ms": int(NOW * 1000)}
    assert v.envelope["replay_protection"] == replay
    assert {k: v.envelope[k] for k in ("v", "event", "source")} == {
        "v": 1, "event": "palyra.test", "source": "palyra-py",
    }
    assert (v.event_type, v.delivery_id, v.timestamp) == ("palyra.test", DELIVERY, NOW)


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'"envelope"',
        b'{"replay_protection":{"nonce":"n","timestamp_unix_ms":1}}',
        b'{"event":1,"replay_protection":{"nonce":"n","timestamp_unix_ms":1}}',
        b'{"event":"e","replay_protection":[]}',
        b'{"event":"e","replay_protection":{"nonce":5,"timestamp_unix_ms":1}}',
        b'{"event":"e","replay_protection":{"nonce":"n","timestamp_unix_ms":true}}',
        b'{"event":"e","replay_protection":{"nonce":"n","timestamp_unix_ms":1.5}}',
        b'{"event":"e","replay_protection":{"nonce":"n","timestamp_unix_ms":-1}}',
        b'{"event":"e","replay_protection":{"nonce":"n","timestamp_unix_ms":' + b"9" * 400 + b"}}",
    ],
)
def test_palyra_schema_violations(body: bytes) -> None:
    # Signed verbatim (sign only rewrites JSON objects, so sign a pre-built header instead).
    provider = PALYRA.provider()
    header = "sha256=" + hmac.new(PALYRA.secret().encode(), body, "sha256").hexdigest()
    with pytest.raises(Rejection) as info:
        provider.verify({"X-Palyra-Signature": header}, body, [PALYRA.secret()], NOW, TOL)
    assert info.value.reason is Reason.SCHEMA_VIOLATION
    with pytest.raises(Rejection) as info:
        provider.verify_unsigned({}, body)
    assert info.value.reason is Reason.SCHEMA_VIOLATION


@pytest.mark.parametrize("body", [b"{", b"\xff\xfe{}", b"[" * 100_000 + b"]" * 100_000, b""])
def test_palyra_malformed_json(body: bytes) -> None:
    request = palyra_request(body)
    assert request.body == body
    refused(Reason.MALFORMED_JSON, PALYRA, request)
    with pytest.raises(Rejection) as info:
        PALYRA.provider().verify_unsigned({}, body)
    assert info.value.reason is Reason.MALFORMED_JSON


# ---- bounds on what is returned --------------------------------------------------------

GITHUB = next(c for c in CASES if c.name == "github")


def test_event_type_is_cut_and_delivery_id_hashed_when_long() -> None:
    request = signed(GITHUB)
    v = verify(GITHUB, with_headers(request, X_GitHub_Event="e" * 500, X_GitHub_Delivery="d" * 256))
    assert (v.event_type, v.delivery_id) == ("e" * 128, "d" * 256)
    v = verify(GITHUB, with_headers(request, X_GitHub_Delivery="d" * 257))
    assert v.delivery_id == hashlib.sha256(b"d" * 257).hexdigest()
    v = verify(GITHUB, with_headers(request, X_GitHub_Event="", X_GitHub_Delivery=""))
    assert (v.event_type, v.delivery_id) == ("unknown", None)
    v = verify(GITHUB, with_headers(request, User_Agent="u" * 1000))
    assert v.headers_kept["User-Agent"] == "u" * 256


def test_lone_surrogates_from_json_escapes_become_replacement_characters() -> None:
    body = b'{"type":"a\\ud800b","id":"evt_\\udfff"}'
    v = verify(STRIPE, STRIPE.provider().sign(body, STRIPE.secret(), NOW, "x", "y"))
    assert (v.event_type, v.delivery_id) == ("a\ufffdb", "evt_\ufffd")


# ---- the fuzz target replays its seed corpus -------------------------------------------


def _fuzz_module() -> Any:
    path = ROOT / "fuzz" / "fuzz_providers.py"
    spec = importlib.util.spec_from_file_location("fuzz_providers", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fuzz_target_accepts_its_corpus_and_random_inputs() -> None:
    fuzz = _fuzz_module()
    seeds = sorted((ROOT / "fuzz" / "corpus" / "providers").iterdir())
    assert len(seeds) >= 5
    for seed in seeds:
        fuzz.test_one_input(seed.read_bytes())
    # The signed seeds really are signed: the harness's own round trip.
    github_seed = (ROOT / "fuzz/corpus/providers/github-signed").read_bytes()
    mode, headers, body = fuzz.split_input(github_seed)
    assert mode == 0
    github = get_provider("github")
    assert github.verify(headers, body, list(fuzz.SECRETS), fuzz.NOW, fuzz.TOLERANCE_S)
    rng = random.Random(1234)
    for _ in range(200):
        fuzz.test_one_input(bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 200))))


# ---- header spellings, secret forms, GitLab signing tokens (issue 9, items 17-19) ----------

SW_KEY = b"k" * 32
SW_PADDED = "whsec_" + base64.b64encode(SW_KEY).decode()
SW_NOW = 1_800_000_000.0


def test_standard_webhooks_reads_the_svix_family_and_never_mixes_families() -> None:
    from palyra_py.providers.standard_webhooks import STANDARD, SVIX, header_family

    provider = get_provider("standard-webhooks")
    signed = provider.sign(b'{"type":"a.b"}', SW_PADDED, SW_NOW, "a.b", "msg_1")
    svix = {k.replace("webhook-", "svix-"): v for k, v in signed.headers.items()}
    assert header_family(svix) is SVIX and header_family(signed.headers) is STANDARD
    found = provider.verify(svix, signed.body, [SW_PADDED], SW_NOW, 300)
    assert (found.delivery_id, found.event_type) == ("msg_1", "a.b")
    # With both families present, webhook-* is the one read (and must hold).
    both = {**svix, **signed.headers, "svix-id": "msg_other"}
    assert provider.verify(both, signed.body, [SW_PADDED], SW_NOW, 300).delivery_id == "msg_1"
    with pytest.raises(Rejection) as info:
        provider.verify({"svix-id": "msg_1"}, signed.body, [SW_PADDED], SW_NOW, 300)
    assert info.value.reason is Reason.SIGNATURE_MISSING


@pytest.mark.parametrize("secret", [SW_PADDED, SW_PADDED.rstrip("="),
                                    SW_PADDED.removeprefix("whsec_").rstrip("=")])
def test_whsec_padding_is_optional(secret: str) -> None:
    from palyra_py.providers.standard_webhooks import decode_secret

    assert decode_secret(secret) == SW_KEY
    check_secret("standard-webhooks", secret)


@pytest.mark.parametrize("secret", ["whsec_", "whsec_a", "whsec_QUJD===", "whsec_QU JD",
                                    "whsec_ÄÖ", "whpk_", "whpk_" + "A" * 43 + "A"])
def test_undecodable_standard_webhooks_secrets_are_refused_without_echo(secret: str) -> None:
    with pytest.raises(ValueError) as info:
        check_secret("standard-webhooks", secret)
    rest = secret.removeprefix("whsec_").removeprefix("whpk_")
    assert len(rest) < 3 or rest not in str(info.value)
    with pytest.raises(CannotSign):
        get_provider("standard-webhooks").sign(b"{}", secret, SW_NOW, "x", "y")


def test_gitlab_signing_token_or_plain_token() -> None:
    provider = get_provider("gitlab")
    body = b'{"object_kind":"push"}'
    signed = provider.sign(body, SW_PADDED, SW_NOW, "Push Hook", "idem-1")
    assert "X-Gitlab-Token" not in signed.headers and signed.headers["webhook-id"] == "idem-1"
    found = provider.verify(signed.headers, body, [SW_PADDED], SW_NOW, 300)
    assert (found.event_type, found.delivery_id, found.timestamp) == ("Push Hook", "idem-1",
                                                                     SW_NOW)
    with pytest.raises(Rejection) as info:
        provider.verify(signed.headers, body, [SW_PADDED], SW_NOW + 301, 300)
    assert info.value.reason is Reason.TIMESTAMP_OUT_OF_TOLERANCE
    # Rotating from a plain token to a signing token: both kinds count during the grace.
    plain = provider.sign(body, "plain-token", SW_NOW, "Push Hook", "idem-2")
    assert provider.verify(plain.headers, body, [SW_PADDED, "plain-token"], SW_NOW, 300)
    # Signature headers but no signing secret held: the token decides.
    assert provider.verify({**plain.headers, "webhook-signature": "v1,AAAA"}, body,
                           ["plain-token"], SW_NOW, 300).delivery_id == "idem-2"
    with pytest.raises(Rejection) as info:
        provider.verify({"X-Gitlab-Event": "Push Hook"}, body, [SW_PADDED], SW_NOW, 300)
    assert info.value.reason is Reason.SIGNATURE_MISSING
    with pytest.raises(ValueError, match="does not decode"):
        check_secret("gitlab", "whsec_not*base64")
    check_secret("gitlab", "any plain token")


def test_shopify_prefixed_spelling_wins_when_both_are_sent() -> None:
    provider = get_provider("shopify")
    body = b'{"id":1}'
    signed = provider.sign(body, "shop-secret", SW_NOW, "orders/create", "evt-1")
    newer = {k.removeprefix("X-"): v for k, v in signed.headers.items()}
    assert provider.verify(newer, body, ["shop-secret"], SW_NOW, 300).delivery_id == "evt-1"
    both = {**newer, "X-Shopify-Topic": "orders/paid", "X-Shopify-Hmac-Sha256": "bad"}
    with pytest.raises(Rejection):
        provider.verify(both, body, ["shop-secret"], SW_NOW, 300)
    both["X-Shopify-Hmac-Sha256"] = newer["Shopify-Hmac-Sha256"]
    assert provider.verify(both, body, ["shop-secret"], SW_NOW, 300).event_type == "orders/paid"
