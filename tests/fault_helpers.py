"""Faults for ``tests/test_faults.py``, made with real parts: a keyring backend that can be
switched to failing, a small tmpfs that fills up, a file size limit for a child process, a
second process holding a SQLite write lock, and raw TCP receivers that misbehave below HTTP
(an aiohttp server cannot reset a connection mid-body or stream an answer forever)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import resource
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from keyring.errors import KeyringLocked

from palyra_py.testing import MemoryKeyring, short_state_dir

# -- keyring ---------------------------------------------------------------------------


class FlakyKeyring(MemoryKeyring):
    """A real keyring backend (``MemoryKeyring``) whose every call raises ``KeyringLocked``
    while ``failing`` is set: an OS keyring that is locked, or whose D-Bus service died."""

    def __init__(self, *, failing: bool = False) -> None:
        super().__init__()
        self.failing = failing
        self.calls = 0

    def _check(self) -> None:
        self.calls += 1
        if self.failing:
            raise KeyringLocked("the keyring is unavailable (test fault)")

    def get_password(self, service: str, username: str) -> str | None:
        self._check()
        return super().get_password(service, username)

    def set_password(self, service: str, username: str, password: str) -> None:
        self._check()
        super().set_password(service, username, password)

    def delete_password(self, service: str, username: str) -> None:
        self._check()
        super().delete_password(service, username)


# -- disk ------------------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(size: str = "8m") -> Iterator[Path]:
    """A fresh tmpfs of ``size`` mounted on a short path; skips the test when mounting is
    not permitted (not root, no CAP_SYS_ADMIN, no ``mount``)."""
    path = short_state_dir("pt-fs-")
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
            capture_output=True, text=True, timeout=30, check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        shutil.rmtree(path, ignore_errors=True)
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if done.returncode != 0:
        shutil.rmtree(path, ignore_errors=True)
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
        shutil.rmtree(path, ignore_errors=True)


def fill_file_system(directory: Path) -> Path:
    """Write a filler file in ``directory`` until the file system answers ENOSPC; return it
    (remove it and the space is back)."""
    filler = directory / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (1 << 20, 1 << 16, 1 << 12):  # big steps, then page by page
            block = b"\0" * chunk
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return filler


def limit_file_size(max_bytes: int) -> Callable[[], None]:
    """A ``preexec_fn`` for a child: no file it writes may grow past ``max_bytes``. SIGXFSZ
    is ignored, so a write past the limit fails with EFBIG instead of killing the child."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return apply


# -- a second process holding a SQLite write lock --------------------------------------

_LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
conn.close()
"""


@contextlib.asynccontextmanager
async def write_lock_held_elsewhere(database: Path) -> AsyncIterator[None]:
    """Another process holds ``BEGIN EXCLUSIVE`` on ``database`` for the ``with`` body (in
    WAL mode: no other writer, readers go on), as a ``sqlite3`` shell or a backup tool
    would. Released, and the process gone, on exit."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _LOCKER, str(database),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        assert line == b"locked\n", f"the locker did not take the lock: {line!r}"
        yield
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ConnectionError):
                proc.stdin.write(b"release\n")
                await proc.stdin.drain()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def wait_out_the_busy_timeout(database: Path, seconds: float) -> None:
    """Return once ``database`` has stayed write-locked for ``seconds`` from now: a writer
    of our own waits that long for the lock and must give up. Whoever started waiting for
    the lock before this call, with a shorter busy timeout, has given up too."""

    def try_to_write() -> None:
        conn = sqlite3.connect(database, isolation_level=None, timeout=seconds)
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                conn.execute("BEGIN IMMEDIATE")
        finally:
            conn.close()

    await asyncio.to_thread(try_to_write)


# -- raw receivers ---------------------------------------------------------------------


