"""The ingress skips the schema check for envelopes it builds itself: these properties are
what makes that safe (every built envelope satisfies the schema), and the splice of the raw
body is the same JSON as encoding the parsed payload."""

from __future__ import annotations

import json
import string

import orjson
import pytest
import ulid
from hypothesis import given, settings
from hypothesis import strategies as st

from palyra_py.inbound.envelope import (
    EventIds,
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


@settings(max_examples=300, deadline=None)
@given(now=st.floats(0, 2**48 / 1000 - 1, allow_nan=False), more=st.integers(1, 5))
def test_event_ids_are_ulids_of_the_time_counting_up_within_a_ms(now: float, more: int) -> None:
    ids = EventIds()
    made = [ids.new(now) for _ in range(1 + more)]
    parsed = [ulid.ULID.from_str(text) for text in made]
    assert [str(u) for u in parsed] == made  # canonical Crockford text, 26 characters
    assert {text[:10] for text in made} == {str(ulid.ULID.from_timestamp(now))[:10]}
    assert [int(u) for u in parsed] == list(range(int(parsed[0]), int(parsed[0]) + 1 + more))
    later = ids.new(now + 0.002)
    assert later > made[-1] and later[:10] != made[0][:10]


def test_event_ids_refuse_times_a_ulid_cannot_hold() -> None:
    with pytest.raises(ValueError):
        EventIds().new(2**48 / 1000 + 1)
