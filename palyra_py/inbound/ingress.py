"""Public ingress: ``POST /hooks/{integration_id}``.

Order of checks (cheapest and least trusting first): integration known → source address
allowed → integration enabled → Content-Length within bounds (before any byte is read) →
media type → body read with a hard cap and deadline → signature (on the raw bytes) → JSON →
event type allowed → envelope schema → journal append with the replay key in the same commit.
Only after the append's commit (fsync) is anything answered 2xx; an integration with a
``response`` or ``response_command`` then answers as ``inbound.replies`` says.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import parse_qsl

import orjson
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from palyra_py.ids import UlidSource
from palyra_py.inbound.envelope import (
    MAX_JSON_DEPTH,
    MAX_PAYLOAD_PROPERTIES,
    build_envelope,
    encode_envelope,
    json_depth_ok,
    make_nonce,
    validate_envelope,
)
from palyra_py.inbound.forwarded import ClientAddress
from palyra_py.inbound.rejections import RejectionLog
from palyra_py.inbound.replies import Replies, wants_reply
from palyra_py.journal.journal import (
    EncodedPayload,
    Journal,
    JournalUnavailable,
    NewEvent,
    ReplayKey,
)
from palyra_py.metrics import UNKNOWN, Metrics
from palyra_py.providers import get_provider
from palyra_py.providers.base import Provider, Verified
from palyra_py.reasons import ANSWERS, Reason, Rejection
from palyra_py.registry.integrations import Integration
from palyra_py.secrets.refs import SecretRefError
from palyra_py.secrets.rotation import RotatingSecrets
from palyra_py.secrets.store import SecretNotFound, SecretStore

log = structlog.get_logger("palyra.ingress")

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(slots=True)
class ActiveIntegration:
    """An integration as the ingress uses it: its provider object and parsed networks are
    built once per registry load; ``secrets`` resolves (and keeps) what it verifies with."""

    integration: Integration
    provider: Provider
    networks: tuple[IpNetwork, ...]
    secrets: RotatingSecrets = field(repr=False)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, integration: Integration) -> ActiveIntegration:
        provider = get_provider(integration.provider, integration.provider_options)
        networks = tuple(
            ipaddress.ip_network(src, strict=False) for src in integration.allowed_sources
        )

        def previous_unavailable() -> None:
            log.warning("previous_secret_unavailable", integration_id=integration.integration_id)

        secrets = RotatingSecrets(
            integration.secret_ref, integration.previous_secret_ref,
            integration.previous_valid_until, on_previous_unavailable=previous_unavailable,
        )
        return cls(integration, provider, networks, secrets)

    def source_allowed(self, remote: str | None) -> bool:
        if not self.networks:
            return True
        if remote is None:
            return False
        try:
            addr = ipaddress.ip_address(remote)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.networks)

    def event_allowed(self, event_type: str) -> bool:
        patterns = self.integration.allowed_events
        return not patterns or any(fnmatchcase(event_type, p) for p in patterns)


# Every byte value but "{" and "[": deleting them leaves the opening brackets.
_ALL_BUT_OPENERS = bytes(b for b in range(256) if b not in b"{[")


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, strictly (RFC 8259: UTF-8, no NaN/Infinity), nesting at
    most ``MAX_JSON_DEPTH`` deep. orjson parses it; the stored payload is the raw body
    itself, so what is journaled is exactly what was signed (duplicate keys included)."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        detail = "nested too deep" if "depth" in str(exc) else "not valid JSON"
        raise Rejection(Reason.MALFORMED_JSON, detail) from None
    if not isinstance(value, dict):
        raise Rejection(Reason.SCHEMA_VIOLATION, "payload: the body must be a JSON object")
    # Nesting depth is at most the number of opening brackets: count them (cheap: one pass
    # deleting every other byte costs less than two counts) before walking.
    if len(raw.translate(None, _ALL_BUT_OPENERS)) > MAX_JSON_DEPTH and not json_depth_ok(value):
        raise Rejection(Reason.MALFORMED_JSON, "nested too deep")
    if len(value) > MAX_PAYLOAD_PROPERTIES:
        raise Rejection(Reason.SCHEMA_VIOLATION,
                        f"payload: more than {MAX_PAYLOAD_PROPERTIES} top-level properties")
    return value


def parse_form(raw: bytes) -> tuple[dict[str, Any], bytes | None]:
    """A form body (Slack commands, GitHub's form mode) as an object of its fields, or, when
    its single ``payload`` field holds a JSON object, that object checked exactly like a JSON
    body; then the field's JSON text is returned too, to be stored as it came."""
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=2048)
    except (UnicodeDecodeError, ValueError):
        raise Rejection(Reason.MALFORMED_JSON, "bad form encoding") from None
    fields: dict[str, Any] = {}
    for key, value in pairs:
        if key in fields:
            prior = fields[key]
            fields[key] = [*prior, value] if isinstance(prior, list) else [prior, value]
        else:
            fields[key] = value
    if set(fields) == {"payload"} and isinstance(fields["payload"], str):
        text = fields["payload"].encode("utf-8", "surrogatepass")
        if text.lstrip()[:1] == b"{":
            return parse_json_object(text), text
    return fields, None


