"""The contract every signature scheme implements.

Providers are pure: no I/O, no clock of their own (``now`` is passed in, in seconds since
the epoch as a float), no logging. They raise :class:`palyra_py.reasons.Rejection` with one
of ``SIGNATURE_MISSING``, ``SIGNATURE_MISMATCH``, ``TIMESTAMP_OUT_OF_TOLERANCE`` (or
``MALFORMED_JSON`` / ``SCHEMA_VIOLATION`` for the ``palyra`` provider, whose body is itself
an envelope). A rejection's detail never contains a secret or a full signature.

The limits every scheme shares (header size, how many signatures of a list are compared,
timestamp syntax and tolerance edges, event type and delivery id bounds) are written down in
``palyra_py.providers._common``; each provider's class docstring says what is its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from multidict import CIMultiDict, CIMultiDictProxy

# Header mappings are case-insensitive in practice (aiohttp's CIMultiDictProxy); providers
# look headers up by their canonical spelling and must also accept a plain dict whose keys
# are lower-case (tests, fuzzers). Use ``get_header`` for that.
Headers = Mapping[str, str]


CASE_INSENSITIVE = (CIMultiDictProxy, CIMultiDict)
"""Header mappings whose own ``get`` is case-insensitive."""


def get_header(headers: Headers, name: str) -> str | None:
    """Case-insensitive header lookup that works on plain dicts too."""
    if isinstance(headers, CASE_INSENSITIVE):
        # aiohttp's own headers (the request path): one lookup answers, even for an
        # absent header, which would otherwise cost a scan of every header.
        return headers.get(name)
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    if value is None:
        lname = name.lower()
        for key, val in headers.items():
            if key.lower() == lname:
                return val
    return value


class CannotSign(ValueError):
    """:meth:`Provider.sign` cannot produce a signature with this secret (a public key, or a
    secret that does not decode). The message says why and never contains the secret."""


@dataclass(frozen=True, slots=True)
class Verified:
    """What a provider learned from a request whose signature checked out."""

    event_type: str
    """The provider's event name (``push``, ``payment_intent.succeeded``, ...); ``unknown``
    when the provider does not say."""
    delivery_id: str | None
    """The provider's idempotency key for this delivery, kept on redelivery; ``None`` when
    the scheme has none (the ingress then dedupes on a hash of the body)."""
    timestamp: float | None
    """The signed timestamp in seconds, for schemes that sign one."""
    challenge: str | None = None
    """Slack ``url_verification``: the value to echo back instead of journaling."""
    envelope: Mapping[str, Any] | None = None
    """``palyra`` provider only: the v1 envelope the sender posted."""
    headers_kept: Mapping[str, str] = field(default_factory=dict)
    """Provider headers worth keeping in the envelope (never a secret or a signature)."""


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """A request as the provider would send it, produced by :meth:`Provider.sign`."""

    headers: dict[str, str]
    body: bytes


class Provider(Protocol):
    """One signature scheme. Instances are cheap; construct one per integration."""

    name: ClassVar[str]
    delivery_id_signed: ClassVar[bool]
    """Whether the signature covers the delivery id (Standard Webhooks' ``webhook-id``, an id
    inside a signed body). When it does not (GitHub, GitLab, Shopify, generic), the ingress
    also dedupes on a digest of the signed content, and the scheme's event type header is
    unauthenticated too."""

    @property
    def timestamped(self) -> bool:
        """Whether the scheme signs a timestamp (so the tolerance check applies). A class
        attribute for most schemes; ``generic`` answers per instance (``timestamp_header``)."""
        ...

    def verify(
        self,
        headers: Headers,
        body: bytes,
        secrets: Sequence[str],
        now: float,
        tolerance_s: float,
    ) -> Verified:
        """Check ``body`` against ``secrets`` (the current one first, then any still inside a
        rotation grace period; a match on any of them is accepted). Raise ``Rejection``."""
        ...

    def verify_unsigned(self, headers: Headers, body: bytes) -> Verified:
        """For integrations with ``signature_required = false``: read the event type, delivery
        id and challenge without checking any signature or timestamp (``timestamp`` is then
        ``None``, except for ``palyra`` whose envelope carries one). Never raises for a missing
        or bad signature; only ``palyra`` raises (``MALFORMED_JSON`` / ``SCHEMA_VIOLATION``)."""
        ...

    def sign(
        self,
        body: bytes,
        secret: str,
        now: float,
        event_type: str,
        delivery_id: str,
    ) -> SignedRequest:
        """Build the headers this provider would send for ``body`` (used by
        ``webhooks test`` and by the tests' sign→verify round trips). Raise
        :class:`CannotSign` when the secret cannot sign."""
        ...

    def sample_event(self) -> tuple[str, bytes]:
        """A small realistic ``(event_type, body)`` for ``webhooks test``."""
        ...
