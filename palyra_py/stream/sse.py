"""Server-Sent Events written by the stream hub: the per-client cost is per batch, not per
event.

A hub pass encodes each event's SSE frame once (:class:`Batch` shares the encodings of one
pass), joins the frames matching one filter once for every client with that filter, and
writes that one chunk to each caught-up client's socket itself: no task of the client is
woken, nothing is queued per event. An :class:`SseClient` owns its connection's write side
once the response head is out; its own task catches up from the journal, writes what the
hub could not (see below), sends heartbeats and waits for the end.

A client whose socket is backed up (more than :data:`SOCKET_BACKED_UP` bytes wait in its
transport: the kernel's buffer is full) gets the next batches as references in a backlog,
which its task writes as the socket drains. A backlog of more than ``buffer`` events ends
the stream with ``stream.overflow``: memory never grows with a slow reader, and the bytes
held for it are shared with every other client of its filter. It reconnects with its
cursor (``Last-Event-ID``).
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import TYPE_CHECKING

import orjson

from palyra_py.journal.journal import EventFilter, Journal, JournalEvent

if TYPE_CHECKING:
    from aiohttp import web

PAGE = 500
"""Journal rows per read, for the hub and for a client's catch-up."""
KEEPALIVE = b": keepalive\n\n"
SOCKET_BACKED_UP = 64 * 1024
"""Bytes in a transport's buffer (the kernel's socket buffer is full) past which the hub
stops writing to it directly: asyncio's default high-water mark, where aiohttp's own writes
would wait too."""
WRITE_SLICE = 64 * 1024

_CATCHING_UP, _LIVE, _ENDED = "catching_up", "live", "ended"


def sse_frame(event: JournalEvent) -> bytes:
    """One event as an SSE frame; ``id`` is the seq (a reconnect's ``Last-Event-ID``)."""
    data = orjson.dumps(event.to_dict()).decode()
    return f"id: {event.seq}\nevent: {event.kind}\ndata: {data}\n\n".encode()


def chunked(body: bytes) -> bytes:
    """``body`` as one chunk of an HTTP/1.1 chunked body (RFC 9112 section 7.1)."""
    return b"%x\r\n%b\r\n" % (len(body), body)


class Batch:
    """The events of one hub pass that match one filter, in seq order, shared by every client
    with that filter. Frames are encoded once per pass (``frames`` is the pass's cache, shared
    by the batches of every filter) and joined once per batch."""

    __slots__ = ("_body", "_chunk", "_frames", "events", "first_seq", "last_seq")

    def __init__(self, events: list[JournalEvent], frames: dict[int, bytes]) -> None:
        self.events = events
        self.first_seq = events[0].seq
        self.last_seq = events[-1].seq
        self._frames = frames
        self._body: bytes | None = None
        self._chunk: bytes | None = None

    def frame(self, event: JournalEvent) -> bytes:
        frame = self._frames.get(event.seq)
        if frame is None:
            frame = self._frames[event.seq] = sse_frame(event)
        return frame

    def body(self) -> bytes:
        """Every event's frame, joined."""
        if self._body is None:
            self._body = b"".join([self.frame(e) for e in self.events])
        return self._body

    def chunk(self) -> bytes:
        """:meth:`body` as one HTTP chunk."""
        if self._chunk is None:
            self._chunk = chunked(self.body())
        return self._chunk

    def body_after(self, seq: int) -> tuple[bytes, int]:
        """The frames of the events after ``seq`` (a client whose cursor is inside this
        batch), and how many."""
        if seq < self.first_seq:
            return self.body(), len(self.events)
        later = [self.frame(e) for e in self.events if e.seq > seq]
        return b"".join(later), len(later)


def overflow_frame(buffer: int, last_seq: int) -> bytes:
    """The last frame of a stream whose client fell ``buffer`` events behind."""
    note = json.dumps({"reason": f"fell {buffer} events behind after seq {last_seq}",
                       "last_seq": last_seq})
    return f"event: stream.overflow\ndata: {note}\n\n".encode()


