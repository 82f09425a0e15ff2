"""Admin API: the journal (``/v1/events``, ``/v1/events/stream``, ``/v1/journal/verify``)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from palyra_py.admin.context import EventsContext
from palyra_py.admin.errors import ApiError, invalid, read_json_object
from palyra_py.events import RESERVED_PREFIXES, SYSTEM_SOURCES
from palyra_py.journal.journal import EventFilter, JournalUnavailable, ReplayKey
from palyra_py.providers import PROVIDER_NAMES
from palyra_py.redact import redact
from palyra_py.registry.tokens import Principal, type_namespace
from palyra_py.stream.hub import (
    MAX_WILDCARD_CHARS,
    TooManyClients,
    TooManyOwnerStreams,
    wildcard_chars,
)
from palyra_py.stream.ws import MAX_CLIENT_MESSAGE_BYTES, serve_websocket
from palyra_py.times import InvalidTime, parse_rfc3339_ms

EVENT_NAME = re.compile(r"^[a-z0-9._:-]{1,64}$")
SEVERITIES = ("info", "warn", "error")
PRINCIPAL = web.RequestKey("principal", Principal)
"""Set on requests that came over TCP with a valid token: who it speaks for."""
SOURCE_NAME = re.compile(r"^[A-Za-z0-9._:/@-]{1,128}$")
RESERVED_SOURCES = tuple(sorted(SYSTEM_SOURCES))
PUBLISH_NAMESPACE = "(publish)"  # not a valid integration id, so never collides with one
PROVIDER_NAMESPACES = tuple(sorted(
    {variant for name in PROVIDER_NAMES
     for variant in (name, name.replace("-", "_"), name.replace("_", "-"))}
    | {"svix", "webhook", "webhooks"}
))
"""Type namespaces no publisher may use: received webhooks are published as
``<provider>.<event>``, so an event of one of these types would pass for one."""
IDEMPOTENCY_WINDOW_S = 24 * 3600
MAX_SUMMARY_BYTES = 240
MAX_DATA_BYTES = 8 * 1024
MAX_TOKEN_BODY_BYTES = 64 * 1024
"""Largest request body on the TCP listener's token routes (``POST /v1/events``): an event
that is accepted is about 9 KiB at most (``data`` 8 KiB, ``summary`` 240 bytes, a few short
fields); the rest is room for whitespace and escapes. The ingress's own 32 MiB are for
``/hooks``."""
MAX_LIST_LIMIT = 10_000
HEARTBEAT_S = 15.0


MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: any later is a typo


def parse_time_ms(value: str, name: str) -> int:
    """RFC 3339 or unix seconds -> unix ms, from 0 to the end of year 9999."""
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is not None:
        if not 0 <= seconds <= MAX_TIME_MS / 1000:  # also refuses nan and inf
            raise invalid(f"{name}: unix seconds from 0 to {MAX_TIME_MS // 1000}", name)
        return int(seconds * 1000)
    try:
        ms = parse_rfc3339_ms(text)
    except InvalidTime as exc:
        if exc.missing_offset:
            raise invalid(f"{name}: give a time zone (e.g. Z)", name) from None
        raise invalid(f"{name}: expected RFC 3339 or unix seconds, got {text[:40]!r}",
                      name) from None
    if not 0 <= ms <= MAX_TIME_MS:
        raise invalid(f"{name}: must be from 1970 to 9999", name)
    return ms


def parse_int(value: str | None, name: str, default: int, lo: int, hi: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise invalid(f"{name}: expected an integer, got {value[:40]!r}", name) from None
    if not lo <= number <= hi:
        raise invalid(f"{name}: must be from {lo} to {hi}", name)
    return number


def check_stream_patterns(flt: EventFilter, max_patterns: int) -> None:
    """A stream's type globs are compiled and matched live on the event loop: at most
    ``stream.max_patterns`` of them, and at most :data:`MAX_WILDCARD_CHARS` characters in
    all of those that are neither literal nor ``prefix*`` / ``*suffix`` (400
    ``too_many_patterns``)."""
    if len(flt.types) > max_patterns:
        raise ApiError(400, "too_many_patterns",
                       f"type: at most {max_patterns} patterns for a stream", field="type")
    if wildcard_chars(flt.types) > MAX_WILDCARD_CHARS:
        raise ApiError(
            400, "too_many_patterns",
            f"type: at most {MAX_WILDCARD_CHARS} characters in all of the patterns other "
            "than literal, prefix* and *suffix ones", field="type")


def filter_from_query(request: web.Request) -> EventFilter:
    """The query's filter; on the TCP listener also limited to what the token may read."""
    q = request.query
    types = tuple(t for t in q.getall("type", []) if t)
    if len(types) > 64 or any(len(t) > 128 for t in types):
        raise invalid("type: at most 64 patterns of at most 128 characters", "type")
    flt = EventFilter(
        types=types,
        integration_id=q.get("integration") or None,
        source=q.get("source") or None,
        since_ms=parse_time_ms(q["since"], "since") if q.get("since") else None,
        until_ms=parse_time_ms(q["until"], "until") if q.get("until") else None,
    )
    principal = request.get(PRINCIPAL)
    scope = None if principal is None else principal.read_scope()
    return flt if scope is None else dataclasses.replace(flt, visible=scope)


