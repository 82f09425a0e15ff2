"""Fuzz the ingress's body parsing and the envelope schema check with arbitrary bytes.

The only exception allowed is ``Rejection``. Beyond not crashing, what the ingress relies on
must hold for every body it accepts:

- ``parse_json_object`` / ``parse_payload`` give a dict no deeper than ``MAX_JSON_DEPTH``
  holding no NaN or Infinity (RFC 8259 has neither);
- the envelope ``build_envelope`` makes around that payload passes the v1 schema (the ingress
  skips the schema check on its own envelopes on the strength of this);
- ``encode_envelope`` gives JSON that reads back to that envelope, spliced raw JSON body
  included.

Any JSON object found in the input is also handed to ``validate_envelope`` as if a sender
had posted it as an envelope (the ``palyra`` provider does exactly that).

Input: byte 0 is the mode (bit 0 set = the body is form-encoded), the rest is the body.

Run with atheris (``pip install atheris``)::

    python fuzz/fuzz_envelope.py fuzz/corpus/envelope

Without atheris, the same command replays the given files (or every file of the given
directories) once each, which is how the tests use the seed corpus.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import orjson

if str(Path(__file__).resolve().parent) not in sys.path:  # the shared harness sits here
    sys.path.append(str(Path(__file__).resolve().parent))

from _harness import run

from palyra_py.inbound.envelope import (
    MAX_JSON_DEPTH,
    build_envelope,
    encode_envelope,
    json_depth_ok,
    make_nonce,
    validate_envelope,
)
from palyra_py.inbound.ingress import parse_json_object, parse_payload
from palyra_py.reasons import Rejection

FORM = 0x01
NOW_MS = 1_700_000_000_000
EVENT_ID = "01HF0000000000000000000000"
INTEGRATION = "fuzz-integration"


def split_input(data: bytes) -> tuple[int, bytes]:
    """``(mode, body)`` from one fuzz input."""
    return (data[0], data[1:]) if data else (0, b"")


def join_input(mode: int, body: bytes) -> bytes:
    """The inverse of :func:`split_input`, for writing seeds."""
    return bytes([mode]) + body


def _envelope_for(payload: dict[str, Any]) -> dict[str, Any]:
    # Every argument but the payload as the ingress would give it for a valid request.
    return build_envelope(
        event_id=EVENT_ID,
        integration_id=INTEGRATION,
        provider="generic",
        event_type="fuzz.event",
        payload=payload,
        nonce=make_nonce(INTEGRATION, "fuzz-delivery"),
        timestamp_ms=NOW_MS,
        received_at_ms=NOW_MS,
        max_payload_bytes=1024 * 1024,
        headers={"X-Fuzz": "1"},
    )


def _all_finite(value: object) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return False
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def _check_accepted(payload: object, raw_json: bytes | None) -> None:
    """What the ingress does with a payload it accepted must work."""
    assert isinstance(payload, dict), type(payload)
    assert json_depth_ok(payload, MAX_JSON_DEPTH)
    assert _all_finite(payload), "NaN or Infinity accepted"
    envelope = _envelope_for(payload)
    try:
        validate_envelope(envelope)
    except Rejection as exc:  # the ingress journals its own envelopes unchecked
        raise AssertionError(f"the envelope built fails the schema: {exc.detail}") from exc
    encoded = encode_envelope(envelope, raw_json)
    decoded = orjson.loads(encoded)
    assert decoded == orjson.loads(orjson.dumps(envelope)), "the encoded envelope changed"


def _as_sender_envelope(body: bytes) -> None:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    if isinstance(value, dict):
        try:
            validate_envelope(value)
        except Rejection:
            pass


def test_one_input(data: bytes) -> None:
    mode, body = split_input(data)
    form = bool(mode & FORM)
    try:
        payload = parse_payload(body, form=form)
    except Rejection:
        pass
    else:
        _check_accepted(payload, None if form or not body.strip() else body)
    if not form:
        try:
            obj = parse_json_object(body)
        except Rejection:
            pass
        else:
            _check_accepted(obj, body)
    _as_sender_envelope(body)


def main(argv: list[str]) -> None:
    run(argv, test_one_input, instrument=("palyra_py", "jsonschema"))


if __name__ == "__main__":
    main(sys.argv)
