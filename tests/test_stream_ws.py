"""The journal stream over a WebSocket (GET /v1/events/ws, palyra_py.stream.ws): a real
aiohttp WebSocket client against the real daemon, on the TCP listener with tokens and on
the admin socket, on SQLite and on PostgreSQL (tests/pg.py: the bus there is
LISTEN/NOTIFY). The same filters, resume by seq, token scopes and caps as the SSE stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from palyra_py.events import EventFilter, NewEvent
from palyra_py.server.daemon import Daemon
from palyra_py.testing import ManualClock, MemoryKeyring, running_daemon
from tests.fault_helpers import admin_session
from tests.helpers import add_integration, create_token, send_signed
from tests.pg import PgServer

PUSH = json.dumps({"ref": "refs/heads/main"}).encode()
BLOB = "x" * 4000


def ws_url(daemon: Daemon) -> str:
    return daemon.ingress_url_for("x", local=True).rsplit("/hooks", 1)[0] + "/v1/events/ws"


async def publish(admin: aiohttp.ClientSession, type_: str, **data: Any) -> int:
    async with admin.post("/v1/events", json={"type": type_, "data": data}) as resp:
        answer = await resp.json()
        assert resp.status == 201, answer
        return int(answer["seq"])


async def message(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    got = await asyncio.wait_for(ws.receive(), 10)
    assert got.type is aiohttp.WSMsgType.TEXT, got
    decoded: dict[str, Any] = json.loads(got.data)
    return decoded


async def events_until(ws: aiohttp.ClientWebSocketResponse, seq: int) -> list[dict[str, Any]]:
    """The ``event`` messages up to the one with ``seq``."""
    got: list[dict[str, Any]] = []
    while not got or got[-1]["seq"] < seq:
        msg = await message(ws)
        assert msg["type"] == "event", msg
        got.append(msg["event"])
    return got


@pytest.fixture(params=["sqlite", "postgres"])
async def engine_daemon(request: pytest.FixtureRequest, state_dir: Path
                        ) -> AsyncIterator[Daemon]:
    """The daemon on each storage engine (the stream's bus differs: in-process on SQLite,
    LISTEN/NOTIFY on PostgreSQL)."""
    settings: dict[str, Any] = {"stream__max_per_token": 2}
    if request.param == "postgres":
        pg: PgServer = request.getfixturevalue("pg_server")
        settings |= {"storage__backend": "postgres",
                     "storage__dsn": pg.new_database("ws")}
    async with running_daemon(state_dir, clock=ManualClock(), keyring=MemoryKeyring(),
                              **settings) as daemon:
        yield daemon


async def test_a_websocket_follows_the_journal_with_filters_resume_and_the_tokens_scope(
    engine_daemon: Daemon, http: aiohttp.ClientSession,
) -> None:
    daemon = engine_daemon
    async with admin_session(daemon.socket_path) as admin:
        await add_integration(admin, "gh-main")
        before = await publish(admin, "entry.created", n=1)
        await publish(admin, "deploy.done")
        _, reader = await create_token(admin, "reader", scopes=["read"])
        # From the journal (after_seq=0), then live: only entry.*, each once, in seq order.
        async with http.ws_connect(ws_url(daemon), headers=reader,
                                   params=[("type", "entry.*"), ("after_seq", "0")]) as ws:
            assert await message(ws) == {"type": "open", "after_seq": 0}
            assert [e["seq"] for e in await events_until(ws, before)] == [before]
            # A received webhook is outside a bare read scope: it never reaches the stream.
            assert (await send_signed(http, daemon, "gh-main", PUSH))[0] == 202
            await publish(admin, "deploy.done")
            live = await publish(admin, "entry.updated", n=2)
            got = await events_until(ws, live)
            assert [(e["kind"], e["payload"]["data"]) for e in got] == [
                ("entry.updated", {"n": 2})]
        # Resume where it stopped: after_seq is the last seq seen.
        later = await publish(admin, "entry.deleted")
        async with http.ws_connect(ws_url(daemon), headers=reader,
                                   params={"type": "entry.*", "after_seq": str(live)}) as ws:
            assert (await message(ws))["after_seq"] == live
            assert [e["kind"] for e in await events_until(ws, later)] == ["entry.deleted"]
        # Without after_seq the stream starts at the head: only what comes next.
        async with http.ws_connect(ws_url(daemon), headers=reader) as ws:
            assert (await message(ws))["after_seq"] == later
            nxt = await publish(admin, "entry.again")
            assert [e["seq"] for e in await events_until(ws, nxt)] == [nxt]


async def test_tokens_scopes_and_caps_apply_to_the_websocket(
    engine_daemon: Daemon, http: aiohttp.ClientSession,
) -> None:
    daemon = engine_daemon
    async with admin_session(daemon.socket_path) as admin:
        _, publisher = await create_token(admin, "app", scopes=["publish:entry.*"])
        _, reader = await create_token(admin, "reader", scopes=["read"])
    for headers, status in (({}, 401), (publisher, 403)):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(ws_url(daemon), headers=headers)
        assert refused.value.status == status
    # stream.max_per_token = 2: a third stream of the same token is 429 until one closes.
    first = await http.ws_connect(ws_url(daemon), headers=reader)
    async with http.ws_connect(ws_url(daemon), headers=reader):
        with pytest.raises(aiohttp.WSServerHandshakeError) as capped:
            await http.ws_connect(ws_url(daemon), headers=reader)
        assert capped.value.status == 429
        await first.close()
        await asyncio.wait_for(_owned_below(daemon, reader_owner(daemon), 2), 10)
        async with http.ws_connect(ws_url(daemon), headers=reader) as again:
            assert (await message(again))["type"] == "open"
    # A plain GET (no upgrade) is told where the SSE stream is; a bad cursor is a 400.
    async with http.get(ws_url(daemon), headers=reader) as resp:
        answer = await resp.json()
        assert (resp.status, answer["error"]) == (400, "invalid_request")
        assert "/v1/events/stream" in answer["message"]
    with pytest.raises(aiohttp.WSServerHandshakeError) as bad:
        await http.ws_connect(ws_url(daemon), headers=reader, params={"after_seq": "-1"})
    assert bad.value.status == 400


def reader_owner(daemon: Daemon) -> str:
    (token,) = [t for t in daemon.registry.tokens.values() if t.name == "reader"]
    return f"token:{token.token_id}"


async def _owned_below(daemon: Daemon, owner: str, limit: int) -> None:
    # The server notices the close in its own task: wait for the hub to count it, on the
    # hub's state (no timer decides).
    while daemon.stream_hub.owned(owner) >= limit:
        await asyncio.sleep(0.01)


async def test_a_client_that_stops_reading_gets_overflow_and_close_1013(
    state_dir: Path,
) -> None:
    async with running_daemon(state_dir, clock=ManualClock(), keyring=MemoryKeyring(),
                              stream__buffer_events=10) as daemon:
        hub = daemon.stream_hub
        # A small read buffer: the client's socket backs up as soon as it stops reading.
        connector = aiohttp.UnixConnector(path=str(daemon.socket_path))
        async with aiohttp.ClientSession(connector=connector, read_bufsize=4096) as slow, \
                slow.ws_connect("http://admin/v1/events/ws") as ws, \
                hub.subscribe(EventFilter(), after_seq=await daemon.journal.last_seq()) as probe:
            assert (await message(ws))["type"] == "open"
            last = 0
            for _ in range(500):  # socket buffers differ between machines
                for _ in range(10):
                    last = (await daemon.journal.append(NewEvent(
                        kind="app.tick", source="test", payload={"blob": BLOB}))).seq
                for _ in range(10):
                    assert await probe.next(timeout=10) is not None  # the pass is done
                if hub.overflows:
                    break
            assert hub.overflows == 1
            # Reading again: events in seq order, then the overflow note, then close 1013.
            seqs: list[int] = []
            while True:
                msg = await message(ws)
                if msg["type"] != "event":
                    break
                seqs.append(msg["event"]["seq"])
            assert msg["type"] == "overflow" and msg["last_seq"] == seqs[-1] < last
            assert "fell 10 events behind" in msg["reason"]
            assert seqs == list(range(seqs[0], seqs[-1] + 1))
            closing = await asyncio.wait_for(ws.receive(), 10)
            assert closing.type is aiohttp.WSMsgType.CLOSE and ws.close_code == 1013


async def test_stopping_the_daemon_closes_websockets_with_1001(state_dir: Path) -> None:
    async with running_daemon(state_dir, clock=ManualClock(), keyring=MemoryKeyring()) as daemon:
        connector = aiohttp.UnixConnector(path=str(daemon.socket_path))
        async with aiohttp.ClientSession(connector=connector) as session, \
                session.ws_connect("http://admin/v1/events/ws") as ws:
            assert (await message(ws))["type"] == "open"
            stopping = asyncio.create_task(daemon.stop())
            closing = await asyncio.wait_for(ws.receive(), 10)
            assert closing.type is aiohttp.WSMsgType.CLOSE and ws.close_code == 1001
            await asyncio.wait_for(stopping, 10)
        assert daemon.streams == set()
