"""HTTP/1.1 over a raw socket, for requests aiohttp's client refuses to send (lying
Content-Length, endless chunked bodies, bytes a header byte at a time, odd request lines).
Test plumbing, not one of our parts: it parses just enough of a response to assert on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

HeaderList = Iterable[tuple[str, str]]


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: dict[str, str]
    """Lower-case names; a repeated header keeps its last value."""
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request_bytes(
    method: str, target: str, headers: HeaderList = (), body: bytes = b"", *,
    content_length: int | None = None, host: str = "127.0.0.1",
) -> bytes:
    """A request head (``Host`` first, then ``headers`` as given) and ``body``. A
    ``Content-Length`` is added from ``content_length`` (default: the body's true length)
    unless ``headers`` already hold one or a ``Transfer-Encoding``."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    given = list(headers)
    names = {name.lower() for name, _ in given}
    lines += [f"{name}: {value}" for name, value in given]
    if not names & {"content-length", "transfer-encoding"}:
        lines.append(f"Content-Length: {len(body) if content_length is None else content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (``b""`` gives the last chunk)."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def read_response(reader: asyncio.StreamReader, *, head: bool = False) -> RawResponse:
    """One response from ``reader``: status line, headers, then a body framed by
    Content-Length, chunked encoding or the end of the connection (none for HEAD)."""
    status_line = (await reader.readuntil(b"\r\n")).decode("latin-1").rstrip("\r\n")
    _version, status, reason = [*status_line.split(" ", 2), ""][:3]
    headers: dict[str, str] = {}
    while True:
        line = (await reader.readuntil(b"\r\n")).decode("latin-1").rstrip("\r\n")
        if not line:
            break
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    code = int(status)
    if head or code in (204, 304) or 100 <= code < 200:
        return RawResponse(code, reason, headers, b"")
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        return RawResponse(code, reason, headers, b"".join(parts))
    if "content-length" in headers:
        return RawResponse(code, reason, headers,
                           await reader.readexactly(int(headers["content-length"])))
    return RawResponse(code, reason, headers, await reader.read())


class RawConnection:
    """One TCP connection the test writes to as it likes (byte by byte, say)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def tcp(cls, port: int, host: str = "127.0.0.1", *,
                  source: str | None = None) -> RawConnection:
        """A connection to ``host:port``, from the local address ``source`` if given (a
        loopback address such as 127.0.0.2 is a second sender on the same machine)."""
        local = (source, 0) if source else None
        reader, writer = await asyncio.open_connection(host, port, local_addr=local)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def half_close(self) -> None:
        """Send FIN: no more bytes from us; the answer can still be read."""
        self.writer.write_eof()

    async def response(self, *, head: bool = False, timeout: float = 10.0) -> RawResponse:
        async with asyncio.timeout(timeout):
            return await read_response(self.reader, head=head)

    async def closed_by_peer(self, timeout: float = 10.0) -> bool:
        """Whether the peer ends the connection (EOF or reset) within ``timeout``, ignoring
        any bytes that come first."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        return True

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


async def exchange(port: int, data: bytes, *, head: bool = False,
                   timeout: float = 10.0) -> RawResponse:
    """Send ``data`` on a fresh connection and read one response."""
    conn = await RawConnection.tcp(port)
    try:
        await conn.send(data)
        return await conn.response(head=head, timeout=timeout)
    finally:
        await conn.close()
