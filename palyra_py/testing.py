"""Supported test helpers (for our own tests and for users' integration tests): a real
in-memory keyring backend, a clock you move by hand, a daemon started in-process on
loopback and a temporary Unix socket in one line, and a real HTTP receiver on loopback that
captures what is delivered to it and answers as the test scripts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from keyring.backend import KeyringBackend
from keyring.compat import properties
from keyring.errors import PasswordDeleteError

from palyra_py.delivery.start import DeliveriesFrom
from palyra_py.secrets.store import SecretStore
from palyra_py.server.daemon import Daemon, load_for_tests

__all__ = [
    "CapturingReceiver",
    "ManualClock",
    "MemoryKeyring",
    "Received",
    "running_daemon",
    "running_receiver",
    "short_state_dir",
]


class MemoryKeyring(KeyringBackend):
    """A keyring backend that keeps passwords in a dict (``keyring``'s own API). It is only
    used where passed explicitly (``SecretStore(backend=...)`` or ``keyring.set_keyring``):
    keyring's auto-detection sees it as not viable, so importing this module never changes
    which keyring a process uses."""

    @properties.classproperty
    def priority(cls) -> float:
        raise RuntimeError("MemoryKeyring is never chosen by keyring's auto-detection")

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.passwords: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.passwords.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.passwords[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if self.passwords.pop((service, username), None) is None:
            raise PasswordDeleteError(username)


class ManualClock:
    """A clock that moves only when told. Call it for the time in seconds."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def short_state_dir(prefix: str = "palyra-") -> Path:
    """A fresh state dir with a short path (Unix socket paths are limited to ~107 bytes,
    which pytest's ``tmp_path`` can exceed)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@contextlib.asynccontextmanager
async def running_daemon(
    state_dir: Path | None = None,
    *,
    clock: Any = None,
    keyring: KeyringBackend | None = None,
    deliveries_from: DeliveriesFrom | None = None,
    **settings: Any,
) -> AsyncIterator[Daemon]:
    """Start a real daemon (ingress on 127.0.0.1, ephemeral port; admin API on
    ``<state_dir>/palyra.sock``) and stop it on exit. ``settings`` are ``section__key``
    overrides, e.g. ``ingress__rejection_window_s=0.5``; ``deliveries_from`` is the daemon's
    (``--deliveries-from``: where deliveries resume without ``deliveries.db``). A state dir
    made here is removed."""
    own = state_dir is None
    state = state_dir or short_state_dir()
    daemon_kwargs: dict[str, Any] = {
        "secrets": SecretStore(state, backend=keyring or MemoryKeyring())
    }
    if clock is not None:
        daemon_kwargs["clock"] = clock
    if deliveries_from is not None:
        daemon_kwargs["deliveries_from"] = deliveries_from
    daemon = Daemon(load_for_tests(state, **settings), **daemon_kwargs)
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()
        if own:
            shutil.rmtree(state, ignore_errors=True)


Script = Callable[["Received"], web.StreamResponse | None]


@dataclass
class Received:
    """One request as the receiver got it."""

    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class CapturingReceiver:
    """A real HTTP receiver (see ``running_receiver``): every request is kept in
    ``received``, in arrival order; ``script`` holds the answers to give in turn (a status,
    or a function of the request returning a response, or ``None`` to hang until the
    receiver stops); past the script it answers 200."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    script: list[int | Script] = field(default_factory=list)
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

    async def wait_for(self, count: int, timeout: float = 15) -> list[Received]:  # noqa: ASYNC109
        """Every request so far, once at least ``count`` have arrived (``TimeoutError``
        after ``timeout`` seconds)."""
        async with self._arrived:
            await asyncio.wait_for(
                self._arrived.wait_for(lambda: len(self.received) >= count), timeout)
        return list(self.received)


@contextlib.asynccontextmanager
async def running_receiver() -> AsyncIterator[CapturingReceiver]:
    """Start a ``CapturingReceiver`` on 127.0.0.1 (ephemeral port; ``url`` ends in
    ``/hook``, any path is served) and stop it on exit, releasing any hanging answer."""
    receiver = CapturingReceiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    receiver.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield receiver
    finally:
        receiver.hang.set()
        await runner.cleanup()
