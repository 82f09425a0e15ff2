"""Generic HMAC (adnanh/webhook style): a configurable header holding one or more signatures."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from secrets import token_hex
from typing import Any, ClassVar, cast

from palyra_py.providers import _common as c
from palyra_py.providers.base import Headers, SignedRequest, Verified
from palyra_py.reasons import Reason, Rejection

OPTIONS = (
    "header",
    "algorithm",
    "encoding",
    "prefix",
    "timestamp_header",
    "event_header",
    "delivery_header",
)
ALGORITHMS = ("sha1", "sha256", "sha512")
ENCODINGS = ("hex", "base64")
# RFC 9110 token characters: what a header field name may be made of.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}")
_MAX_PREFIX_CHARS = 32


@dataclass(frozen=True, slots=True)
class GenericOptions:
    """Validated ``provider_options`` of the ``generic`` provider."""

    header: str = "X-Signature"
    algorithm: c.Algorithm = "sha256"
    encoding: str = "hex"
    prefix: str = ""
    timestamp_header: str | None = None
    event_header: str | None = None
    delivery_header: str | None = None

    @classmethod
    def parse(cls, options: Mapping[str, Any] | None) -> GenericOptions:
        """Raise ``ValueError`` naming the first unknown or bad option."""
        given = c.check_options(options, OPTIONS, GenericHmac.name)
        for key in ("header", "timestamp_header", "event_header", "delivery_header"):
            if key in given:
                value = given[key]
                if not isinstance(value, str) or not _HEADER_NAME.fullmatch(value):
                    raise ValueError(
                        f"provider option {key!r} must be an HTTP header name (1-64 token chars)"
                    )
        seen: dict[str, str] = {"x-signature": "header"} if "header" not in given else {}
        for key in ("header", "timestamp_header", "event_header", "delivery_header"):
            if key in given:
                other = seen.setdefault(given[key].lower(), key)
                if other != key:
                    raise ValueError(f"provider option {key!r} names the same header as {other!r}")
        algorithm = given.get("algorithm", "sha256")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"provider option 'algorithm' must be one of {', '.join(ALGORITHMS)}")
        encoding = given.get("encoding", "hex")
        if encoding not in ENCODINGS:
            raise ValueError(f"provider option 'encoding' must be one of {', '.join(ENCODINGS)}")
        prefix = given.get("prefix", "")
        if not isinstance(prefix, str) or len(prefix) > _MAX_PREFIX_CHARS or "," in prefix:
            raise ValueError(
                f"provider option 'prefix' must be a string of at most {_MAX_PREFIX_CHARS}"
                " characters without a comma"
            )
        if not prefix.isprintable() or prefix != prefix.strip():
            raise ValueError("provider option 'prefix' must be printable, without outer spaces")
        return cls(
            header=given.get("header", "X-Signature"),
            algorithm=cast(c.Algorithm, algorithm),
            encoding=encoding,
            prefix=prefix,
            timestamp_header=given.get("timestamp_header"),
            event_header=given.get("event_header"),
            delivery_header=given.get("delivery_header"),
        )


class GenericHmac:
    """Any sender that puts an HMAC of the body in a header.

    Options (``provider_options``): ``header`` (default ``X-Signature``), ``algorithm``
    (``sha1|sha256|sha512``, default ``sha256``), ``encoding`` (``hex|base64``, default
    ``hex``; hex must be lower-case), ``prefix`` (default ``""``, e.g. ``sha256=``),
    ``timestamp_header`` (when set, the signed content is ``"{ts}.{body}"``, the header is
    required, holds whole seconds, and the tolerance applies), ``event_header`` and
    ``delivery_header`` (optional). The signature header may hold a comma-separated list;
    each entry must carry the prefix, and any of the first 16 matching any secret accepts.

    Event type: ``event_header`` when set and present, else the body's ``type`` when it is a
    JSON object with a string ``type``, else ``unknown``. Delivery id: ``delivery_header``
    when set and present, else ``None``.
    """

    name: ClassVar[str] = "generic"
    delivery_id_signed: ClassVar[bool] = False  # delivery_header and event_header are not signed

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = GenericOptions.parse(options)

    @property
    def timestamped(self) -> bool:
        return self.options.timestamp_header is not None

    def _encode(self, digest: bytes) -> str:
        if self.options.encoding == "base64":
            return base64.b64encode(digest).decode("ascii")
        return digest.hex()

    def _signed_content(self, stamp: str | None, body: bytes) -> bytes:
        return body if stamp is None else stamp.encode("ascii") + b"." + body

    def verify(
        self,
        headers: Headers,
        body: bytes,
        secrets: Sequence[str],
        now: float,
        tolerance_s: float,
    ) -> Verified:
        opts = self.options
        value = c.signature_header(headers, opts.header)
        stamp = timestamp = None
        if opts.timestamp_header is not None:
            stamp = c.signature_header(headers, opts.timestamp_header)
            timestamp = c.parse_unix_seconds(stamp, opts.timestamp_header)
        keys = c.usable_secrets(secrets)
        entries = (entry.strip() for entry in value.split(","))
        candidates = c.prefixed_candidates(entries, opts.prefix, keep_prefix=False)
        signed = self._signed_content(stamp, body)
        encode = c.base64_text if opts.encoding == "base64" else c.hex_text
        if not c.hmac_matches(candidates, keys, signed, algorithm=opts.algorithm, encode=encode):
            raise Rejection(Reason.SIGNATURE_MISMATCH, f"no {opts.header} entry matches")
        if timestamp is not None:
            c.check_tolerance(timestamp, now, tolerance_s)
        return c.signed_at(self.verify_unsigned(headers, body), timestamp)

    def verify_unsigned(self, headers: Headers, body: bytes) -> Verified:
        opts = self.options
        kind: object = c.optional_header(headers, opts.event_header)
        if kind is None:
            kind = (c.json_object(body) or {}).get("type")
        kept_names = [
            n for n in (opts.timestamp_header, opts.event_header, opts.delivery_header) if n
        ]
        return Verified(
            event_type=c.event_type(kind),
            delivery_id=c.delivery_id(c.optional_header(headers, opts.delivery_header)),
            timestamp=None,
            headers_kept=c.kept_headers(headers, [*kept_names, "User-Agent"]),
        )

    def sign(
        self,
        body: bytes,
        secret: str,
        now: float,
        event_type: str,
        delivery_id: str,
    ) -> SignedRequest:
        """One signature entry; the event and delivery headers only when configured."""
        opts = self.options
        headers = {"Content-Type": "application/json"}
        stamp = None
        if opts.timestamp_header is not None:
            stamp = str(int(now))
            headers[opts.timestamp_header] = stamp
        if opts.event_header is not None:
            headers[opts.event_header] = event_type
        if opts.delivery_header is not None:
            headers[opts.delivery_header] = delivery_id
        signed = self._signed_content(stamp, body)
        digest = c.hmac_digest(c.to_bytes(secret), signed, opts.algorithm)
        headers[opts.header] = opts.prefix + self._encode(digest)
        return SignedRequest(headers=headers, body=body)

    def sample_event(self) -> tuple[str, bytes]:
        return "test", c.compact_json({"type": "test", "id": token_hex(8), "message": "hello"})