@dataclass
class RawReceiver:
    """A TCP server on loopback that speaks just enough HTTP/1.1 to misbehave."""

    url: str = ""
    requests: int = 0
    bytes_sent: int = 0
    peer_closed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the client (the daemon) closed a connection this server was writing to."""


Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter, RawReceiver], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, int]:
    """The request head and its Content-Length (the daemon always sends one)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    return head, length


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the peer gets a TCP RST, not an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def reset_mid_request_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                 state: RawReceiver) -> None:
    _, length = await read_request(reader)
    await reader.readexactly(min(16, length))
    reset(writer)


async def hang_up_mid_response_body(reader: asyncio.StreamReader,
                                    writer: asyncio.StreamWriter, state: RawReceiver) -> None:
    """Answer 200 with a Content-Length of 100000, send 10 bytes of it, hang up (FIN)."""
    _, length = await read_request(reader)
    await reader.readexactly(length)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"partial...")
    await writer.drain()
    writer.close()


def endless_response(status: int) -> Behaviour:
    """Answer ``status`` with a chunked body that never ends (bounded at 256 MiB so that a
    broken client cannot keep the test busy forever)."""

    async def behave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     state: RawReceiver) -> None:
        _, length = await read_request(reader)
        await reader.readexactly(length)
        writer.write(f"HTTP/1.1 {status} Whatever\r\nTransfer-Encoding: chunked\r\n"
                     "Content-Type: text/plain\r\n\r\n".encode())
        chunk = b"1000\r\n" + b"y" * 0x1000 + b"\r\n"
        try:
            while state.bytes_sent < 256 << 20:
                writer.write(chunk)
                state.bytes_sent += 0x1000
                await writer.drain()
        except ConnectionError:
            state.peer_closed.set()

    return behave


async def stall_in_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           state: RawReceiver) -> None:
    """Start an answer and never finish its head; wait for the client to give up."""
    _, length = await read_request(reader)
    await reader.readexactly(length)
    writer.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    await writer.drain()
    if await reader.read(1) == b"":
        state.peer_closed.set()


@contextlib.asynccontextmanager
async def raw_receiver(behaviour: Behaviour) -> AsyncIterator[RawReceiver]:
    state = RawReceiver()
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        state.requests += 1
        try:
            await behaviour(reader, writer, state)
        except (ConnectionError, asyncio.IncompleteReadError):
            state.peer_closed.set()
        finally:
            handlers.discard(task)
            writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    state.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield state
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


# -- HTTP plumbing ---------------------------------------------------------------------


def admin_session(socket_path: Path) -> aiohttp.ClientSession:
    """A client on a daemon's admin socket (base URL ``http://admin``)."""
    return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket_path)),
                                 base_url="http://admin")


async def journaled_nonces(admin: aiohttp.ClientSession) -> list[str]:
    """The nonce (for a GitHub delivery id of 16+ characters: the id itself) of every
    ``webhook.received`` event, in seq order."""
    found: list[str] = []
    after = 0
    while True:
        async with admin.get("/v1/events", params={
            "type": "webhook.received", "after_seq": str(after), "limit": "1000",
        }) as resp:
            page = await resp.json()
            assert resp.status == 200, page
        found += [e["payload"]["replay_protection"]["nonce"] for e in page["events"]]
        if page["next_after_seq"] is None:
            return found
        after = page["next_after_seq"]


async def verify(admin: aiohttp.ClientSession) -> dict[str, Any]:
    """``POST /v1/journal/verify``'s answer (which must be a 200)."""
    async with admin.post("/v1/journal/verify") as resp:
        verdict: dict[str, Any] = await resp.json()
        assert resp.status == 200, verdict
        return verdict


async def publish(admin: aiohttp.ClientSession, type_: str, **data: Any) -> tuple[int, Any]:
    """``POST /v1/events``: its status and body, whatever they are."""
    async with admin.post("/v1/events", json={"type": type_, "data": data}) as resp:
        return resp.status, await resp.json()


async def subscribe(admin: aiohttp.ClientSession, sid: str, url: str,
                    **fields: Any) -> dict[str, Any]:
    async with admin.post("/v1/subscriptions",
                          json={"subscription_id": sid, "url": url, **fields}) as resp:
        answer: dict[str, Any] = await resp.json()
        assert resp.status == 201, answer
        return answer
