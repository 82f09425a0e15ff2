"""The journal stream over a WebSocket (RFC 6455), beside Server-Sent Events.

The same hub feeds it (:meth:`StreamHub.subscribe`: the client's own bounded queue), so the
filters, the resume by seq, the per-token cap and the overflow rule are the SSE stream's.
Every message the server sends is one JSON text message with a ``type``:

- ``{"type": "open", "after_seq": N}``: first, the cursor the stream starts after;
- ``{"type": "event", "event": Event}``: one journal event (the admin API's ``Event``), in
  seq order, each once;
- ``{"type": "overflow", "reason": ..., "last_seq": N}``: the client fell ``buffer`` events
  behind; the server then closes with 1013 (try again later), and the client reconnects
  with ``after_seq=N``.

The server closes with 1001 (going away) when the daemon stops. It reads the client's
frames only to answer pings and a close (its messages are ignored, at most
:data:`MAX_CLIENT_MESSAGE_BYTES` each); aiohttp pings every ``heartbeat_s`` and drops a
client that does not answer, so a reader that stopped reading costs at most its queue.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from aiohttp import WSCloseCode, web

from palyra_py.journal.journal import JournalEvent
from palyra_py.stream.hub import Feed, Overflow

__all__ = ["MAX_CLIENT_MESSAGE_BYTES", "event_message", "serve_websocket"]

MAX_CLIENT_MESSAGE_BYTES = 4096
"""Largest message a client may send (it has nothing to say: more closes the stream)."""


def event_message(event: JournalEvent) -> str:
    """One event as the stream's ``event`` message."""
    return orjson.dumps({"type": "event", "event": event.to_dict()}).decode()


async def serve_websocket(ws: web.WebSocketResponse, feed: Feed, after_seq: int,
                          heartbeat_s: float) -> None:
    """Send ``feed``'s events on the prepared ``ws`` until the client closes, overflows
    (then an ``overflow`` message and close 1013) or the task is cancelled (close 1001)."""
    await ws.send_str(orjson.dumps({"type": "open", "after_seq": after_seq}).decode())
    reader = asyncio.create_task(_read_client(ws))
    sender = asyncio.create_task(_send_events(ws, feed, heartbeat_s))
    try:
        await asyncio.wait((reader, sender), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        await _stop(reader, sender)
        with contextlib.suppress(Exception):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"daemon stopping")
        raise
    await _stop(reader, sender)
    overflowed = sender.done() and not sender.cancelled() and sender.exception() is None \
        and sender.result()
    if overflowed:
        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"stream overflow")
    else:
        await ws.close()


async def _stop(*tasks: asyncio.Task[object]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _read_client(ws: web.WebSocketResponse) -> None:
    # aiohttp answers pings and a close while this reads; messages are ignored.
    async for _message in ws:
        pass


async def _send_events(ws: web.WebSocketResponse, feed: Feed, heartbeat_s: float) -> bool:
    """Send events until the connection closes (False) or the client overflows (True,
    once the ``overflow`` message is sent)."""
    try:
        while not ws.closed:
            event = await feed.next(timeout=heartbeat_s)
            if event is not None:
                await ws.send_str(event_message(event))
    except Overflow as exc:
        note = {"type": "overflow", "reason": str(exc), "last_seq": feed.last_seq}
        await ws.send_str(orjson.dumps(note).decode())
        return True
    except ConnectionError:  # the client went away during a send
        pass
    return False