def token_source(principal: Principal, integrations: Mapping[str, object]) -> str:
    """The default ``source`` of what a token publishes: its name when that is a valid
    source that is neither the daemon's nor an integration's, else ``token:<token_id>``."""
    name = principal.name
    if SOURCE_NAME.fullmatch(name) and name not in RESERVED_SOURCES and name not in integrations:
        return name
    return principal.tag


def publish_namespace(principal: Principal | None) -> str:
    """Where a publisher's idempotency keys live: ``(publish)`` on the admin socket,
    ``(publish:<token_id>)`` for each token (neither is a valid integration id)."""
    return PUBLISH_NAMESPACE if principal is None else f"(publish:{principal.token_id})"


TokenHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def body_capped(handler: TokenHandler, limit: int = MAX_TOKEN_BODY_BYTES) -> TokenHandler:
    """``handler`` with its request body bounded to ``limit`` bytes: a Content-Length over it
    is 413 ``payload_too_large`` before a byte is read, and a body that goes past it (chunked,
    or inflating under Content-Encoding) is cut off as soon as the excess arrives (the same
    413, from aiohttp's ``client_max_size``), never read whole."""

    async def capped(request: web.Request) -> web.StreamResponse:
        declared = request.content_length
        if declared is not None and declared > limit:
            raise ApiError(413, "payload_too_large", f"request body over {limit} bytes")
        return await handler(request.clone(client_max_size=limit))

    return capped


