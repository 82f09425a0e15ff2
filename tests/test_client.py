"""The public Python client (``palyra_py.client``) against canned HTTP peers: one on a Unix
socket (the admin API) and one on TCP (the ingress listener, with a bearer token)."""

from __future__ import annotations

import json
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qsl

import pytest

from palyra_py.client import AsyncClient, Client, EmitResult, PalyraError, PalyraUnreachable
from tests.test_cli_offline import CannedDaemon, canned_handler

TOKEN = "plt_t1_very-secret-token-value"
CREATED = (201, {"event_id": "01J0EVENT", "seq": 7, "duplicate": False})


@contextmanager
def _serving(server: socketserver.BaseServer) -> Iterator[None]:
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def unix_peer(state_dir: Path) -> Iterator[CannedDaemon]:
    peer = CannedDaemon(state_dir)
    server = socketserver.ThreadingUnixStreamServer(
        str(state_dir / "palyra.sock"), canned_handler(peer)
    )
    with _serving(server):
        yield peer


class _TcpServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


@pytest.fixture
def tcp_peer(tmp_path: Path) -> Iterator[tuple[CannedDaemon, str]]:
    peer = CannedDaemon(tmp_path)
    server = _TcpServer(("127.0.0.1", 0), canned_handler(peer))
    port = server.server_address[1]
    with _serving(server):
        yield peer, f"http://127.0.0.1:{port}"


# --- construction -------------------------------------------------------------------------