def parse_payload(raw: bytes, form: bool) -> dict[str, Any]:
    """The provider payload as an object (see :func:`parse_form` and
    :func:`parse_json_object`)."""
    if form:
        return parse_form(raw)[0]
    return parse_json_object(raw) if raw.strip() else {}


def media_kind(content_type: str) -> str | None:
    """``"json"``, ``"form"`` or ``None`` for a type we do not take."""
    if content_type == "application/json":  # what nearly every sender sends
        return "json"
    ctype = content_type.split(";", 1)[0].strip().lower()
    if ctype in ("", "application/json", "text/json") or ctype.endswith("+json"):
        return "json"
    if ctype == "application/x-www-form-urlencoded":
        return "form"
    return None


def answer(reason: Reason, extra: Mapping[str, Any] | None = None, *,
           retry_after: int | None = None) -> web.Response:
    spec = ANSWERS[reason]
    body: dict[str, Any] = {spec.key: reason.value}
    if extra:
        body.update(extra)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.json_response(body, status=spec.status, headers=headers)


# The text json.dumps gives an answer up to its event id, for each reason stored_answer
# takes; and the one header json_response sets.
_STORED_HEADS = {
    reason: f'{{"{ANSWERS[reason].key}": "{reason.value}", "event_id": "'
    for reason in (Reason.ACCEPTED, Reason.DUPLICATE)
}
_JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}


def stored_answer(reason: Reason, event_id: str, seq: int) -> web.Response:
    """``answer(reason, {"event_id": event_id, "seq": seq})``, byte for byte the same, without
    the general JSON encoder for the ids the journal makes (ULIDs): the answer every
    accepted webhook gets."""
    head = _STORED_HEADS.get(reason)
    if head is None or not (event_id.isascii() and event_id.isalnum()):
        return answer(reason, {"event_id": event_id, "seq": seq})
    body = f'{head}{event_id}", "seq": {int(seq)}}}'.encode("ascii")
    return web.Response(body=body, status=ANSWERS[reason].status, headers=_JSON_HEADERS)


_REASON_TEXT = {reason: reason.value for reason in Reason}  # not the enum's property each time
_STATUS_TEXT = {reason: str(ANSWERS[reason].status) for reason in Reason}


@dataclass(slots=True)
class IngressStats:
    by_reason: dict[str, int] = field(default_factory=dict)
    metrics: Metrics | None = None

    def count(self, reason: Reason, integration_id: str | None = None) -> None:
        by_reason, text = self.by_reason, _REASON_TEXT[reason]
        by_reason[text] = by_reason.get(text, 0) + 1
        if self.metrics is not None:
            self.metrics.ingress_requests_by.get(
                integration_id or UNKNOWN, _STATUS_TEXT[reason], text
            ).inc()


