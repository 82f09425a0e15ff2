"""The ingress listener's bounds on the real daemon: past ``ingress.max_connections`` a new
connection is answered 503 ``too_many_connections`` and closed; one address past
``ingress.max_connections_per_source`` is answered 503 ``too_many_source_connections`` while
others are served; live streams leave the pool (``stream.max_clients`` bounds them); a
request head past ``ingress.max_head_bytes`` is answered 431 ``head_too_large``; a
connection with no request in progress (silent, or its head never finished) is closed after
``ingress.idle_timeout_s``; a flood of rejections logs one line per rejection window."""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from palyra_py.inbound.listener import source_key
from palyra_py.providers import get_provider
from palyra_py.server.daemon import Daemon
from palyra_py.server.fd_limits import RESERVE_FDS, FdLimitError, plan_fds
from palyra_py.testing import MemoryKeyring, running_daemon
from tests.daemon_process import DaemonProcess, child_env
from tests.fault_helpers import admin_session
from tests.helpers import add_integration, create_token, send_signed
from tests.raw_http import RawConnection, request_bytes

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: palyra\r\n\r\n"
SECRET = "It's a Secret to Everybody"  # add_integration's


@pytest.fixture
async def capped(state_dir: Path, memory_keyring: MemoryKeyring) -> AsyncIterator[Daemon]:
    async with running_daemon(state_dir, keyring=memory_keyring, ingress__max_connections=3,
                              ingress__idle_timeout_s=1, ingress__retry_after_s=7) as d:
        yield d


async def connect(daemon: Daemon, source: str | None = None) -> Conn:
    """A connection to the ingress from ``source`` (a loopback address: 127.0.0.2 is a
    second sender on the same machine)."""
    conn = await RawConnection.tcp(daemon.ingress_port, source=source)
    return conn.reader, conn.writer


async def healthy(conn: Conn) -> None:
    """One keep-alive request on ``conn``, answered 200: the connection is open and counted."""
    reader, writer = conn
    writer.write(HEALTHZ)
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    await reader.readexactly(length)


async def closed_by_server(conn: Conn) -> bytes:
    """Everything the server sends until it closes the connection (bounded wait)."""
    async with asyncio.timeout(10):
        return await conn[0].read()


async def test_past_the_cap_a_connection_is_answered_503_and_closed(capped: Daemon) -> None:
    held = [await connect(capped) for _ in range(3)]
    for conn in held:
        await healthy(conn)
    assert capped.connections.open == 3
    async with admin_session(capped.socket_path) as admin, admin.get("/v1/status") as resp:
        ingress = (await resp.json())["ingress"]
    assert (ingress["connections"], ingress["max_connections"]) == (3, 3)

    refused = await connect(capped)
    head, body = refusal_of(await closed_by_server(refused))
    assert head.startswith(b"HTTP/1.1 503 ")
    assert b"\r\nRetry-After: 7\r\n" in head
    assert body["error"] == "too_many_connections"
    assert capped.connections.refused == 1
    assert capped.ingress.stats.by_reason["too_many_connections"] == 1

    # One closes: the next connection is served again.
    held.pop()[1].close()
    async with asyncio.timeout(10):
        while capped.connections.open > 2:
            await asyncio.sleep(0.01)
    again = await connect(capped)
    await healthy(again)
    for conn in [*held, again]:
        conn[1].close()


async def test_idle_connections_and_unfinished_heads_are_closed(capped: Daemon) -> None:
    silent = await connect(capped)
    partial = await connect(capped)
    partial[1].write(b"POST /hooks/gh HTTP/1.1\r\nHost: palyra\r\nX-Slow: ")
    served = await connect(capped)
    await healthy(served)  # then idle between requests

    for conn in (silent, partial, served):
        assert await closed_by_server(conn) == b""
    async with asyncio.timeout(10):
        while capped.connections.open:
            await asyncio.sleep(0.01)
    fresh = await connect(capped)
    await healthy(fresh)
    fresh[1].close()


async def test_a_flood_of_rejections_logs_one_line_per_window(
    state_dir: Path, memory_keyring: MemoryKeyring
) -> None:
    async with running_daemon(state_dir, keyring=memory_keyring,
                              ingress__rejection_window_s=3600) as d:  # the test flushes
        url = f"http://127.0.0.1:{d.ingress_port}/hooks/nobody"
        with capture_logs() as logs:
            async with aiohttp.ClientSession() as http:
                for _ in range(20):
                    async with http.post(url, data=b"{}") as resp:
                        assert resp.status == 404
                await d.rejections.flush(d.journal)
                async with http.post(url, data=b"{}") as resp:  # a new window
                    assert resp.status == 404
        info = [(e["event"], e.get("count")) for e in logs if e.get("log_level") == "info"
                and e["event"] in ("webhook_rejected", "webhook_rejections")]
        assert info == [("webhook_rejected", None), ("webhook_rejections", 20),
                        ("webhook_rejected", None)]


