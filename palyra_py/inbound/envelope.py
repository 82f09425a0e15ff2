"""Build the normalised v1 envelope for an accepted request and validate it against
``schemas/webhook-envelope.v1.json`` (one cached validator). Pure: no I/O after import of the
schema, no clock (times are passed in); event ids come from ``palyra_py.ids``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

import orjson

from palyra_py.reasons import Reason, Rejection
from palyra_py.times import format_unix_ms

SCHEMA_NAME = "webhook-envelope.v1.json"
PALYRA_MAX_LIMIT = 1024 * 1024  # the schema's bound on limits.max_payload_bytes
NONCE_MIN, NONCE_MAX = 16, 128
MAX_JSON_DEPTH = 64
MAX_PAYLOAD_PROPERTIES = 2048  # the schema's bound on payload


def load_schema() -> dict[str, Any]:
    """The envelope schema as shipped inside the package (``palyra_py/schemas`` is the repo's
    top-level ``schemas/`` folder)."""
    text = resources.files("palyra_py").joinpath("schemas", SCHEMA_NAME).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def _validator() -> Any:
    # jsonschema is imported here, not at module import, so the CLI never pays for it.
    from jsonschema import Draft202012Validator

    schema = load_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def validate_envelope(envelope: Mapping[str, Any]) -> None:
    """Raise ``Rejection(SCHEMA_VIOLATION)`` naming the first failing path."""
    error = next(iter(_validator().iter_errors(envelope)), None)
    if error is not None:
        path = "/".join(str(p) for p in error.absolute_path) or "(root)"
        message = error.message if len(error.message) <= 200 else error.message[:200] + "..."
        raise Rejection(Reason.SCHEMA_VIOLATION, f"{path}: {message}")


def json_depth_ok(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``value`` nests at most ``limit`` containers deep (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > limit:
                return False
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            if depth > limit:
                return False
            stack.extend((v, depth + 1) for v in item)
    return True


def make_nonce(integration_id: str, dedupe_key: str) -> str:
    """The envelope's replay nonce: the provider's delivery id when it fits the schema's
    16..128 characters, else a SHA-256 of it (stable across redeliveries either way)."""
    if NONCE_MIN <= len(dedupe_key) <= NONCE_MAX and dedupe_key.isprintable():
        return dedupe_key
    return hashlib.sha256(f"{integration_id}\n{dedupe_key}".encode()).hexdigest()


def build_envelope(
    *,
    event_id: str,
    integration_id: str,
    provider: str,
    event_type: str,
    payload: dict[str, Any],
    nonce: str,
    timestamp_ms: int,
    received_at_ms: int,
    max_payload_bytes: int,
    headers: Mapping[str, str],
) -> dict[str, Any]:
    envelope: dict[str, Any] = {
        "v": 1,
        "id": event_id,
        "event": (event_type or "unknown")[:128],
        "source": integration_id,
        "payload": payload,
        "replay_protection": {"nonce": nonce, "timestamp_unix_ms": max(0, timestamp_ms)},
        "integration_id": integration_id,
        "provider": provider,
        "received_at": format_unix_ms(received_at_ms),
        "headers": dict(headers),
    }
    # Palyra's schema bounds limits.max_payload_bytes at 1 MiB; larger limits are ours alone
    # and are not written rather than written wrongly.
    if max_payload_bytes <= PALYRA_MAX_LIMIT:
        envelope["limits"] = {"max_payload_bytes": max_payload_bytes}
    return envelope


def encode_envelope(envelope: dict[str, Any], raw_payload: bytes | None = None) -> str:
    """The envelope as JSON text. With ``raw_payload`` (the verified request body, already
    parsed once as a JSON object), the payload is spliced in byte for byte instead of
    being encoded again: faster, and the journal keeps exactly what the provider signed."""
    if raw_payload is None:
        return orjson.dumps(envelope).decode()
    head = orjson.dumps({k: v for k, v in envelope.items() if k != "payload"})
    return b"".join((head[:-1], b',"payload":', raw_payload.strip(), b"}")).decode()