class Ingress:
    """The ``/hooks/{id}`` handler. Everything it needs is handed in, so tests build one
    around a real journal and registry without the rest of the daemon."""

    def __init__(
        self,
        *,
        integrations: Callable[[], Mapping[str, ActiveIntegration]],
        secrets: SecretStore,
        journal: Journal,
        rejections: RejectionLog,
        clock: Callable[[], float] = time.time,
        body_timeout_s: float = 30.0,
        retry_after_s: int = 60,
        metrics: Metrics | None = None,
        client_address: ClientAddress | None = None,
    ) -> None:
        """``client_address``: how to tell the sender behind trusted proxies
        (``[ingress] trusted_proxies``; default: the connected peer)."""
        self._integrations = integrations
        self._client_address = client_address or ClientAddress()
        self._secrets = secrets
        self._journal = journal
        self._rejections = rejections
        self._clock = clock
        self._body_timeout_s = body_timeout_s
        self._retry_after_s = retry_after_s
        self.stats = IngressStats(metrics=metrics)
        self._metrics = metrics
        self._ids = UlidSource()
        self._replies = Replies()

    def routes(self) -> Sequence[web.AbstractRouteDef]:
        return [web.route("*", "/hooks/{integration_id}", self.handle)]

    def _sender(self, request: web.Request) -> str | None:
        """The sender's address (``forwarded``): costs a transport lookup, so only
        asked when a rule or a rejection needs it."""
        return self._client_address.sender(request.remote,
                                           request.headers.get("X-Forwarded-For"))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        requested = request.match_info["integration_id"]
        active = self._integrations().get(requested)
        try:
            response = await self._handle(request, requested, active)
        except Rejection as rej:
            now_ms = int(self._clock() * 1000)
            integ_id = active.integration.integration_id if active else None
            remote = self._sender(request)
            first = self._rejections.record(
                integ_id, rej.reason, remote, now_ms,
                requested_id=None if active else requested,
            )
            self.stats.count(rej.reason, integ_id)
            # The first of its kind in a rejection window at info; the rest at debug, and
            # their count at the window's end (rejections.flush): a flood cannot fill logs.
            (log.info if first else log.debug)(
                "webhook_rejected", integration_id=integ_id, reason=rej.reason.value,
                detail=rej.detail, remote=remote,
            )
            retry = self._retry_after_s if rej.status == 503 else None
            extra = {"detail": rej.detail} if rej.detail else None
            return answer(rej.reason, extra, retry_after=retry)
        return response

    async def _handle(
        self, request: web.Request, requested: str, active: ActiveIntegration | None
    ) -> web.StreamResponse:
        if active is None:
            raise Rejection(Reason.UNKNOWN_INTEGRATION)
        integ = active.integration
        if request.method != "POST":
            raise Rejection(Reason.METHOD_NOT_ALLOWED, f"{request.method[:16]} is not POST")
        if active.networks and not active.source_allowed(self._sender(request)):
            raise Rejection(Reason.SOURCE_NOT_ALLOWED)
        if not integ.enabled:
            raise Rejection(Reason.INTEGRATION_DISABLED)
        limit = integ.max_payload_bytes
        declared = request.content_length
        if declared is not None and declared > limit:
            raise Rejection(Reason.PAYLOAD_TOO_LARGE, f"limit is {limit} bytes")
        kind = media_kind(request.headers.get("Content-Type", ""))
        if kind is None:
            raise Rejection(Reason.UNSUPPORTED_MEDIA_TYPE, "send application/json")
        body = await self._read_body(request, limit)
        now = self._clock()
        verified = await self._verify(active, request, body, now)
        if verified.challenge is not None:
            self.stats.count(Reason.URL_VERIFICATION, integ.integration_id)
            return web.json_response({"challenge": verified.challenge})
        event = self._new_event(active, verified, kind, body, now)
        if event is None:
            self.stats.count(Reason.IGNORED, integ.integration_id)
            return answer(Reason.IGNORED, {"event": verified.event_type})
        started = time.perf_counter()
        try:
            result = await self._journal.append(event)
        except JournalUnavailable as exc:
            log.error("journal_unavailable", integration_id=integ.integration_id, error=str(exc))
            raise Rejection(Reason.JOURNAL_UNAVAILABLE) from None
        if self._metrics is not None:
            self._metrics.journal_append_seconds.observe(time.perf_counter() - started)
        reason = Reason.DUPLICATE if result.duplicate else Reason.ACCEPTED
        self.stats.count(reason, integ.integration_id)
        if wants_reply(integ):
            return await self._replies.answer(
                integ, event, result, lambda: stored_answer(reason, result.event_id, result.seq)
            )
        return stored_answer(reason, result.event_id, result.seq)

    def _new_event(
        self, active: ActiveIntegration, verified: Verified, kind: str, body: bytes, now: float
    ) -> NewEvent | None:
        """The journal event for a verified request; None when its event type is not
        allowed. The parsed payload lives only in here, not across the wait for the
        journal: dozens of requests waiting with their parsed bodies kept the garbage
        collector busy."""
        integ = active.integration
        raw_payload: bytes | None = None
        if verified.envelope is not None:
            # A sender-built envelope is foreign input: the schema decides.
            validate_envelope(verified.envelope)
            payload_obj = verified.envelope.get("payload")
            if not isinstance(payload_obj, dict):
                raise Rejection(Reason.SCHEMA_VIOLATION, "payload: must be an object")
            payload = payload_obj
        elif kind == "form":
            payload, raw_payload = parse_form(body)
        elif body.strip():
            payload = parse_json_object(body)
            raw_payload = body
        else:
            payload = {}
        if not active.event_allowed(verified.event_type):
            return None
        envelope, replay_key = self._envelope(active, verified, payload, body, now)
        try:
            encoded = EncodedPayload(encode_envelope(envelope, raw_payload))
        except (TypeError, ValueError):
            # What JSON parsed but cannot be stored faithfully (lone surrogates, integers
            # past 64 bits in a sender-built envelope): refused, never a 500.
            raise Rejection(Reason.MALFORMED_JSON, "payload cannot be stored as JSON") from None
        return NewEvent(
            kind="webhook.received",
            source=integ.integration_id,
            payload=encoded,
            actor=integ.provider,
            integration_id=integ.integration_id,
            event_type=envelope["event"],
            event_id=envelope["id"],
            replay_key=replay_key,
        )

    async def _read_body(self, request: web.Request, limit: int) -> bytes:
        """Read at most ``limit`` bytes; a body that goes past it (chunked, or a lying
        Content-Length) is refused as soon as the excess arrives, and a body that trickles
        for longer than the deadline is cut off."""
        content = request.content
        if content.is_eof() and content.exception() is None:
            # The whole body already arrived with the headers (the usual case for a webhook):
            # it is in memory either way, so take it without the read loop and its timer.
            body = content.read_nowait()
            if len(body) > limit:
                raise Rejection(Reason.PAYLOAD_TOO_LARGE, f"limit is {limit} bytes")
            return body
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self._body_timeout_s):
                while True:
                    chunk = await request.content.read(65536)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > limit:
                        raise Rejection(Reason.PAYLOAD_TOO_LARGE, f"limit is {limit} bytes")
                    chunks.append(chunk)
        except TimeoutError:
            raise Rejection(Reason.REQUEST_TIMEOUT, "body not received in time") from None
        except (RequestPayloadError, HttpProcessingError):
            # A body that is not what its Content-Encoding / Transfer-Encoding claims.
            raise Rejection(Reason.MALFORMED_JSON, "body does not match its encoding") from None
        except ConnectionError:
            # The sender hung up mid-body: nobody will read the answer, but the refusal is
            # still counted like any other.
            raise Rejection(Reason.MALFORMED_JSON, "connection closed mid-body") from None
        return b"".join(chunks)

    async def _verify(
        self, active: ActiveIntegration, request: web.Request, body: bytes, now: float
    ) -> Verified:
        integ = active.integration
        headers = request.headers
        if not integ.signature_required:
            return active.provider.verify_unsigned(headers, body)
        try:
            secrets = active.secrets.cached(now)
            if secrets is None:
                secrets = await active.secrets.resolve(self._secrets, now)
        except (SecretNotFound, SecretRefError):
            log.error("secret_unavailable", integration_id=integ.integration_id)
            raise Rejection(Reason.SECRET_UNAVAILABLE) from None
        return active.provider.verify(headers, body, secrets, now, integ.timestamp_tolerance_s)

    def _envelope(
        self,
        active: ActiveIntegration,
        verified: Verified,
        payload: dict[str, Any],
        body: bytes,
        now: float,
    ) -> tuple[dict[str, Any], ReplayKey]:
        integ = active.integration
        # The signed content itself (the signed timestamp and the body; never an unsigned
        # header such as the event type) is a key: the only one when the provider gives no
        # delivery id, and a second one when its delivery id is not signed, so that a
        # captured request sent again under a new id, or none, is still a duplicate.
        content_key = None
        if not (verified.delivery_id and active.provider.delivery_id_signed):
            signed_ts = "" if verified.timestamp is None else str(int(verified.timestamp))
            content_key = "sha256:" + hashlib.sha256(signed_ts.encode() + b"." + body).hexdigest()
        dedupe = verified.delivery_id or content_key or ""
        now_ms = int(now * 1000)
        ts_ms = now_ms if verified.timestamp is None else int(verified.timestamp * 1000)
        headers = dict(verified.headers_kept)
        if verified.envelope is not None and isinstance(verified.envelope.get("id"), str):
            headers["palyra-envelope-id"] = str(verified.envelope["id"])[:64]
        envelope = build_envelope(
            event_id=self._ids.new(int(now * 1000)),
            integration_id=integ.integration_id,
            provider=integ.provider,
            event_type=verified.event_type,
            payload=payload,
            nonce=make_nonce(integ.integration_id, dedupe),
            timestamp_ms=ts_ms,
            received_at_ms=now_ms,
            max_payload_bytes=integ.max_payload_bytes,
            headers={k: v[:1024] for k, v in list(headers.items())[:32]},
        )
        # No schema check here: build_envelope guarantees every rule of the schema for what
        # the ingress builds (a property test holds it to that), and the check cost a
        # quarter of the request's CPU.
        return envelope, ReplayKey(integ.integration_id, dedupe[:256], integ.replay_window_s,
                                   content_key)