def refusal_of(raw: bytes) -> tuple[bytes, dict[str, str]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, json.loads(body)


async def test_one_address_over_its_share_is_refused_while_another_is_served(
    state_dir: Path, memory_keyring: MemoryKeyring
) -> None:
    async with running_daemon(state_dir, keyring=memory_keyring, ingress__max_connections=10,
                              ingress__max_connections_per_source=2,
                              ingress__retry_after_s=7) as d:
        held = [await connect(d) for _ in range(2)]
        for conn in held:
            await healthy(conn)
        assert d.connections.by_source == {"127.0.0.1": 2}

        head, body = refusal_of(await closed_by_server(await connect(d)))
        assert head.startswith(b"HTTP/1.1 503 ") and b"\r\nRetry-After: 7\r\n" in head
        assert body["error"] == "too_many_source_connections"
        assert d.ingress.stats.by_reason["too_many_source_connections"] == 1

        other = await connect(d, "127.0.0.2")  # another sender: still served
        await healthy(other)
        assert d.connections.by_source == {"127.0.0.1": 2, "127.0.0.2": 1}
        assert d.connections.open == 3
        for conn in [*held, other]:
            conn[1].close()


def test_sources_are_grouped_by_address_and_ipv6_by_64() -> None:
    assert source_key(("192.0.2.7", 4711)) == "192.0.2.7"
    assert source_key(("2001:db8:1:2:aaaa::1", 1, 0, 0)) == source_key(
        ("2001:db8:1:2:ffff:1:2:3", 2, 0, 0)) == "2001:db8:1:2::/64"
    assert source_key(("2001:db8:1:3::1", 1, 0, 0)) != source_key(("2001:db8:1:2::1", 1, 0, 0))
    assert source_key(("::ffff:192.0.2.7", 1, 0, 0)) == "192.0.2.7"
    assert source_key(("fe80::1%eth0", 1, 0, 2)) == "fe80::/64"
    assert source_key("") == source_key(None) == ""


async def test_streams_have_their_own_cap_and_webhooks_keep_their_slots(
    state_dir: Path, memory_keyring: MemoryKeyring
) -> None:
    async with running_daemon(state_dir, keyring=memory_keyring, ingress__max_connections=2,
                              stream__max_clients=2) as d:
        async with admin_session(d.socket_path) as admin:
            await add_integration(admin, "gh")
            auth = (await create_token(admin, "watcher", scopes=["read"])).bearer
            base = d.ingress_url_for("gh", local=True).rsplit("/hooks", 1)[0]
            async with aiohttp.ClientSession() as streams, aiohttp.ClientSession() as http:
                opened = []
                for _ in range(2):  # the stream cap, filled over the ingress listener
                    resp = await streams.get(f"{base}/v1/events/stream", headers=auth)
                    assert resp.status == 200
                    assert await resp.content.readline() == b": palyra event stream\n"
                    opened.append(resp)
                assert (d.connections.streams, d.connections.open) == (2, 0)
                async with http.get(f"{base}/v1/events/stream", headers=auth) as resp:
                    assert resp.status == 503
                    assert (await resp.json())["error"] == "too_many_streams"

                status, body, _ = await send_signed(http, d, "gh", b'{"zen": "ok"}')
                assert (status, body["status"]) == (202, "accepted")
                async with admin.get("/v1/status") as resp:
                    ingress = (await resp.json())["ingress"]
                assert ingress["streams"] == 2 and ingress["max_connections"] == 2
                for resp in opened:
                    resp.close()


async def test_a_head_past_max_head_bytes_is_answered_431_and_closed(
    state_dir: Path, memory_keyring: MemoryKeyring
) -> None:
    async with running_daemon(state_dir, keyring=memory_keyring,
                              ingress__max_head_bytes=4096) as d:
        conn = await RawConnection.tcp(d.ingress_port)
        await conn.send(b"POST /hooks/gh HTTP/1.1\r\nHost: palyra\r\n")
        for _ in range(8):  # 8 KB of header lines, never the blank line that ends the head
            await conn.send(b"X-Pad: " + b"p" * 1000 + b"\r\n")
        resp = await conn.response()
        assert (resp.status, resp.json()["error"]) == (431, "head_too_large")
        assert resp.headers["connection"] == "close"
        assert await conn.closed_by_peer()
        assert d.ingress.stats.by_reason["head_too_large"] == 1
        await conn.close()


async def test_bodies_are_not_head_and_each_head_is_counted_afresh(
    state_dir: Path, memory_keyring: MemoryKeyring
) -> None:
    async with running_daemon(state_dir, keyring=memory_keyring,
                              ingress__max_head_bytes=4096) as d:
        async with admin_session(d.socket_path) as admin:
            await add_integration(admin, "gh", max_payload_bytes=64 * 1024)

        def gh_headers(body: bytes, *extra: tuple[str, str]) -> list[tuple[str, str]]:
            signed = get_provider("github").sign(body, SECRET, d.clock(), "push",
                                                 uuid.uuid4().hex)
            return [*signed.headers.items(), *extra]

        pad = ("X-Pad", "p" * 2500)  # each head well over half the limit
        # Ten times the head limit each; distinct, since one signed body is a replay.
        bodies = [b'{"n": %d, "blob": "' % n + b"b" * 40_000 + b'"}' for n in range(4)]
        pipelined = b"".join(request_bytes("POST", "/hooks/gh", gh_headers(body, pad), body)
                             for body in bodies[:3])
        body = bodies[3]
        chunked_body = b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
        pipelined += request_bytes("POST", "/hooks/gh", [
            *gh_headers(body, pad), ("Transfer-Encoding", "chunked")], chunked_body)
        pipelined += request_bytes("GET", "/healthz", [pad])
        conn = await RawConnection.tcp(d.ingress_port)
        await conn.send(pipelined)  # one write: heads and bodies arrive in the same reads
        statuses = [(await conn.response()).status for _ in range(5)]
        assert statuses == [202, 202, 202, 202, 200]
        # A head that never ends behind a request still being answered is bounded too: the
        # request is answered, then the connection closes.
        await conn.send(request_bytes("GET", "/healthz") + b"GET /healthz HTTP/1.1\r\n"
                        + b"X-Pad: " + b"p" * 5000 + b"\r\n")
        assert (await conn.response()).status == 200
        assert await conn.closed_by_peer()
        assert d.ingress.stats.by_reason["head_too_large"] == 1
        await conn.close()


async def test_what_a_stream_client_sends_once_streaming_is_dropped(
    state_dir: Path, memory_keyring: MemoryKeyring
) -> None:
    async with running_daemon(state_dir, keyring=memory_keyring,
                              ingress__max_head_bytes=4096) as d:
        async with admin_session(d.socket_path) as admin:
            token = (await create_token(admin, "watcher", scopes=["read"])).secret
            conn = await RawConnection.tcp(d.ingress_port)
            await conn.send(request_bytes("GET", "/v1/events/stream?type=app.*",
                                          [("Authorization", f"Bearer {token}")]))
            async with asyncio.timeout(10):
                await conn.reader.readuntil(b": palyra event stream\n\n")
            await conn.send(b"X-Junk: " + b"j" * 100_000)  # no head of any request: dropped
            async with admin.post("/v1/events", json={"type": "app.after"}) as resp:
                assert resp.status == 201
            async with asyncio.timeout(10):
                await conn.reader.readuntil(b"event: app.after\n")
            assert "head_too_large" not in d.ingress.stats.by_reason
            assert d.connections.streams == 1
            await conn.close()


def open_file_limit(n: int) -> Callable[[], None]:
    """A preexec_fn: the child's soft and hard RLIMIT_NOFILE are ``n`` (as a systemd unit's
    LimitNOFILE=n would make them); it cannot raise them."""
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    return apply


def test_the_caps_shrink_in_proportion_to_what_the_limit_holds() -> None:
    roomy = plan_fds(8192, None, max_connections=1024, max_streams=2000, outbound=256)
    assert (roomy.max_connections, roomy.max_streams, roomy.lowered) == (1024, 2000, False)
    assert roomy.needed == 1024 + 2000 + 256 + RESERVE_FDS
    tight = plan_fds(1024, 1024, max_connections=1024, max_streams=2000, outbound=256)
    assert tight.lowered and tight.max_connections + tight.max_streams == 1024 - 256 - 64
    assert tight.max_connections == 704 * 1024 // 3024
    with pytest.raises(FdLimitError, match="LimitNOFILE"):
        plan_fds(256 + 64 + 1, 400, max_connections=1024, max_streams=2000, outbound=256)


async def test_a_low_open_file_limit_lowers_the_caps_and_admin_still_answers(
    state_dir: Path,
) -> None:
    """A real ``palyra daemon run`` under a hard RLIMIT_NOFILE of 400 (the defaults need
    3,344): it starts with caps the limit can hold, says so in its log and in status, and
    past the lowered cap senders get the documented 503 while the admin socket answers."""
    expected = plan_fds(400, 400, max_connections=1024, max_streams=2000, outbound=256)
    daemon = await DaemonProcess(state_dir, preexec_fn=open_file_limit(400)).start()
    held: list[Conn] = []
    try:
        (warning,) = [r for r in daemon.log if r.get("event") == "open_file_limit_lowers_caps"]
        assert warning["max_connections"] == expected.max_connections < 1024
        port = int(daemon.ingress.rsplit(":", 1)[1])
        for _ in range(expected.max_connections):
            conn = await asyncio.open_connection("127.0.0.1", port)
            await healthy(conn)
            held.append(conn)
        raw = await closed_by_server(await asyncio.open_connection("127.0.0.1", port))
        head, body = refusal_of(raw)
        assert head.startswith(b"HTTP/1.1 503 ") and body["error"] == "too_many_connections"
        async with admin_session(state_dir / "palyra.sock") as admin:
            async with admin.get("/v1/status") as resp:
                status = await resp.json()
        assert status["ingress"]["max_connections"] == expected.max_connections
        assert status["ingress"]["connections"] == expected.max_connections
        files = status["open_files"]
        assert (files["limit"], files["hard"], files["lowered"]) == (400, 400, True)
        assert "LimitNOFILE" in files["warning"] and files["needed"] == expected.needed
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "palyra_py", "daemon", "status", "--state-dir",
            str(state_dir), stdout=asyncio.subprocess.PIPE,
            env={**child_env(state_dir), "COLUMNS": "400"})
        out, _ = await asyncio.wait_for(cli.communicate(), 60)
        row = next(line for line in out.decode().splitlines() if "open files" in line)
        assert "ingress.max_connections lowered" in row and "LimitNOFILE" in row, row
    finally:
        for conn in held:
            conn[1].close()
        assert await daemon.stop() == 0