def test_importing_the_client_loads_no_aiohttp() -> None:
    probe = ("import sys; from palyra_py.client import Client, AsyncClient; "
             "print(sorted(m for m in ('aiohttp', 'sqlite3', 'structlog') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"


def test_state_dir_resolves_like_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PALYRA_STATE_DIR", "/srv/palyra")
    assert repr(Client()) == "Client('/srv/palyra/palyra.sock')"
    assert repr(Client("/other")) == "Client('/other/palyra.sock')"
    assert repr(AsyncClient(Path("/x"))) == "AsyncClient('/x/palyra.sock')"
    assert repr(Client(url="https://hooks.example:8443/palyra/", token=TOKEN)) == (
        "Client('https://hooks.example:8443/palyra')"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "ftp://host"}, "http://HOST"),
        ({"url": "http://"}, "http://HOST"),
        ({"url": "https://user:pw@host"}, "credentials"),
        ({"url": "http://host/?a=1"}, "query"),
        ({"url": "http://host", "state_dir": "/x"}, "not both"),
    ],
)
def test_bad_endpoints_are_value_errors(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Client(**kwargs)  # type: ignore[arg-type]


# --- emit over the socket and over TCP ---------------------------------------------------


def test_emit_on_the_socket_sends_the_body_without_a_token(unix_peer: CannedDaemon) -> None:
    unix_peer.routes[("POST", "/v1/events")] = CREATED
    with Client(unix_peer.state_dir) as client:
        result = client.emit(
            "deploy.done", {"version": "2.3"}, source="ci", actor="alice",
            idempotency_key="job-42", severity="warn", summary="v2.3 live",
        )
    assert result == EmitResult(event_id="01J0EVENT", seq=7, duplicate=False)
    request = unix_peer.requests[0]
    assert request["body"] == {
        "type": "deploy.done", "data": {"version": "2.3"}, "source": "ci", "actor": "alice",
        "idempotency_key": "job-42", "severity": "warn", "summary": "v2.3 live",
    }
    assert "Authorization" not in request["headers"]
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["User-Agent"].startswith("palyra-py/")


def test_emit_over_tcp_sends_the_bearer_token_under_the_url_prefix(
    tcp_peer: tuple[CannedDaemon, str],
) -> None:
    peer, url = tcp_peer
    peer.routes[("POST", "/base/v1/events")] = [
        CREATED, (200, {"event_id": "01J0EVENT", "seq": 7, "duplicate": True}),
    ]
    client = Client(url=url + "/base/", token=TOKEN)
    assert client.emit("deploy.done").duplicate is False
    assert client.emit("deploy.done", idempotency_key="k").duplicate is True
    assert peer.requests[0]["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert peer.requests[0]["body"] == {"type": "deploy.done"}
    assert peer.requests[1]["body"] == {"type": "deploy.done", "idempotency_key": "k"}


def test_errors_map_to_palyra_error_without_the_token(tcp_peer: tuple[CannedDaemon, str]) -> None:
    peer, url = tcp_peer
    peer.routes[("POST", "/v1/events")] = [
        (401, {"error": "unauthorized", "message": "missing or unknown token"}),
        (400, {"error": "invalid_request", "message": "type: reserved prefix", "field": "type"}),
        (502, b"<html>Bad Gateway</html>"),
        (201, {"event_id": "01J0EVENT"}),
    ]
    client = Client(url=url, token=TOKEN)
    with pytest.raises(PalyraError) as caught:
        client.emit("deploy.done")
    assert (caught.value.status, caught.value.code) == (401, "unauthorized")
    assert TOKEN not in str(caught.value)
    with pytest.raises(PalyraError) as caught:
        client.emit("palyra.x")
    assert (caught.value.code, caught.value.field) == ("invalid_request", "type")
    assert caught.value.message == "type: reserved prefix"
    with pytest.raises(PalyraError) as caught:
        client.emit("deploy.done")
    assert (caught.value.status, caught.value.code) == (502, "http_error")
    assert "Bad Gateway" in caught.value.message
    with pytest.raises(PalyraError) as caught:
        client.emit("deploy.done")
    assert caught.value.code == "invalid_response"
    assert not isinstance(caught.value, PalyraUnreachable)


def test_unreachable_socket_and_port(state_dir: Path) -> None:
    with pytest.raises(PalyraUnreachable) as caught:
        Client(state_dir).emit("deploy.done")
    assert "the daemon is not running" in str(caught.value)
    assert (caught.value.status, caught.value.code) == (0, "unreachable")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens on this port now
    with pytest.raises(PalyraUnreachable):
        Client(url=f"http://127.0.0.1:{port}", token=TOKEN).emit("deploy.done")


def test_a_peer_that_never_answers_times_out() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # connections complete in the backlog but are never answered
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(PalyraUnreachable, match="within the timeout"):
            Client(url=url, token=TOKEN, timeout=0.2).emit("deploy.done")
    finally:
        silent.close()


# --- stream --------------------------------------------------------------------------------

SSE = [b": keepalive\n\nid: 8\nevent: deploy.done\ndata: {\"seq\": 8, \"kind\": \"deploy",
       b'.done"}\n\nid: 9\ndata: not json\n\nid: 10\ndata: {"seq": 10}\n\n']


def test_stream_yields_event_documents(tcp_peer: tuple[CannedDaemon, str]) -> None:
    peer, url = tcp_peer
    peer.routes[("GET", "/v1/events/stream")] = (200, SSE)
    events = list(Client(url=url, token=TOKEN).stream(["deploy.*", "ops.*"], after_seq=7,
                                                      source="ci"))
    assert events == [{"seq": 8, "kind": "deploy.done"}, {"seq": 10}]
    request = peer.requests[0]
    assert request["target"] == (
        "/v1/events/stream?type=deploy.%2A&type=ops.%2A&source=ci&after_seq=7"
    )
    assert request["headers"]["Accept"] == "text/event-stream"
    assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"


def test_stream_refusal_is_an_error(unix_peer: CannedDaemon) -> None:
    with pytest.raises(PalyraError) as caught:
        next(Client(unix_peer.state_dir).stream("deploy.*"))
    assert (caught.value.status, caught.value.code) == (404, "not_found")


# --- the asyncio client --------------------------------------------------------------------


async def test_async_emit_on_the_socket_and_over_tcp(
    unix_peer: CannedDaemon, tcp_peer: tuple[CannedDaemon, str]
) -> None:
    unix_peer.routes[("POST", "/v1/events")] = CREATED
    async with AsyncClient(unix_peer.state_dir) as local:
        result = await local.emit("deploy.done", {"n": 1}, idempotency_key="k")
    assert result == EmitResult("01J0EVENT", 7, False)
    assert unix_peer.requests[0]["body"] == {
        "type": "deploy.done", "data": {"n": 1}, "idempotency_key": "k",
    }
    assert "Authorization" not in unix_peer.requests[0]["headers"]
    peer, url = tcp_peer
    peer.routes[("POST", "/v1/events")] = [
        CREATED, (401, {"error": "unauthorized", "message": "unknown token"}),
    ]
    async with AsyncClient(url=url, token=TOKEN) as remote:
        assert (await remote.emit("deploy.done")).seq == 7
        with pytest.raises(PalyraError) as caught:
            await remote.emit("deploy.done")
    assert caught.value.code == "unauthorized"
    assert peer.requests[0]["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert json.loads(json.dumps(peer.requests[0]["body"])) == {"type": "deploy.done"}


async def test_async_stream_and_unreachable(
    state_dir: Path, tcp_peer: tuple[CannedDaemon, str]
) -> None:
    peer, url = tcp_peer
    peer.routes[("GET", "/v1/events/stream")] = (200, SSE)
    async with AsyncClient(url=url, token=TOKEN) as client:
        events = [event async for event in client.stream("deploy.*", after_seq=7)]
    assert events == [{"seq": 8, "kind": "deploy.done"}, {"seq": 10}]
    path, _, query = peer.requests[0]["target"].partition("?")
    assert (path, parse_qsl(query)) == (
        "/v1/events/stream", [("type", "deploy.*"), ("after_seq", "7")]
    )
    async with AsyncClient(state_dir) as missing:
        with pytest.raises(PalyraUnreachable, match="the daemon is not running"):
            await missing.emit("deploy.done")