class EventsApi:
    def __init__(self, context: EventsContext) -> None:
        self.ctx = context

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/events", self.list),
            web.get("/v1/events/stream", self.stream),
            web.get("/v1/events/ws", self.websocket),
            web.post("/v1/events", self.emit),
            web.post("/v1/journal/verify", self.verify),
        ]

    async def list(self, request: web.Request) -> web.Response:
        flt = filter_from_query(request)
        after = parse_int(request.query.get("after_seq"), "after_seq", 0, 0, 2**62)
        limit = parse_int(request.query.get("limit"), "limit", 100, 1, MAX_LIST_LIMIT)
        try:
            events = await self.ctx.journal.list(flt, after_seq=after, limit=limit)
        except JournalUnavailable as exc:
            raise ApiError(503, "journal_unavailable", f"journal unavailable: {exc}") from None
        next_after = events[-1].seq if len(events) == limit else None
        return web.json_response(
            {"events": [e.to_dict() for e in events], "next_after_seq": next_after}
        )

    async def _stream_start(self, request: web.Request) -> tuple[EventFilter, int]:
        """A stream's filter (bounded: ``check_stream_patterns``) and its cursor: the
        query's ``after_seq``, else the journal's head."""
        flt = filter_from_query(request)
        check_stream_patterns(flt, self.ctx.settings.get("stream", "max_patterns"))
        try:
            default_after = await self.ctx.journal.last_seq()
        except JournalUnavailable as exc:
            raise ApiError(503, "journal_unavailable", f"journal unavailable: {exc}") from None
        return flt, parse_int(request.query.get("after_seq"), "after_seq", default_after, 0,
                              2**62)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: replay from the cursor, then follow the journal head. The
        journal is read by seq, so a reconnect with ``Last-Event-ID`` never misses one."""
        flt, cursor = await self._stream_start(request)
        last_id = request.headers.get("Last-Event-ID", "")
        if last_id.strip():
            cursor = parse_int(last_id.strip(), "Last-Event-ID", cursor, 0, 2**62)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                     "X-Accel-Buffering": "no"}
        )
        # The connection ends with its stream: it is never handed back to the pool.
        response.force_close()
        # The daemon cancels open streams when it stops; a stream otherwise only notices a
        # gone client at its next write (at most one heartbeat later).
        task = asyncio.current_task()
        assert task is not None
        try:
            # A token's streams are bounded per token (by id: two tokens may share a
            # name); the admin socket's are not.
            principal = request.get(PRINCIPAL)
            owner = None if principal is None else principal.tag
            async with self.ctx.stream_hub.open_sse(flt, cursor, owner) as client:
                if request.method != "HEAD":
                    # A stream on the ingress listener leaves the connection pool (streams
                    # have their own cap, stream.max_clients): providers keep every slot.
                    self.ctx.listener.connections.to_stream(request.transport)
                await response.prepare(request)
                if request.method == "HEAD":  # the head only: a HEAD response has no body
                    return response
                await response.write(b": palyra event stream\n\n")
                self.ctx.streams.add(task)
                self.ctx.metrics.sse_clients.inc()
                try:
                    # From here the hub writes the events; this task catches up from the
                    # journal, sends heartbeats and waits for the end.
                    await client.serve(response, request.transport, HEARTBEAT_S)
                finally:
                    self.ctx.streams.discard(task)
                    self.ctx.metrics.sse_clients.dec()
        except TooManyOwnerStreams as exc:
            raise ApiError(429, "too_many_streams_for_token", str(exc)) from None
        except TooManyClients as exc:
            raise ApiError(503, "too_many_streams", str(exc)) from None
        return response

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        """The stream as WebSocket messages (``palyra_py.stream.ws``): the SSE stream's
        filters, cursor (``after_seq``), caps and overflow rule."""
        flt, cursor = await self._stream_start(request)
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S,
                                   max_msg_size=MAX_CLIENT_MESSAGE_BYTES)
        if not ws.can_prepare(request).ok:
            raise invalid("expected a WebSocket upgrade (Connection: Upgrade, Upgrade:"
                          " websocket); GET /v1/events/stream serves Server-Sent Events")
        task = asyncio.current_task()
        assert task is not None
        principal = request.get(PRINCIPAL)
        owner = None if principal is None else principal.tag
        try:
            async with self.ctx.stream_hub.subscribe(flt, cursor, owner) as feed:
                # The client's frames (pongs, its close) must still be read.
                self.ctx.listener.connections.to_stream(request.transport, reads=True)
                await ws.prepare(request)
                self.ctx.streams.add(task)
                self.ctx.metrics.ws_clients.inc()
                try:
                    await serve_websocket(ws, feed, cursor, HEARTBEAT_S)
                finally:
                    self.ctx.streams.discard(task)
                    self.ctx.metrics.ws_clients.dec()
        except TooManyOwnerStreams as exc:
            raise ApiError(429, "too_many_streams_for_token", str(exc)) from None
        except TooManyClients as exc:
            raise ApiError(503, "too_many_streams", str(exc)) from None
        return ws

    async def emit(self, request: web.Request) -> web.Response:
        """Publish an event (``palyra system events emit``, the Python client, apps)."""
        body = await read_json_object(request)
        principal = request.get(PRINCIPAL)
        integrations = self.ctx.registry_view.registry.integrations
        default_source = "operator" if principal is None else token_source(principal,
                                                                           integrations)
        name = body.get("type", body.get("name"))
        if not isinstance(name, str) or not EVENT_NAME.fullmatch(name.strip().lower()):
            raise invalid("type: 1-64 characters of a-z 0-9 . _ : -", "type")
        name = name.strip().lower()
        if name.startswith(RESERVED_PREFIXES):
            raise invalid(
                f"type: the prefixes {', '.join(RESERVED_PREFIXES)} are reserved for the daemon",
                "type",
            )
        if type_namespace(name) in PROVIDER_NAMESPACES:
            raise invalid(
                f"type: {type_namespace(name)}.* is a provider's namespace: received webhooks"
                " are published under it, so no one may publish into it", "type",
            )
        if principal is not None and not principal.can_publish(name):
            raise ApiError(403, "scope_denied",
                           f"token {principal.token_id} may not publish {name!r}"
                           " (no publish scope matches it)")
        severity = body.get("severity", "info")
        if severity not in SEVERITIES:
            raise invalid(f"severity: one of {', '.join(SEVERITIES)}", "severity")
        summary = body.get("summary", "")
        if not isinstance(summary, str) or len(summary.encode()) > MAX_SUMMARY_BYTES:
            raise invalid(f"summary: a string of at most {MAX_SUMMARY_BYTES} bytes", "summary")
        data = body.get("data", {})
        if not isinstance(data, dict):
            raise invalid("data: must be a JSON object", "data")
        if len(json.dumps(data).encode()) > MAX_DATA_BYTES:
            raise invalid(f"data: at most {MAX_DATA_BYTES} bytes of JSON", "data")
        actor = body.get("actor")
        if actor is not None and (not isinstance(actor, str) or not 0 < len(actor) <= 128):
            raise invalid("actor: a string of 1 to 128 characters", "actor")
        source = body.get("source", default_source)
        if not isinstance(source, str) or not SOURCE_NAME.fullmatch(source):
            raise invalid("source: 1-128 characters of A-Z a-z 0-9 . _ : / @ -", "source")
        if source in RESERVED_SOURCES:
            raise invalid(f"source: {', '.join(RESERVED_SOURCES)} are the daemon's own", "source")
        if source in integrations:
            raise invalid(f"source: {source!r} is an integration's id: its received webhooks"
                          " carry it, so published events may not", "source")
        key = body.get("idempotency_key")
        replay_key = None
        if key is not None:
            if not isinstance(key, str) or not 0 < len(key) <= 128 or not key.isprintable():
                raise invalid("idempotency_key: 1 to 128 printable characters", "idempotency_key")
            # The same mechanism as inbound replay protection, in a namespace of the
            # publisher's own: one token cannot suppress another's events with its keys.
            replay_key = ReplayKey(publish_namespace(principal), key, IDEMPOTENCY_WINDOW_S)
        clean, redacted = redact(data)
        payload: dict[str, Any] = {"data": clean}
        if summary:
            payload["summary"] = summary
        if principal is not None:
            payload["published_by"] = principal.tag
        result = await self.ctx.appender.append(
            kind=name, source=source, payload=payload, actor=actor or source,
            event_type=name, severity=severity, redacted=redacted, replay_key=replay_key,
        )
        return web.json_response(
            {"event_id": result.event_id, "seq": result.seq, "duplicate": result.duplicate},
            status=200 if result.duplicate else 201,
        )

    async def verify(self, request: web.Request) -> web.Response:
        try:
            result = await self.ctx.journal.verify()
        except JournalUnavailable as exc:
            raise ApiError(503, "journal_unavailable", f"journal unavailable: {exc}") from None
        return web.json_response(
            {"ok": result.ok, "checked": result.checked, "first_seq": result.first_seq,
             "last_seq": result.last_seq, "first_broken_seq": result.first_broken_seq,
             "reason": result.reason}
        )
