"""One error hierarchy for both Unix-socket clients: the CLI's admin client
(``clients.admin.AdminClient``) and the public Python client (``palyra_py.client``) raise the
same classes, with the same fields, for the same failures."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import palyra_py.client
from palyra_py.client import ApiError, AsyncClient, Client, PalyraError, PalyraUnreachable
from palyra_py.clients import errors
from palyra_py.clients.admin import AdminClient
from tests.test_cli_offline import CannedDaemon, canned_handler

Call = Callable[[Path, float], object]


def _admin(state_dir: Path, timeout: float) -> object:
    return AdminClient(state_dir, timeout=timeout).request("POST", "/v1/events", body={})


def _client(state_dir: Path, timeout: float) -> object:
    return Client(state_dir, timeout=timeout).emit("deploy.done")


def _async_client(state_dir: Path, timeout: float) -> object:
    import asyncio

    async def emit() -> object:
        async with AsyncClient(state_dir, timeout=timeout) as client:
            return await client.emit("deploy.done")

    return asyncio.run(emit())


CLIENTS = pytest.mark.parametrize("call", [_admin, _client, _async_client],
                                  ids=["admin", "client", "async-client"])


def test_the_public_client_re_exports_the_one_hierarchy() -> None:
    assert palyra_py.client.PalyraError is errors.PalyraError
    assert palyra_py.client.PalyraUnreachable is errors.PalyraUnreachable
    assert palyra_py.client.ApiError is errors.ApiError
    assert issubclass(PalyraUnreachable, PalyraError) and issubclass(ApiError, PalyraError)
    assert not issubclass(ApiError, PalyraUnreachable)


@CLIENTS
def test_daemon_not_running(call: Call, state_dir: Path) -> None:
    with pytest.raises(PalyraUnreachable, match="the daemon is not running") as caught:
        call(state_dir, 1.0)
    assert caught.value.not_running
    assert (caught.value.status, caught.value.code) == (0, "unreachable")
    assert caught.value.where == str(state_dir / "palyra.sock")


@CLIENTS
def test_socket_refused(call: Call, state_dir: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(state_dir / "palyra.sock"))
    stale.close()  # the file stays; nothing listens on it
    with pytest.raises(PalyraUnreachable, match="the daemon is not running") as caught:
        call(state_dir, 1.0)
    assert caught.value.not_running


@CLIENTS
def test_timeout(call: Call, state_dir: Path) -> None:
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(str(state_dir / "palyra.sock"))
    silent.listen()  # connections complete in the backlog but are never answered
    try:
        with pytest.raises(PalyraUnreachable) as caught:
            call(state_dir, 0.2)
    finally:
        silent.close()
    assert not caught.value.not_running
    assert (caught.value.status, caught.value.code) == (0, "unreachable")


@pytest.fixture
def refusing_daemon(state_dir: Path) -> Iterator[CannedDaemon]:
    peer = CannedDaemon(state_dir)
    refusal = (422, {"error": "invalid_request", "message": "type: reserved prefix",
                     "field": "type"})
    peer.routes[("POST", "/v1/events")] = refusal
    server = socketserver.ThreadingUnixStreamServer(
        str(state_dir / "palyra.sock"), canned_handler(peer)
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield peer
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@CLIENTS
def test_api_error_with_a_reason_code(call: Call, refusing_daemon: CannedDaemon) -> None:
    with pytest.raises(ApiError) as caught:
        call(refusing_daemon.state_dir, 5.0)
    error = caught.value
    assert (error.status, error.code, error.field) == (422, "invalid_request", "type")
    assert error.message == "type: reserved prefix"
    assert str(error) == "invalid_request: type: reserved prefix"
    assert error.body["error"] == "invalid_request"
    assert not isinstance(error, PalyraUnreachable)
