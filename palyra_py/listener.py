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
- A connection whose handler has become a live stream (SSE) leaves the pool
  (:meth:`ConnectionCap.to_stream`): streams are bounded by ``stream.max_clients`` instead,
  so they can never take the slots providers' webhooks need.

Idle connections, and those whose request head is still arriving, are closed by aiohttp's
keep-alive timeout (``ingress.idle_timeout_s``), which it arms from the moment a connection
opens.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Callable
from ssl import SSLContext
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from palyra_py.reasons import ANSWERS, Reason


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
                 per_source: int | None = None) -> None:
        self.limit = limit
        self.per_source = limit if per_source is None else per_source
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
        }

    def wrap(self, make: Callable[[], RequestHandler]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory: each connection is admitted (or refused) when it opens."""

        def build() -> asyncio.Protocol:
            return _Counted(make, self)

        return build

    def to_stream(self, transport: asyncio.BaseTransport | None) -> bool:
        """The connection on ``transport`` now serves a live stream: it leaves the pool
        (and its source's share) for good. False when it is not one of this listener's."""
        conn = self._by_transport.get(transport) if transport is not None else None
        return conn is not None and conn.become_stream()

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
    """One connection: admitted or refused when it opens, counted while it lives; every
    event goes on to aiohttp's handler."""

    __slots__ = ("_cap", "_inner", "_make", "_source", "_state", "_transport")

    def __init__(self, make: Callable[[], RequestHandler], cap: ConnectionCap) -> None:
        self._make = make
        self._cap = cap
        self._inner: RequestHandler | None = None
        self._transport: asyncio.BaseTransport | None = None
        self._source = ""
        self._state = _GONE

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

    def become_stream(self) -> bool:
        if self._state != _POOLED:
            return self._state == _STREAM
        self._state = _STREAM
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
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            self._inner.eof_received()  # aiohttp's keeps the connection half-open
        return None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class CappedTCPSite(web.TCPSite):
    """``web.TCPSite`` whose connections go through ``cap``."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, cap: ConnectionCap,
                 ssl_context: SSLContext | None = None,
                 reuse_address: bool | None = None) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context,
                         reuse_address=reuse_address)
        self._cap = cap

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._cap.wrap(server), self._host, self._port, ssl=self._ssl_context,
            backlog=self._backlog, reuse_address=self._reuse_address,
        )
