"""A real HTTP receiver on loopback whose answers a test scripts (not one of our parts)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Script = Callable[["Received"], web.StreamResponse | None]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    url: str = ""
    received: list[Received] = field(default_factory=list)
    script: list[int | Script] = field(default_factory=list)
    """Answers to give in turn (a status, or a function); after the list: 200."""
    hang: asyncio.Event = field(default_factory=asyncio.Event)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        got = Received(request.path, dict(request.headers), await request.read())
        async with self._arrived:
            self.received.append(got)
            self._arrived.notify_all()
        step = self.script.pop(0) if self.script else 200
        if callable(step):
            answer = step(got)
            if answer is not None:
                return answer
            await self.hang.wait()  # a receiver that never answers
            return web.Response(status=200)
        return web.Response(status=step, text=f"answer {step}")

    async def wait_for(self, count: int, timeout: float = 15) -> list[Received]:
        async with self._arrived:
            await asyncio.wait_for(
                self._arrived.wait_for(lambda: len(self.received) >= count), timeout)
        return list(self.received)


@asynccontextmanager
async def running_receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    receiver.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield receiver
    finally:
        receiver.hang.set()
        await runner.cleanup()