async def test_an_open_file_limit_that_holds_nothing_refuses_to_start(
    state_dir: Path,
) -> None:
    daemon = DaemonProcess(state_dir, preexec_fn=open_file_limit(300))
    with pytest.raises(RuntimeError, match="exited early"):
        await daemon.start()
    assert daemon.proc is not None and await daemon.proc.wait() == 1
    (refusal,) = [r for r in daemon.log if r.get("event") == "daemon_cannot_start"]
    assert "open-file limit is 300" in refusal["error"] and "LimitNOFILE" in refusal["error"]


async def test_a_read_with_a_whole_request_counts_the_next_heads_first_bytes(
    state_dir: Path, memory_keyring: MemoryKeyring
) -> None:
    # One read holds a whole request (head and body: one parser call) and the first 3,000
    # bytes of the next head; 2,000 more arrive later, never the blank line. Those first
    # bytes count: the second head is past the 4,096-byte limit.
    async with running_daemon(state_dir, keyring=memory_keyring,
                              ingress__max_head_bytes=4096) as d:
        async with admin_session(d.socket_path) as admin:
            await add_integration(admin, "gh")
        body = b'{"n": 1}'
        signed = get_provider("github").sign(body, SECRET, d.clock(), "push", uuid.uuid4().hex)
        first = request_bytes("POST", "/hooks/gh", list(signed.headers.items()), body)
        next_head = b"GET /healthz HTTP/1.1\r\nX-Pad: " + b"p" * 2970 + b"\r\n"
        conn = await RawConnection.tcp(d.ingress_port)
        await conn.send(first + next_head)
        assert (await conn.response()).status == 202
        await conn.send(b"X-More: " + b"m" * 2000 + b"\r\n")
        assert await conn.closed_by_peer()
        assert d.ingress.stats.by_reason["head_too_large"] == 1
        await conn.close()


async def test_whole_requests_one_per_read_are_each_counted_afresh(
    state_dir: Path, memory_keyring: MemoryKeyring
) -> None:
    # Request after request on one connection, each head and body in one write: each head
    # starts the count again, however long the bodies before it were.
    async with running_daemon(state_dir, keyring=memory_keyring,
                              ingress__max_head_bytes=4096) as d:
        async with admin_session(d.socket_path) as admin:
            await add_integration(admin, "gh")
        conn = await RawConnection.tcp(d.ingress_port)
        for n in range(5):
            body = b'{"n": %d, "blob": "%b"}' % (n, b"b" * 3500)
            signed = get_provider("github").sign(body, SECRET, d.clock(), "push",
                                                 uuid.uuid4().hex)
            headers = [*signed.headers.items(), ("X-Pad", "p" * 3000)]
            await conn.send(request_bytes("POST", "/hooks/gh", headers, body))
            assert (await conn.response()).status == 202
        assert "head_too_large" not in d.ingress.stats.by_reason
        await conn.close()
