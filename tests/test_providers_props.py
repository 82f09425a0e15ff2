"""Properties of every signature scheme over arbitrary bodies, secrets and clocks."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from palyra_py.providers import PROVIDER_NAMES, Provider, SignedRequest, get_provider
from palyra_py.reasons import Reason, Rejection

TOL = 300.0
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    **{name: (name, {}) for name in PROVIDER_NAMES},
    "generic-timestamped-base64": (
        "generic",
        {"algorithm": "sha512", "encoding": "base64", "prefix": "v=", "timestamp_header": "X-T"},
    ),
}
BODY_SIGNED = [v for v in VARIANTS if v != "gitlab"]

nows = st.integers(min_value=0, max_value=10**11).map(float)
delivery_ids = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=16, max_size=64
)


def provider_for(variant: str) -> Provider:
    name, options = VARIANTS[variant]
    return get_provider(name, options)


@st.composite
def secrets_for(draw: st.DrawFn, variant: str) -> str:
    if variant == "standard-webhooks":
        raw = draw(st.binary(min_size=1, max_size=64))
        return draw(st.sampled_from(["whsec_", ""])) + base64.b64encode(raw).decode()
    if variant == "gitlab":
        # A token travels in a header, so it is printable text without outer spaces.
        return draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1))
    return draw(st.text(min_size=1, max_size=80))


@st.composite
def bodies_for(draw: st.DrawFn, variant: str) -> bytes:
    if variant != "palyra":
        return draw(st.binary(max_size=512))
    values = st.integers() | st.text(max_size=8)
    payload = draw(st.dictionaries(st.text(max_size=8), values, max_size=4))
    envelope = {
        "v": 1,
        "event": draw(st.text(min_size=1, max_size=40)),
        "payload": payload,
        "replay_protection": {"nonce": "placeholder", "timestamp_unix_ms": 0},
    }
    return json.dumps(envelope).encode()


def sign(variant: str, body: bytes, secret: str, now: float, delivery: str) -> SignedRequest:
    return provider_for(variant).sign(body, secret, now, "test.event", delivery)


@pytest.mark.parametrize("variant", list(VARIANTS))
@settings(max_examples=60, deadline=None)
@given(data=st.data(), now=nows, delivery=delivery_ids)
def test_round_trip(variant: str, data: st.DataObject, now: float, delivery: str) -> None:
    body = data.draw(bodies_for(variant))
    secret = data.draw(secrets_for(variant))
    request = sign(variant, body, secret, now, delivery)
    verified = provider_for(variant).verify(request.headers, request.body, [secret], now, TOL)
    assert 1 <= len(verified.event_type) <= 128
    if variant in ("github", "gitlab", "shopify", "standard-webhooks", "palyra"):
        assert verified.delivery_id == delivery
    if provider_for(variant).timestamped:
        assert verified.timestamp is not None and abs(verified.timestamp - now) < 1


@pytest.mark.parametrize("variant", BODY_SIGNED)
@settings(max_examples=60, deadline=None)
@given(data=st.data(), now=nows, delivery=delivery_ids)
def test_any_change_to_a_signed_body_is_refused(
    variant: str, data: st.DataObject, now: float, delivery: str
) -> None:
    secret = data.draw(secrets_for(variant))
    request = sign(variant, data.draw(bodies_for(variant)), secret, now, delivery)
    body = request.body
    kind = data.draw(st.sampled_from(["flip", "insert", "delete", "replace"]))
    if kind == "flip" or (kind == "delete" and not body):
        i = data.draw(st.integers(0, max(len(body) - 1, 0)))
        bit = data.draw(st.sampled_from([1, 2, 4, 8, 16, 32, 64, 128]))
        tampered = body[:i] + bytes([body[i] ^ bit]) + body[i + 1 :] if body else bytes([bit])
    elif kind == "insert":
        i = data.draw(st.integers(0, len(body)))
        tampered = body[:i] + data.draw(st.binary(min_size=1, max_size=8)) + body[i:]
    elif kind == "delete":
        i = data.draw(st.integers(0, len(body) - 1))
        tampered = body[:i] + body[i + data.draw(st.integers(1, 8)) :]
    else:
        tampered = data.draw(st.binary(max_size=512).filter(lambda b: b != body))
    with pytest.raises(Rejection) as info:
        provider_for(variant).verify(request.headers, tampered, [secret], now, TOL)
    assert info.value.reason is Reason.SIGNATURE_MISMATCH


@pytest.mark.parametrize("variant", list(VARIANTS))
@settings(max_examples=40, deadline=None)
@given(data=st.data(), now=nows)
def test_another_secret_never_verifies(variant: str, data: st.DataObject, now: float) -> None:
    secret = data.draw(secrets_for(variant))
    other = data.draw(secrets_for(variant).filter(lambda s: s != secret))
    if variant == "standard-webhooks" and other.removeprefix("whsec_") == secret.removeprefix(
        "whsec_"
    ):
        return  # the same key spelled with and without the prefix
    request = sign(variant, data.draw(bodies_for(variant)), secret, now, "d" * 16)
    with pytest.raises(Rejection) as info:
        provider_for(variant).verify(request.headers, request.body, [other], now, TOL)
    assert info.value.reason is Reason.SIGNATURE_MISMATCH


@pytest.mark.parametrize("variant", list(VARIANTS))
@settings(max_examples=80, deadline=None)
@given(
    headers=st.dictionaries(st.text(max_size=30), st.text(max_size=200), max_size=6),
    body=st.binary(max_size=300),
)
def test_arbitrary_requests_only_ever_raise_rejection(
    variant: str, headers: dict[str, str], body: bytes
) -> None:
    provider = provider_for(variant)
    for signed_path in (True, False):
        try:
            if signed_path:
                verified = provider.verify(headers, body, [SECRET], 0.0, TOL)
            else:
                verified = provider.verify_unsigned(headers, body)
        except Rejection:
            continue
        assert 1 <= len(verified.event_type) <= 128
        assert verified.delivery_id is None or len(verified.delivery_id) <= 256
