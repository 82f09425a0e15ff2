"""A minimal HTTP/1.1 client over a Unix stream socket, for the admin API.

Why not ``http.client``: importing it costs more than a CLI command may spend starting up
(it loads ``email.parser`` and ``ssl``), for features an exchange with our own daemon on
a local socket never uses. This module speaks just enough HTTP/1.1 (RFC 9112): one request
per connection, a status line and headers, and a body framed by ``Transfer-Encoding:
chunked``, by ``Content-Length`` or by the end of the connection, readable whole or as it
arrives (server-sent events).

Every limit is bounded (header size and count, chunk-size lines, an optional body limit).
Failures are ``OSError``s: those of the socket itself (``FileNotFoundError``,
``ConnectionRefusedError``, ``TimeoutError``, ...), ``ConnectionResetError`` when the peer
closes before answering, and ``ProtocolError`` for an answer that is not HTTP/1.x.
"""

from __future__ import annotations

# The C module under ``socket``: the wrapper's enum set-up alone costs a few ms of start-up,
# and nothing here needs more than connect, send and recv.
import _socket
from collections.abc import Iterator, Mapping
from pathlib import Path

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
MAX_CHUNK_LINE_BYTES = 1024
RECV_BYTES = 64 * 1024


class ProtocolError(OSError):
    """The peer's answer is not well-formed HTTP/1.x, or ends before its body does."""


class UnixHttpResponse:
    """The status line and headers of an answer; its body is read with ``read()`` or
    ``iter_body()`` (once). ``headers`` has lower-case names; repeated fields are joined
    with ``", "``. ``close()`` closes the connection (reading to the end does not)."""

    def __init__(self, sock: _socket.socket, buffer: bytes, status: int, reason: str,
                 headers: dict[str, str]) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self._sock = sock
        self._buffer = buffer
        self._eof = False

    # -- reading the body --

    def read(self, limit: int | None = None) -> bytes:
        """The whole body, or its first ``limit`` bytes."""
        parts: list[bytes] = []
        size = 0
        for piece in self.iter_body():
            parts.append(piece)
            size += len(piece)
            if limit is not None and size >= limit:
                break
        body = b"".join(parts)
        return body if limit is None else body[:limit]

    def iter_body(self) -> Iterator[bytes]:
        """The body's bytes as they arrive (de-chunked), in pieces of any size."""
        if self.status < 200 or self.status in (204, 304):
            return
        encoding = self.headers.get("transfer-encoding", "")
        if encoding:
            # RFC 9112 6.3: with chunked last, the body is chunked; any other coding
            # (unknown to us) makes it last until the connection closes.
            if encoding.rsplit(",", 1)[-1].strip().lower() == "chunked":
                yield from self._chunked()
            else:
                yield from self._until_close()
            return
        length = self.headers.get("content-length")
        if length is None:
            yield from self._until_close()
            return
        values = {value.strip() for value in length.split(",")}
        if len(values) != 1 or not next(iter(values)).isdigit():
            raise ProtocolError(f"invalid Content-Length {length[:40]!r}")
        yield from self._exactly(int(values.pop()))

    def close(self) -> None:
        self._sock.close()

    # -- framing --

    def _recv(self) -> bytes:
        if self._eof:
            return b""
        data = self._sock.recv(RECV_BYTES)
        if not data:
            self._eof = True
        return data

    def _take_buffer(self, limit: int | None = None) -> bytes:
        if limit is None or limit >= len(self._buffer):
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:limit], self._buffer[limit:]
        return data

    def _until_close(self) -> Iterator[bytes]:
        if self._buffer:
            yield self._take_buffer()
        while data := self._recv():
            yield data

    def _exactly(self, length: int) -> Iterator[bytes]:
        left = length
        while left > 0:
            if not self._buffer:
                self._buffer = self._recv()
                if not self._buffer:
                    raise ProtocolError(f"the answer ended {left} bytes before its body did")
            piece = self._take_buffer(left)
            left -= len(piece)
            yield piece

    def _line(self, limit: int) -> bytes:
        while (end := self._buffer.find(b"\r\n")) < 0:
            if len(self._buffer) > limit:
                raise ProtocolError("a line of the answer is too long")
            data = self._recv()
            if not data:
                raise ProtocolError("the answer ended inside its chunked body")
            self._buffer += data
        line, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
        return line

    def _chunked(self) -> Iterator[bytes]:
        while True:
            size_text = self._line(MAX_CHUNK_LINE_BYTES).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolError(f"invalid chunk size {size_text[:20]!r}") from None
            if size < 0:
                raise ProtocolError(f"invalid chunk size {size_text[:20]!r}")
            if size == 0:
                break
            for piece in self._exactly(size):
                if piece:
                    yield piece
            if self._line(MAX_CHUNK_LINE_BYTES):
                raise ProtocolError("a chunk is longer than its size says")
        # Trailer fields, if any, up to the empty line; nothing here uses them.
        for _ in range(MAX_HEADERS + 1):
            if not self._line(MAX_HEAD_BYTES):
                return
        raise ProtocolError("too many trailer fields")


def request(
    path: Path,
    method: str,
    target: str,
    *,
    headers: Mapping[str, str],
    body: bytes | None = None,
    timeout: float | None,
) -> UnixHttpResponse:
    """Send one request on a new connection to the socket at ``path`` and read the answer's
    head. ``timeout`` bounds the connect and each wait for data (None: no bound). The
    caller closes the response."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(_request_head(method, target, headers, body) + (body or b""))
        return _read_head(sock)
    except BaseException:
        sock.close()
        raise


def _request_head(method: str, target: str, headers: Mapping[str, str],
                  body: bytes | None) -> bytes:
    fields = {"Host": "localhost", "Accept-Encoding": "identity", "Connection": "close"}
    fields.update(headers)
    if body is not None:
        fields["Content-Length"] = str(len(body))
    elif method in ("POST", "PUT", "PATCH"):
        fields["Content-Length"] = "0"  # as http.client does: some servers want one
    lines = [f"{method} {target} HTTP/1.1"]
    for name, value in fields.items():
        if any(c in name + value for c in "\r\n\0"):
            raise ValueError(f"invalid character in the {name} header")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _read_head(sock: _socket.socket) -> UnixHttpResponse:
    buffer = b""
    while True:
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            if len(buffer) > MAX_HEAD_BYTES:
                raise ProtocolError("the answer's head is too large")
            data = sock.recv(RECV_BYTES)
            if not data:
                if buffer:
                    raise ProtocolError("the answer ended inside its head")
                raise ConnectionResetError("the peer closed the connection without answering")
            buffer += data
        head, buffer = buffer[:end].decode("latin-1"), buffer[end + 4 :]
        status_line, *field_lines = head.split("\r\n")
        status, reason = _status(status_line)
        # 1xx answers are interim (RFC 9110 15.2): the final one follows.
        if status >= 200 or status == 101:
            return UnixHttpResponse(sock, buffer, status, reason, _fields(field_lines))


def _status(line: str) -> tuple[int, str]:
    version, _, rest = line.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise ProtocolError(f"not an HTTP/1.x status line: {line[:60]!r}")
    return int(code), reason.strip()


def _fields(lines: list[str]) -> dict[str, str]:
    if len(lines) > MAX_HEADERS:
        raise ProtocolError(f"more than {MAX_HEADERS} header fields")
    fields: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ProtocolError(f"malformed header field {line[:60]!r}")
        key, value = name.lower(), value.strip()
        fields[key] = f"{fields[key]}, {value}" if key in fields else value
    return fields
