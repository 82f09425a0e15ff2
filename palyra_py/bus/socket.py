"""The bus across processes of one state dir: "the head is now N" as Unix datagrams.

Each process binds a datagram socket ``<state>/bus/<pid>`` (the directory is 0700, so only
the daemon's user can send) and relays its local :class:`SeqBus`:

- after a commit in this process, :meth:`HeadRelay.notify` sends the new head to every
  peer socket in the directory (a few microseconds each, never blocking: a full peer
  buffer drops the notice);
- a notice from a peer is published on the local bus, which wakes this process's readers
  (dispatcher, streams) within milliseconds;
- a **poll backstop** re-reads the journal head every ``poll_s`` seconds and publishes it,
  so a lost notice (dropped, a peer not yet known, a process restarting) only delays.

The journal is the truth: a notice is only a hint to read it, never an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from palyra_py.bus.local import SeqBus

_log = logging.getLogger(__name__)

BUS_DIR = "bus"
DEFAULT_POLL_S = 1.0
_MAX_NOTICE = 32  # bytes: a decimal seq


class HeadRelay:
    """Relays ``bus`` to and from the other processes of ``state_dir``. Use it from one
    event loop: ``start``, then ``notify`` after each local commit, ``close`` at the end."""

    def __init__(
        self,
        state_dir: Path,
        bus: SeqBus,
        read_head: Callable[[], Awaitable[int]],
        *,
        poll_s: float = DEFAULT_POLL_S,
        name: str | None = None,
    ) -> None:
        """``read_head()`` returns the journal's newest seq (the backstop's read).
        ``name``: this process's socket in the directory (default: the pid)."""
        self.directory = state_dir / BUS_DIR
        self.path = self.directory / (name or str(os.getpid()))
        self._bus = bus
        self._read_head = read_head
        self._poll_s = poll_s
        self._sock: socket.socket | None = None
        self._peers: set[str] = set()
        self._poller: asyncio.Task[None] | None = None
        self.sent = 0
        self.heard = 0
        self.polled = 0
        """Backstop reads that found the head ahead of the bus (a notice was missed)."""

    async def start(self) -> None:
        """Bind this process's socket, learn the peers, tell them our head, start the
        backstop."""
        self.directory.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.directory, 0o700)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a previous process with our pid left it
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(str(self.path))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)
        self._discover()
        self.notify(self._bus.head)  # peers learn our address from it
        self._poller = asyncio.get_running_loop().create_task(self._poll_forever())

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def notify(self, seq: int) -> None:
        """Tell every known peer that the head is now ``seq``. Never blocks or raises: a
        notice that cannot be sent is left to the peer's backstop."""
        if self._sock is None:
            return
        data = str(seq).encode()
        for peer in list(self._peers):
            try:
                self._sock.sendto(data, peer)
                self.sent += 1
            except (BlockingIOError, InterruptedError):
                continue  # the peer's buffer is full: it is behind anyway, its poll catches up
            except (FileNotFoundError, ConnectionRefusedError):
                self._forget(peer, stale=True)
            except OSError as exc:
                if exc.errno in (errno.ENOBUFS, errno.EAGAIN):
                    continue
                self._forget(peer, stale=False)

    # -- inside ------------------------------------------------------------------------

    def _forget(self, peer: str, *, stale: bool) -> None:
        self._peers.discard(peer)
        if stale:
            # Refused: nobody is bound there any more (a process that died); its pid may
            # come back, and it unlinks before binding anyway.
            with contextlib.suppress(OSError):
                os.unlink(peer)

    def _discover(self) -> None:
        own = str(self.path)
        try:
            names = os.listdir(self.directory)
        except OSError:
            return
        self._peers = {str(self.directory / name) for name in names} - {own}

    def _readable(self) -> None:
        assert self._sock is not None
        newest = 0
        while True:
            try:
                data, sender = self._sock.recvfrom(_MAX_NOTICE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            if isinstance(sender, str) and sender.startswith(str(self.directory)):
                self._peers.add(sender)
            try:
                newest = max(newest, int(data))
            except ValueError:
                continue
            self.heard += 1
        if newest:
            self._bus.publish(newest)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            self._discover()
            try:
                head = await self._read_head()
            except Exception as exc:  # the journal's own refusals; the next tick tries again
                _log.debug("bus backstop read failed: %s", exc)
                continue
            if head > self._bus.head:
                self.polled += 1
                self._bus.publish(head)
