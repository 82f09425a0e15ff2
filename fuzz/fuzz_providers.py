"""Fuzz every provider's ``verify`` / ``verify_unsigned`` with arbitrary headers and bodies.

The only exception a provider may raise is ``Rejection``; a verified result must respect the
documented bounds (event type 1-128 chars, delivery id at most 256).

Input format (so that corpus files stay readable)::

    byte 0      mode: bit 0 set = re-sign the body with each provider first, so the fuzzer
                reaches the code after a signature matched (JSON, forms, envelopes), which
                it could never reach by forging an HMAC
    bytes 1..   "Name: value" header lines (latin-1), a blank line, then the raw body

Run with atheris (``pip install atheris``)::

    python fuzz/fuzz_providers.py fuzz/corpus/providers

Without atheris, the same command replays the given files (or every file of the given
directories) once each, which is how the tests use the seed corpus.
"""

from __future__ import annotations

import sys
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # the shared harness sits here
    sys.path.append(str(Path(__file__).resolve().parent))

from _harness import run

from palyra_py.providers import PROVIDER_NAMES, Provider, Verified, get_provider
from palyra_py.reasons import Reason, Rejection

NOW = 1_700_000_000.0
TOLERANCE_S = 300.0
# The first secret suits every scheme (Standard Webhooks needs base64); the second is not
# base64, which exercises the "undecodable secret never matches" path.
SECRETS = ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "fuzz-secret-not-base64!")
EVENT = "fuzz.event"
DELIVERY = "fuzz-delivery-000000000001"
RESIGN = 0x01
# A request signed by ``sign`` with the harness secret and clock must never be refused for
# its signature or timestamp: that would be a sign/verify disagreement.
_SIGNATURE_REASONS = {
    Reason.SIGNATURE_MISSING,
    Reason.SIGNATURE_MISMATCH,
    Reason.TIMESTAMP_OUT_OF_TOLERANCE,
}


def _providers() -> list[Provider]:
    built = [get_provider(name) for name in PROVIDER_NAMES]
    built.append(get_provider("github", {"allow_sha1": True}))
    built.append(
        get_provider(
            "generic",
            {
                "header": "X-Hub-Signature",
                "algorithm": "sha512",
                "encoding": "base64",
                "prefix": "sha512=",
                "timestamp_header": "X-Timestamp",
                "event_header": "X-Event",
                "delivery_header": "X-Delivery",
            },
        )
    )
    return built


PROVIDERS = _providers()


def split_input(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """``(mode, headers, body)`` from one fuzz input (see the module docstring)."""
    if not data:
        return 0, {}, b""
    mode, rest = data[0], data[1:]
    head, sep, body = rest.partition(b"\n\n")
    if not sep:
        head, body = b"", rest
    headers: dict[str, str] = {}
    for line in head.split(b"\n"):
        name, colon, value = line.partition(b":")
        if colon:
            headers[name.decode("latin-1").strip()] = value.decode("latin-1").strip()
    return mode, headers, body


def join_input(mode: int, headers: dict[str, str], body: bytes) -> bytes:
    """The inverse of :func:`split_input`, for writing seeds."""
    head = "".join(f"{name}: {value}\n" for name, value in headers.items())
    return bytes([mode]) + head.encode("latin-1") + b"\n" + body


def _check(verified: Verified) -> None:
    assert isinstance(verified.event_type, str)
    assert 1 <= len(verified.event_type) <= 128, verified.event_type
    assert verified.delivery_id is None or 1 <= len(verified.delivery_id) <= 256
    assert verified.challenge is None or isinstance(verified.challenge, str)


def test_one_input(data: bytes) -> None:
    mode, headers, body = split_input(data)
    for provider in PROVIDERS:
        request_headers, request_body = headers, body
        if mode & RESIGN:
            signed = provider.sign(body, SECRETS[0], NOW, EVENT, DELIVERY)
            # Signed headers win over fuzzed ones: providers look up the canonical spelling
            # (which ``sign`` uses) before any other case.
            request_headers = {**headers, **signed.headers}
            request_body = signed.body
        try:
            _check(provider.verify(request_headers, request_body, SECRETS, NOW, TOLERANCE_S))
        except Rejection as exc:
            if mode & RESIGN and exc.reason in _SIGNATURE_REASONS:
                raise AssertionError(f"{provider.name}: signed request refused: {exc}") from exc
        try:
            _check(provider.verify_unsigned(headers, body))
        except Rejection:
            pass


def main(argv: list[str]) -> None:
    run(argv, test_one_input, instrument=("palyra_py",))


if __name__ == "__main__":
    main(sys.argv)
