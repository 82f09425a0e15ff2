"""SSE written by the hub (palyra_py.stream.sse): a real StreamHub on a real journal behind a
real aiohttp server, and the real daemon on its admin socket. No test waits on a timer to
know that something happened: a probe Feed on the same hub says when a pass is done (every
group is fed in the same synchronous step), the handler says when a stream ended."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from palyra_py.bus.local import SeqBus
from palyra_py.journal.journal import EventFilter, Journal, NewEvent
from palyra_py.server.daemon import Daemon
from palyra_py.stream.hub import Feed, StreamHub
from palyra_py.stream.sse import SseClient
from palyra_py.testing import ManualClock, MemoryKeyring, running_daemon

BLOB = "x" * 4000


async def append(journal: Journal, n: int, kind: str = "app.tick", blob: str = "") -> int:
    seq = 0
    for i in range(n):
        seq = (await journal.append(NewEvent(kind=kind, source="test",
                                             payload={"i": i, "blob": blob}))).seq
    return seq


@dataclass
class Endpoint:
    """An SSE route that serves through ``hub`` as the daemon does, and tells the test when
    a stream joined (its ``SseClient``) and when its handler is done."""

    hub: StreamHub
    heartbeat_s: float = 15.0
    go: asyncio.Event = field(default_factory=asyncio.Event)
    joined: asyncio.Queue[SseClient] = field(default_factory=asyncio.Queue)
    ended: asyncio.Queue[SseClient] = field(default_factory=asyncio.Queue)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)  # cancelled at the end, as the daemon does with open streams
        flt = EventFilter(types=tuple(request.query.getall("type", [])))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        async with self.hub.open_sse(flt, int(request.query.get("after_seq", "0"))) as client:
            await response.prepare(request)
            await response.write(b": joined\n\n")
            self.joined.put_nowait(client)
            await self.go.wait()
            await client.serve(response, request.transport, self.heartbeat_s)
        self.ended.put_nowait(client)
        return response


@contextlib.asynccontextmanager
async def served(hub: StreamHub, *, go: bool = True,
                 heartbeat_s: float = 15.0) -> AsyncIterator[tuple[Endpoint, str]]:
    """``hub`` running, and ``/stream`` on 127.0.0.1, served as the daemon serves its admin
    API (aiohttp's defaults: a handler is not cancelled when its client goes away)."""
    endpoint = Endpoint(hub, heartbeat_s)
    if go:
        endpoint.go.set()
    app = web.Application()
    app.router.add_get("/stream", endpoint.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    reader = asyncio.create_task(hub.run())
    try:
        yield endpoint, f"http://127.0.0.1:{port}/stream"
    finally:
        for task in [reader, *endpoint.tasks]:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await runner.cleanup()


async def read_frames(resp: aiohttp.ClientResponse, until_seq: int) -> list[dict[str, str]]:
    """Frames (comments left out) up to the one with ``id`` ``until_seq`` or the stream's
    end."""
    frames: list[dict[str, str]] = []
    frame: dict[str, str] = {}
    async with asyncio.timeout(20):
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(": ")
                frame[name] = value
                continue
            if frame:
                frames.append(frame)
                if frame.get("id") == str(until_seq):
                    break
                frame = {}
    return frames


def ids(frames: list[dict[str, str]]) -> list[int]:
    return [int(f["id"]) for f in frames if "id" in f]


async def pass_done(probe: Feed, n: int) -> None:
    for _ in range(n):
        assert await probe.next(timeout=10) is not None


# -- the hub and its clients ----------------------------------------------------------------


async def test_backlog_from_the_journal_then_held_then_live_without_gap_or_repeat(
    parts: tuple[Journal, SeqBus],
) -> None:
    journal, bus = parts
    await append(journal, 30)
    hub = StreamHub(journal, bus)
    async with served(hub, go=False) as (endpoint, url), \
            hub.subscribe(EventFilter(), after_seq=30) as probe, \
            aiohttp.ClientSession() as http, \
            http.get(url, params={"after_seq": "5"}) as resp:
        client = await endpoint.joined.get()
        # Events that come while the stream has not even started its catch-up are held.
        await append(journal, 10)
        await pass_done(probe, 10)
        assert client.backlog == 10
        endpoint.go.set()
        first = await read_frames(resp, until_seq=40)
        assert client.backlog == 0
        await append(journal, 5)  # now caught up: written by the hub itself
        then = await read_frames(resp, until_seq=45)
    assert ids(first) + ids(then) == list(range(6, 46))
    assert all(json.loads(f["data"])["seq"] == int(f["id"]) for f in first + then)


async def test_a_cursor_ahead_of_the_head_skips_the_events_up_to_it(
    parts: tuple[Journal, SeqBus],
) -> None:
    journal, bus = parts
    await append(journal, 3)
    hub = StreamHub(journal, bus)
    async with served(hub) as (endpoint, url), aiohttp.ClientSession() as http, \
            http.get(url, params={"after_seq": "6"}) as resp:
        await endpoint.joined.get()
        await append(journal, 5)  # seqs 4 to 8
        frames = await read_frames(resp, until_seq=8)
    assert ids(frames) == [7, 8]


async def test_clients_with_one_filter_share_a_group_and_filters_still_apply(
    parts: tuple[Journal, SeqBus],
) -> None:
    journal, bus = parts
    hub = StreamHub(journal, bus)
    queries: list[dict[str, str]] = [{"type": "a.*"}] * 6 + [{"type": "b.*"}] * 2 + [{}]
    async with served(hub) as (endpoint, url), \
            hub.subscribe(EventFilter(), after_seq=0) as probe, \
            aiohttp.ClientSession() as http, contextlib.AsyncExitStack() as stack:
        streams = [await stack.enter_async_context(http.get(url, params=q)) for q in queries]
        for _ in streams:
            await endpoint.joined.get()
        assert hub.groups == 3  # a.*, b.*, and everything (the last client and the probe)
        for kind in ("a.one", "b.one", "c.one", "a.two", "b.two", "a.three"):
            await append(journal, 1, kind)
        await pass_done(probe, 6)
        # The last event each filter lets through: a.three is seq 6, b.two seq 5.
        until = {"a.*": 6, "b.*": 5}
        got = [await read_frames(s, until_seq=until.get(q.get("type", ""), 6))
               for s, q in zip(streams, queries, strict=True)]
    kinds = [[f["event"] for f in frames] for frames in got]
    assert kinds[:6] == [["a.one", "a.two", "a.three"]] * 6
    assert kinds[6:8] == [["b.one", "b.two"]] * 2
    assert kinds[8] == ["a.one", "b.one", "c.one", "a.two", "b.two", "a.three"]


async def fill_until(journal: Journal, probe: Feed, done: Callable[[], bool]) -> int:
    """Append big events ten at a time, each batch through a hub pass, until ``done()``
    (at most 5,000: socket buffers differ between machines); return the last seq."""
    last = 0
    for _ in range(500):
        last = await append(journal, 10, blob=BLOB)
        await pass_done(probe, 10)
        if done():
            break
    return last


async def test_a_client_behind_its_socket_is_written_from_its_backlog_then_live_again(
    parts: tuple[Journal, SeqBus],
) -> None:
    journal, bus = parts
    hub = StreamHub(journal, bus, buffer=5000)
    # A small read buffer: the client's socket backs up as soon as the test stops reading.
    async with served(hub) as (endpoint, url), \
            hub.subscribe(EventFilter(), after_seq=0) as probe, \
            aiohttp.ClientSession(read_bufsize=4096) as http, http.get(url) as resp:
        client = await endpoint.joined.get()
        last = await fill_until(journal, probe, lambda: client.backlog > 0)
        assert client.backlog, "the socket never backed up"
        # Read again while events keep coming: whatever the hub gets meanwhile must queue
        # behind the backlog, not overtake it.
        reading = asyncio.create_task(read_frames(resp, until_seq=last + 20))
        for _ in range(20):
            await append(journal, 1, blob=BLOB)
            await pass_done(probe, 1)
        frames = await reading
        assert ids(frames) == list(range(1, last + 21))
        assert client.backlog == 0
        last += 20
        more = await append(journal, 1)
        assert ids(await read_frames(resp, until_seq=more)) == [more]
    assert hub.overflows == 0


async def test_a_backlog_past_the_buffer_ends_the_stream_with_overflow(
    parts: tuple[Journal, SeqBus],
) -> None:
    journal, bus = parts
    hub = StreamHub(journal, bus, buffer=20)
    async with served(hub) as (endpoint, url), \
            hub.subscribe(EventFilter(), after_seq=0) as probe, \
            aiohttp.ClientSession(read_bufsize=4096) as http, \
            http.get(url, params={"type": "app.*"}) as resp:
        client = await endpoint.joined.get()
        assert hub.groups == 2
        await fill_until(journal, probe, lambda: hub.overflows > 0)
        assert hub.overflows == 1 and client.overflowed and client.backlog == 0
        assert hub.groups == 1  # the probe's: the overflowed client is fed no more
        later = await append(journal, 5, blob=BLOB)
        await pass_done(probe, 5)
        frames = await read_frames(resp, until_seq=-1)  # to the end of the stream
        assert await endpoint.ended.get() is client
        assert hub.clients == 1  # the probe
    delivered = ids(frames)
    assert delivered == list(range(1, len(delivered) + 1)) and delivered[-1] < later
    assert frames[-1]["event"] == "stream.overflow"
    note = json.loads(frames[-1]["data"])
    assert note["last_seq"] == delivered[-1] and "fell 20 events behind" in note["reason"]


async def test_heartbeats_go_out_when_nothing_else_does(
    parts: tuple[Journal, SeqBus],
) -> None:
    journal, bus = parts
    hub = StreamHub(journal, bus)
    async with served(hub, heartbeat_s=0.05) as (_, url), \
            aiohttp.ClientSession() as http, http.get(url) as resp:
        lines = []
        async with asyncio.timeout(10):
            while len(lines) < 3:
                line = await resp.content.readline()
                if line == b": keepalive\n":
                    lines.append(line)
        seq = await append(journal, 1)
        assert ids(await read_frames(resp, until_seq=seq)) == [seq]


async def test_a_client_that_went_away_is_dropped_at_the_next_pass(
    parts: tuple[Journal, SeqBus],
) -> None:
    journal, bus = parts
    hub = StreamHub(journal, bus)
    async with served(hub) as (endpoint, url), \
            hub.subscribe(EventFilter(), after_seq=0) as probe:
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            client = await endpoint.joined.get()
            assert await resp.content.readline() == b": joined\n"
        ended = asyncio.create_task(endpoint.ended.get())
        for _ in range(100):  # the first write may still reach the socket before its close
            await append(journal, 1)
            await pass_done(probe, 1)
            if ended.done():
                break
        assert await ended is client
        assert hub.clients == 1 and hub.groups == 1  # the probe


async def test_passes_are_paced_by_the_number_of_clients(
    parts: tuple[Journal, SeqBus],
) -> None:
    journal, bus = parts
    waits: list[float] = []
    sleeping, release = asyncio.Event(), asyncio.Event()

    async def gate(seconds: float) -> None:
        waits.append(seconds)
        sleeping.set()
        await release.wait()

    hub = StreamHub(journal, bus, pass_s_per_client=1.0, max_pass_interval_s=2.0, sleep=gate)
    assert hub.pass_interval() == 0
    runner = asyncio.create_task(hub.run())
    try:
        async with hub.subscribe(EventFilter(), after_seq=0) as feed:
            assert hub.pass_interval() == 1.0
            async with hub.subscribe(EventFilter(), after_seq=0), \
                    hub.subscribe(EventFilter(), after_seq=0):
                assert hub.pass_interval() == 2.0  # 3 clients, at most 2 s
            await append(journal, 1)
            await pass_done(feed, 1)  # the first pass does not wait
            await append(journal, 3)
            await sleeping.wait()  # the next one does: the events keep coming meanwhile
            await append(journal, 4)
            release.set()
            got = [await feed.next(timeout=10) for _ in range(7)]
        assert [e.seq for e in got if e] == list(range(2, 9))
        assert hub.passes == 2 and len(waits) == 1 and 0 < waits[0] <= 1.0
    finally:
        runner.cancel()


# -- the daemon's /v1/events/stream ---------------------------------------------------------


async def test_an_http10_client_gets_the_frames_without_chunk_framing(daemon: Daemon) -> None:
    reader, writer = await asyncio.open_unix_connection(str(daemon.socket_path))
    try:
        writer.write(b"GET /v1/events/stream?type=app.* HTTP/1.0\r\nHost: admin\r\n\r\n")
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200")
            assert b"transfer-encoding" not in head.lower()
            assert await reader.readexactly(23) == b": palyra event stream\n\n"
            async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(
                    path=str(daemon.socket_path))) as admin:
                async with admin.post("http://admin/v1/events", json={"type": "app.one"}) as r:
                    seq = (await r.json())["seq"]
            frame = await reader.readuntil(b"\n\n")
        assert frame.startswith(f"id: {seq}\nevent: app.one\ndata: {{".encode())
    finally:
        writer.close()


async def test_head_answers_the_head_only(daemon: Daemon, admin: aiohttp.ClientSession) -> None:
    async with asyncio.timeout(10):
        async with admin.head("/v1/events/stream") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            assert await resp.read() == b""
    assert daemon.stream_hub.clients == 0


async def test_the_stream_limit_is_a_503_and_stopping_the_daemon_ends_streams() -> None:
    async with running_daemon(clock=ManualClock(), keyring=MemoryKeyring(),
                              stream__max_clients=1) as daemon:
        connector = aiohttp.UnixConnector(path=str(daemon.socket_path))
        async with aiohttp.ClientSession(connector=connector, base_url="http://admin") as admin:
            async with admin.get("/v1/events/stream") as first:
                assert await first.content.readline() == b": palyra event stream\n"
                async with admin.get("/v1/events/stream") as second:
                    answer: dict[str, Any] = await second.json()
                    assert second.status == 503 and answer["error"] == "too_many_streams"
                stopping = asyncio.create_task(daemon.stop())
                async with asyncio.timeout(10):
                    with contextlib.suppress(aiohttp.ClientPayloadError):
                        while await first.content.readany():
                            pass
                    await stopping
        assert daemon.streams == set()

