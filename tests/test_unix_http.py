"""The admin client's HTTP/1.1 over a Unix socket (``palyra_py.clients.unix_http``) against a raw
peer that answers with exactly the bytes a test gives it."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from palyra_py.clients import unix_http
from palyra_py.clients.admin import AdminClient
from palyra_py.clients.errors import PalyraUnreachable
from palyra_py.clients.unix_http import ProtocolError


@dataclass
class RawPeer:
    """Accepts connections one at a time; for each, reads the request head (and a body of
    its Content-Length), records it, then sends ``answer``'s pieces in order. A piece that
    is a ``threading.Event`` is waited for instead of sent. ``close`` ends the connection
    after the last piece; otherwise it stays open until the test ends."""

    path: Path
    answer: Sequence[bytes | threading.Event] = ()
    close: bool = True
    requests: list[bytes] = field(default_factory=list)

    def serve(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                self.requests.append(self._read_request(conn))
                try:
                    for piece in self.answer:
                        if isinstance(piece, threading.Event):
                            piece.wait(10)
                        else:
                            conn.sendall(piece)
                    if not self.close:
                        conn.recv(1)  # until the client goes away
                except OSError:
                    pass  # the client gave up first (an answer it refused to read on)

    @staticmethod
    def _read_request(conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                while len(body) < int(value):
                    body += conn.recv(4096)
        return head + b"\r\n\r\n" + body


@pytest.fixture
def peer(state_dir: Path) -> Iterator[RawPeer]:
    raw = RawPeer(state_dir / "palyra.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(raw.path))
    listener.listen(4)
    thread = threading.Thread(target=raw.serve, args=(listener,), daemon=True)
    thread.start()
    yield raw
    listener.shutdown(socket.SHUT_RDWR)
    listener.close()
    thread.join(10)


def get(peer: RawPeer, *, timeout: float = 10) -> unix_http.UnixHttpResponse:
    return unix_http.request(peer.path, "GET", "/v1/x?a=1", headers={"Accept": "*/*"},
                             timeout=timeout)


def test_request_head_and_a_content_length_body(peer: RawPeer) -> None:
    peer.answer = [b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                   b"Content-Length: 12\r\nX-A: 1\r\nx-a: 2\r\n\r\n{\"ok\": true}trailing junk"]
    response = unix_http.request(peer.path, "POST", "/v1/things", headers={"X-Id": "7"},
                                 body=b'{"n": 1}', timeout=10)
    try:
        assert (response.status, response.reason) == (201, "Created")
        assert response.headers["x-a"] == "1, 2"
        assert response.read() == b'{"ok": true}'
    finally:
        response.close()
    head, _, body = peer.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/things HTTP/1.1"
    assert {b"Host: localhost", b"Connection: close", b"Content-Length: 8",
            b"X-Id: 7"} <= set(lines[1:])
    assert body == b'{"n": 1}'


def test_a_post_without_body_says_content_length_zero(peer: RawPeer) -> None:
    peer.answer = [b"HTTP/1.1 204 No Content\r\n\r\n"]
    response = unix_http.request(peer.path, "POST", "/v1/reload", headers={}, timeout=10)
    assert response.read() == b""
    response.close()
    assert b"Content-Length: 0" in peer.requests[0]


CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5;ext=1\r\nhello\r\n19\r\n, world, in two chunks!..\r\n0\r\nX-Trailer: t\r\n\r\n")


@pytest.mark.parametrize("split", [None, 1, 7])
def test_chunked_body_in_any_split(peer: RawPeer, split: int | None) -> None:
    step = split or len(CHUNKED)
    peer.answer = [CHUNKED[i : i + step] for i in range(0, len(CHUNKED), step)]
    response = get(peer)
    assert response.read() == b"hello, world, in two chunks!.."
    response.close()


def test_body_until_close_and_interim_answers(peer: RawPeer) -> None:
    peer.answer = [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\nno length, ",
                   b"read to the end"]
    response = get(peer)
    assert response.status == 200
    assert response.read() == b"no length, read to the end"
    response.close()


def test_read_with_a_limit(peer: RawPeer) -> None:
    peer.answer = [b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\n0123456789"]
    response = get(peer)
    assert response.read(4) == b"0123"
    response.close()


def test_the_body_streams_as_it_arrives(peer: RawPeer) -> None:
    second_may_go = threading.Event()
    peer.answer = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nfirst\n\r\n",
                   second_may_go, b"7\r\nsecond\n\r\n0\r\n\r\n"]
    response = get(peer)
    pieces = response.iter_body()
    assert next(pieces) == b"first\n"  # before the peer sends the rest
    second_may_go.set()
    assert b"".join(pieces) == b"second\n"
    response.close()


@pytest.mark.parametrize(
    ("answer", "error", "where"),
    [
        ([], ConnectionResetError, "head"),
        ([b"HTTP/1.1 200 OK\r\nContent-"], ProtocolError, "head"),
        ([b"SSH-2.0-OpenSSH_9.6\r\n\r\n"], ProtocolError, "head"),
        ([b"HTTP/1.1 2000 OK\r\n\r\n"], ProtocolError, "head"),
        ([b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n"], ProtocolError, "head"),
        ([b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n"], ProtocolError, "head"),
        ([b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000], ProtocolError, "head"),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"], ProtocolError, "body"),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"], ProtocolError, "body"),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\nab"], ProtocolError, "body"),
        ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"], ProtocolError,
         "body"),
        ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n"],
         ProtocolError, "body"),
        ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"], ProtocolError,
         "body"),
    ],
)
def test_malformed_or_cut_answers_are_errors(
    peer: RawPeer, answer: list[bytes], error: type[Exception], where: str
) -> None:
    peer.answer = answer
    if where == "head":
        with pytest.raises(error):
            get(peer)
        return
    response = get(peer)
    with pytest.raises(error):
        response.read()
    response.close()


def test_a_silent_peer_times_out(peer: RawPeer) -> None:
    peer.close = False
    with pytest.raises(TimeoutError):
        get(peer, timeout=0.2)


def test_header_injection_is_refused(peer: RawPeer) -> None:
    with pytest.raises(ValueError, match="X-Evil"):
        unix_http.request(peer.path, "GET", "/", headers={"X-Evil": "a\r\nHost: b"},
                          timeout=10)


# --- what the admin client makes of it -----------------------------------------------------


def test_admin_client_reports_a_broken_or_silent_daemon(peer: RawPeer) -> None:
    client = AdminClient(peer.path.parent, timeout=0.2)
    peer.answer = [b"garbage\r\n\r\n"]
    with pytest.raises(PalyraUnreachable, match=r"cannot talk to the daemon on .*status line"):
        client.status()
    peer.answer = []
    with pytest.raises(PalyraUnreachable, match="closed the connection") as caught:
        client.status()
    assert not caught.value.not_running
    peer.answer, peer.close = [], False
    with pytest.raises(PalyraUnreachable, match=r"did not answer .* in time"):
        client.status()


def test_admin_stream_cut_mid_chunk_is_unreachable(peer: RawPeer) -> None:
    peer.answer = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"F\r\ndata: {\"a\":1}\n\n\r\n9\r\ndata: {"]
    events = AdminClient(peer.path.parent).stream("/v1/events/stream")
    assert next(events).json() == {"a": 1}
    with pytest.raises(PalyraUnreachable, match="ended"):
        next(events)