class SseClient:
    """One SSE connection, fed by the hub. Events reach the client once each, in seq order:
    first those up to ``joined_at_seq`` from the journal (the client's own task), then the
    hub's batches. While the client is caught up and its socket takes the bytes, the hub
    writes each batch itself; otherwise the batch waits in the client's backlog (a reference
    to the bytes every client of the filter shares, no copy) and the client's task writes it
    as the socket drains. A backlog of more than ``buffer`` events ends the stream with
    ``stream.overflow``."""

    def __init__(self, journal: Journal, flt: EventFilter, after_seq: int, joined_at_seq: int,
                 buffer: int) -> None:
        self.flt = flt
        self.overflowed = False
        self.last_seq = after_seq
        """The last event handed to the connection (it may still sit in socket buffers)."""
        self._journal = journal
        self._joined_at = joined_at_seq
        self._buffer = buffer
        self._state = _CATCHING_UP
        self._backlog: deque[Batch] = deque()
        self._backlog_events = 0
        self._writing = False  # the task is in a write of its own: the hub must not cut in
        self._transport: asyncio.Transport | None = None
        self._chunked = True
        self._last_write = 0.0
        self._waiter: asyncio.Future[None] | None = None

    @property
    def backlog(self) -> int:
        """Events held for the client: its catch-up or its backed-up socket."""
        return self._backlog_events

    # -- the hub's side (synchronous, called once per pass that has matching events) -------

    def offer(self, batch: Batch, now: float) -> bool:
        """Take this pass's matching events (``now``: the loop's time). False when this
        client wants no more: it overflowed (``overflowed``) or its connection is gone."""
        if self._state is _LIVE and not self._backlog and not self._writing:
            transport = self._transport
            assert transport is not None
            if transport.is_closing():
                self._end()
                return False
            if transport.get_write_buffer_size() <= SOCKET_BACKED_UP:
                self._write_batch(transport, batch, now)
                return True
        elif self._state is _ENDED:
            return False
        self._backlog.append(batch)
        self._backlog_events += len(batch.events)
        if self._backlog_events > self._buffer:
            self.overflowed = True
            self._end()  # the task writes the note after what it has written
            return False
        if self._state is _LIVE:
            self._wake()
        return True

    def _write_batch(self, transport: asyncio.Transport, batch: Batch, now: float) -> None:
        if batch.first_seq > self.last_seq:
            data = batch.chunk() if self._chunked else batch.body()
        else:  # a cursor inside the batch (Last-Event-ID ahead of the head at join)
            body, count = batch.body_after(self.last_seq)
            if not count:
                return
            data = chunked(body) if self._chunked else body
        transport.write(data)
        self.last_seq = batch.last_seq
        self._last_write = now

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _end(self) -> None:
        self._state = _ENDED
        self._backlog.clear()
        self._backlog_events = 0
        self._wake()

    def close(self) -> None:
        """Stop taking events (the stream's handler is leaving)."""
        self._end()

    # -- the client's own task ---------------------------------------------------------

    async def serve(self, response: web.StreamResponse, transport: asyncio.Transport | None,
                    heartbeat_s: float) -> None:
        """Write the stream to the prepared ``response`` (its head already sent) over
        ``transport`` (the request's) until the client overflows (then the last frame is
        ``stream.overflow``), goes away, or the task is cancelled. Sends ``: keepalive``
        after ``heartbeat_s`` seconds without a write. Returns with the body complete
        except for its end (``write_eof``)."""
        loop = asyncio.get_running_loop()
        if transport is None or transport.is_closing():
            self._end()
            return
        self._transport = transport
        # aiohttp chose the framing while preparing the head: chunked for HTTP/1.1, the
        # connection's end for HTTP/1.0. The hub's direct writes must frame the same way.
        self._chunked = response.headers.get("Transfer-Encoding", "").lower() == "chunked"
        self._last_write = loop.time()
        try:
            await self._catch_up(response, loop)
            if self._state is _CATCHING_UP:
                self._state = _LIVE
            while self._state is _LIVE:
                if self._backlog:
                    await self._write_backlog(response, loop)
                elif transport.is_closing():
                    self._end()
                elif (idle := loop.time() - self._last_write) < heartbeat_s:
                    self._waiter = loop.create_future()
                    try:
                        await asyncio.wait((self._waiter,), timeout=heartbeat_s - idle)
                    finally:
                        self._waiter = None
                else:
                    transport.write(chunked(KEEPALIVE) if self._chunked else KEEPALIVE)
                    self._last_write = loop.time()
            if self.overflowed:
                await response.write(overflow_frame(self._buffer, self.last_seq))
        except ConnectionError:  # the client went away during a write of this task
            self._end()

    async def _catch_up(self, response: web.StreamResponse,
                        loop: asyncio.AbstractEventLoop) -> None:
        # aiohttp's write waits for the socket to drain past 64 KiB: a slow reader slows
        # the catch-up, and the hub's batches pile up in the backlog (bounded) meanwhile.
        while self.last_seq < self._joined_at and self._state is _CATCHING_UP:
            page = await self._journal.list(self.flt, after_seq=self.last_seq, limit=PAGE)
            page = [e for e in page if e.seq <= self._joined_at]
            if not page:
                return
            await response.write(b"".join([sse_frame(e) for e in page]))
            self.last_seq = page[-1].seq
            self._last_write = loop.time()

    async def _write_backlog(self, response: web.StreamResponse,
                             loop: asyncio.AbstractEventLoop) -> None:
        # Up to WRITE_SLICE bytes a write, each through aiohttp, which waits while the
        # socket is backed up: the copy the transport keeps of a slow client's bytes stays
        # near the socket's high-water mark, whatever the backlog.
        parts: list[bytes] = []
        size = 0
        while self._backlog and size < WRITE_SLICE:
            batch = self._backlog.popleft()
            self._backlog_events -= len(batch.events)
            body, count = batch.body_after(self.last_seq)
            if count:
                parts.append(body)
                size += len(body)
                self.last_seq = batch.last_seq
        if not parts:
            return
        self._writing = True
        try:
            await response.write(b"".join(parts))
        finally:
            self._writing = False
        self._last_write = loop.time()
