"""The ingress skips the schema check for envelopes it builds itself: these properties are
what makes that safe (every built envelope satisfies the schema), and the splice of the raw
body is the same JSON as encoding the parsed payload."""

from __future__ import annotations

import json
import string

import orjson
import ulid
from hypothesis import given, settings
from hypothesis import strategies as st

from palyra_py.inbound.envelope import (
    _validator,
    build_envelope,
    encode_envelope,
    make_nonce,
)

ids = st.text(alphabet=string.ascii_lowercase + string.digits + "._-", min_size=1, max_size=64)
json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
payloads = st.dictionaries(st.text(max_size=12), json_scalars, max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    integration_id=ids, provider=ids,
    event_type=st.text(max_size=200),  # providers cut to 128; empty becomes "unknown"
    payload=payloads, dedupe=st.text(min_size=1, max_size=300),
    timestamp_ms=st.integers(-(2**40), 2**45), received_ms=st.integers(0, 2**45),
    limit=st.integers(1, 32 * 1024 * 1024),
    headers=st.dictionaries(st.text(min_size=1, max_size=30), st.text(max_size=2000),
                            max_size=50),
)
def test_every_built_envelope_satisfies_the_schema(
    integration_id: str, provider: str, event_type: str, payload: dict[str, object],
    dedupe: str, timestamp_ms: int, received_ms: int, limit: int, headers: dict[str, str],
) -> None:
    envelope = build_envelope(
        event_id=str(ulid.ULID()), integration_id=integration_id, provider=provider,
        event_type=event_type, payload=payload, nonce=make_nonce(integration_id, dedupe),
        timestamp_ms=timestamp_ms, received_at_ms=received_ms, max_payload_bytes=limit,
        headers={k: v[:1024] for k, v in list(headers.items())[:32]},
    )
    errors = [e.message for e in _validator().iter_errors(envelope)]
    assert errors == []


@settings(max_examples=200, deadline=None)
@given(payload=payloads, pretty=st.booleans())
def test_spliced_raw_body_reads_back_as_the_payload(payload: dict[str, object],
                                                   pretty: bool) -> None:
    raw = (json.dumps(payload, indent=2) + "\n" if pretty else json.dumps(payload)).encode()
    envelope = {"v": 1, "event": "push", "payload": payload}
    spliced = orjson.loads(encode_envelope(envelope, raw))
    assert spliced == orjson.loads(encode_envelope(envelope)) == envelope
