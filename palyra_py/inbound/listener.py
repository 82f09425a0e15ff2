"""The public ingress listener's bounds on open connections.

aiohttp has no connection limit of its own: every accepted socket becomes a request
handler and holds a file descriptor until it closes. ``CappedTCPSite`` counts the open
connections of its listener in a :class:`ConnectionCap`:

- Past ``limit`` (``ingress.max_connections``) a new connection is answered
  ``503 too_many_connections`` (with ``Retry-After``, so a provider retries later) and closed
  at once, before any byte of it is read.
- One source address (an IPv4 address, or an IPv6 /64: one host's whole allocation) holds
  at most ``per_source`` (``ingress.max_connections_per_source``) of them; past that its new
  connections are answered ``503 too_many_source_connections`` the same way, and every
  other address is still served.
- A connection whose handler has become a live stream (SSE, WebSocket) leaves the pool
  (:meth:`ConnectionCap.to_stream`): streams are bounded by ``stream.max_clients`` instead,
  so they can never take the slots providers' webhooks need.
- The bytes of a request head (request line and header lines, up to the blank line) are
  counted as they arrive; a head past ``max_head_bytes`` (``ingress.max_head_bytes``) is
  answered ``431 head_too_large`` and the connection closed, before aiohttp's parser has
  held more than that of it. Body bytes are not counted (their own limits apply); where a
  body ends is taken from aiohttp's own parse of the head, so the count and the parser
  agree on the framing. What an SSE client sends once its stream has begun is dropped
  unread; a WebSocket's frames (pongs, its close) go on to aiohttp, which bounds them.

Idle connections, and those whose request head is still arriving, are closed by aiohttp's
keep-alive timeout (``ingress.idle_timeout_s``), which it arms from the moment a connection
opens.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
from collections.abc import Callable
from ssl import SSLContext
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from palyra_py.reasons import ANSWERS, Reason

HEAD_END = b"\r\n\r\n"
BODY_SLICE = 8 * 1024
"""Bytes of a body without a Content-Length (chunked) handed to the parser at a time: the
parser alone knows where such a body ends, so at most this much of what follows it (the
next request's head) reaches the parser before the count resumes."""
LINGER_S = 2.0
"""After a 431 the connection reads (and drops) what the client still sends for this long
before it closes, so closing does not reset the connection before the answer is read."""


def source_key(peername: Any) -> str:
    """The group a peer address counts in: the IPv4 address itself, the /64 of an IPv6
    address (the IPv4 address of an IPv4-mapped one); ``""`` for anything else."""
    host = peername[0] if isinstance(peername, tuple) and peername else None
    if not isinstance(host, str):
        return ""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return ""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _answer(reason: Reason, phrase: str, message: str, retry_after_s: int | None) -> bytes:
    answer = ANSWERS[reason]
    body = json.dumps({  # "message" too: the admin API on TCP answers this way as well
        answer.key: reason.value, "message": message,
    }).encode()
    retry = f"Retry-After: {int(retry_after_s)}\r\n" if retry_after_s is not None else ""
    return (
        f"HTTP/1.1 {answer.status} {phrase}\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n{retry}"
        "Connection: close\r\n\r\n"
    ).encode("ascii") + body


class ConnectionCap:
    """How many connections are open (in the pool, and as streams) and how many were
    refused."""

    def __init__(self, limit: int, retry_after_s: int,
                 on_refused: Callable[[Reason], None] | None = None, *,
                 per_source: int | None = None, max_head_bytes: int | None = None) -> None:
        self.limit = limit
        self.per_source = limit if per_source is None else per_source
        self.max_head_bytes = max_head_bytes
        self.open = 0
        """Connections in the pool (everything but streams)."""
        self.streams = 0
        """Connections that became live streams (not in the pool)."""
        self.refused = 0
        self.by_source: dict[str, int] = {}
        """Pool connections per source group; a group with none is not kept."""
        self._on_refused = on_refused
        self._by_transport: dict[asyncio.BaseTransport, _Counted] = {}
        self._refusals = {
            Reason.TOO_MANY_CONNECTIONS: _answer(
                Reason.TOO_MANY_CONNECTIONS, "Service Unavailable",
                f"{limit} connections are open (ingress.max_connections); retry later",
                retry_after_s),
            Reason.TOO_MANY_SOURCE_CONNECTIONS: _answer(
                Reason.TOO_MANY_SOURCE_CONNECTIONS, "Service Unavailable",
                f"this address has {self.per_source} connections open "
                "(ingress.max_connections_per_source); retry later", retry_after_s),
            Reason.HEAD_TOO_LARGE: _answer(
                Reason.HEAD_TOO_LARGE, "Request Header Fields Too Large",
                f"the request head is over {max_head_bytes} bytes (ingress.max_head_bytes)",
                None),
        }

    def wrap(self, make: Callable[[], RequestHandler]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory: each connection is admitted (or refused) when it opens."""

        def build() -> asyncio.Protocol:
            return _Counted(make, self)

        return build

    def to_stream(self, transport: asyncio.BaseTransport | None, *,
                  reads: bool = False) -> bool:
        """The connection on ``transport`` now serves a live stream: it leaves the pool
        (and its source's share) for good; with ``reads`` (a WebSocket) what its client
        sends still reaches the handler. False when it is not one of this listener's."""
        conn = self._by_transport.get(transport) if transport is not None else None
        return conn is not None and conn.become_stream(reads)

    def _refused(self, reason: Reason) -> bytes:
        self.refused += 1
        if self._on_refused is not None:
            self._on_refused(reason)
        return self._refusals[reason]

    def _admit(self, source: str) -> Reason | None:
        if self.open >= self.limit:
            return Reason.TOO_MANY_CONNECTIONS
        held = self.by_source.get(source, 0)
        if held >= self.per_source:
            return Reason.TOO_MANY_SOURCE_CONNECTIONS
        self.open += 1
        self.by_source[source] = held + 1
        return None

    def _release(self, source: str) -> None:
        self.open -= 1
        held = self.by_source.get(source, 0) - 1
        if held > 0:
            self.by_source[source] = held
        else:
            self.by_source.pop(source, None)


_POOLED, _STREAM, _GONE = "pooled", "stream", "gone"


class _Counted(asyncio.Protocol):
    """One connection: admitted or refused when it opens, counted while it lives, its
    request heads measured as they arrive; every event goes on to aiohttp's handler."""

    __slots__ = ("_body_left", "_body_reader", "_cap", "_closing", "_head", "_inner",
                 "_make", "_passthrough", "_seen", "_source", "_state", "_stream_reads",
                 "_tail", "_transport")

    def __init__(self, make: Callable[[], RequestHandler], cap: ConnectionCap) -> None:
        self._make = make
        self._cap = cap
        self._inner: RequestHandler | None = None
        self._transport: asyncio.BaseTransport | None = None
        self._source = ""
        self._state = _GONE
        self._closing = False
        # The request head being received: its bytes so far and its last three (the end
        # marker may be split between reads).
        self._head = 0
        self._tail = b""
        # After a head: what is left of its body (Content-Length), or the body's reader
        # when only the parser knows where it ends (chunked).
        self._body_left = 0
        self._body_reader: StreamReader | None = None
        self._seen = 0  # heads aiohttp has parsed on this connection
        self._passthrough = False  # upgraded or refused by the parser: nothing to count
        self._stream_reads = False  # a stream whose client's bytes still matter (WebSocket)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        cap = self._cap
        self._source = source_key(transport.get_extra_info("peername"))
        refusal = cap._admit(self._source)
        if refusal is not None:
            transport.write(cap._refused(refusal))
            transport.close()  # after the answer is flushed; nothing is read
            return
        self._state = _POOLED
        self._transport = transport
        cap._by_transport[transport] = self
        self._inner = self._make()
        self._inner.connection_made(transport)

    def become_stream(self, reads: bool = False) -> bool:
        if self._state != _POOLED:
            return self._state == _STREAM
        self._state = _STREAM
        self._stream_reads = reads
        self._cap._release(self._source)
        self._cap.streams += 1
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        cap = self._cap
        if self._state == _POOLED:
            cap._release(self._source)
        elif self._state == _STREAM:
            cap.streams -= 1
        self._state = _GONE
        if self._transport is not None:
            cap._by_transport.pop(self._transport, None)
            self._transport = None
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        inner = self._inner
        if inner is None or self._closing or (self._state == _STREAM
                                              and not self._stream_reads):
            return  # refused, or an SSE stream (its client has nothing more to say): dropped
        limit = self._cap.max_head_bytes
        while data and limit is not None and not self._passthrough:
            if self._body_left:
                part = data[: self._body_left]
                self._body_left -= len(part)
            elif self._body_reader is not None:
                if self._body_reader.is_eof():
                    self._body_reader = None
                    continue
                part = data[:BODY_SLICE]
            else:
                end = self._head_end(data)
                part = data if end < 0 else data[:end]
                if self._head + len(part) > limit:
                    self._refuse_head()
                    return
                self._head += len(part)
                self._tail = (self._tail + part[-3:])[-3:] if end < 0 else b""
            data = data[len(part):]
            inner.data_received(part)
            self._after_feed(inner)
        if data:
            inner.data_received(data)

    def _head_end(self, data: bytes) -> int:
        """Where in ``data`` the head's blank line ends (-1: not in it)."""
        if self._tail:  # the marker may have begun in the previous read
            start = (self._tail + data[:3]).find(HEAD_END)
            if start >= 0:
                return start + len(HEAD_END) - len(self._tail)
        start = data.find(HEAD_END)
        return start + len(HEAD_END) if start >= 0 else -1

    def _after_feed(self, inner: RequestHandler) -> None:
        """A new head was parsed: the count starts again, and the body's framing (as the
        parser read it) says which bytes are not head."""
        # Private to aiohttp, read only: how many heads it parsed, and the latest one.
        if inner._request_count == self._seen:
            return
        self._seen = inner._request_count
        self._head, self._tail = 0, b""
        self._body_left, self._body_reader = 0, None
        if inner._upgraded or not inner._messages:
            self._passthrough = inner._upgraded
            return
        message, payload = inner._messages[-1]
        if not isinstance(message, RawRequestMessage):
            self._passthrough = True  # a parse error: aiohttp answers 400 and closes
        elif payload.is_eof():
            pass  # no body: the next bytes are the next head
        elif not message.chunked and (length := message.headers.get(hdrs.CONTENT_LENGTH,
                                                                     "")).isdigit():
            self._body_left = int(length)
        else:
            self._body_reader = payload

    def _refuse_head(self) -> None:
        inner, transport = self._inner, self._transport
        assert inner is not None and isinstance(transport, asyncio.WriteTransport)
        self._closing = True  # from here what arrives is dropped
        answer = self._cap._refused(Reason.HEAD_TOO_LARGE)
        if inner._request_in_progress or inner._messages:
            # An earlier request is being answered: it finishes, then aiohttp closes.
            inner.close()
            return
        transport.write(answer)
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_S, transport.close)

    def eof_received(self) -> bool | None:
        if self._closing:
            return False  # the client is done: close now
        if self._inner is not None:
            self._inner.eof_received()
        return None  # as aiohttp's own: the transport closes itself

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class CappedTCPSite(web.TCPSite):
    """``web.TCPSite`` whose connections go through ``cap``. With ``sock`` (a listening
    socket bound elsewhere, e.g. shared by worker processes) it accepts on that socket
    instead of binding ``host``:``port``."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, cap: ConnectionCap,
                 ssl_context: SSLContext | None = None,
                 reuse_address: bool | None = None,
                 sock: socket.socket | None = None) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context,
                         reuse_address=reuse_address)
        self._cap = cap
        self._sock = sock

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        if self._sock is not None:
            self._server = await loop.create_server(
                self._cap.wrap(server), sock=self._sock, ssl=self._ssl_context,
                backlog=self._backlog,
            )
            return
        self._server = await loop.create_server(
            self._cap.wrap(server), self._host, self._port, ssl=self._ssl_context,
            backlog=self._backlog, reuse_address=self._reuse_address,
        )
