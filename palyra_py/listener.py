"""The public ingress listener's bound on open connections.

aiohttp has no connection limit of its own: every accepted socket becomes a request
handler and holds a file descriptor until it closes. ``CappedTCPSite`` counts the open
connections of its listener; past ``limit`` a new one is answered
``503 too_many_connections`` (with ``Retry-After``, so a provider retries later) and closed
at once, before any byte of it is read. Idle connections, and those whose request head is
still arriving, are closed by aiohttp's keep-alive timeout (``ingress.idle_timeout_s``),
which it arms from the moment a connection opens.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from ssl import SSLContext

from aiohttp import web

from palyra_py.reasons import ANSWERS, Reason


class ConnectionCap:
    """How many connections are open and how many were refused."""

    def __init__(self, limit: int, retry_after_s: int,
                 on_refused: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self.open = 0
        self.refused = 0
        self._on_refused = on_refused
        answer = ANSWERS[Reason.TOO_MANY_CONNECTIONS]
        body = json.dumps({  # "message" too: the admin API on TCP answers this way as well
            answer.key: Reason.TOO_MANY_CONNECTIONS.value,
            "message": f"{limit} connections are open (ingress.max_connections); retry later",
        }).encode()
        self._refusal = (
            f"HTTP/1.1 {answer.status} Service Unavailable\r\n"
            "Content-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: {int(retry_after_s)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode("ascii") + body

    def wrap(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory: ``make()`` while under the limit, else a refusal."""

        def build() -> asyncio.Protocol:
            if self.open >= self.limit:
                self.refused += 1
                if self._on_refused is not None:
                    self._on_refused()
                return _Refused(self._refusal)
            return _Counted(make(), self)

        return build


class _Refused(asyncio.Protocol):
    def __init__(self, answer: bytes) -> None:
        self._answer = answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(self._answer)
        transport.close()  # after the answer is flushed; nothing is read


class _Counted(asyncio.Protocol):
    """Counts one connection while handing every event to the real handler."""

    __slots__ = ("_cap", "_counted", "_inner")

    def __init__(self, inner: asyncio.Protocol, cap: ConnectionCap) -> None:
        self._inner = inner
        self._cap = cap
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._cap.open += 1
        self._counted = True
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted:
            self._counted = False
            self._cap.open -= 1
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
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
