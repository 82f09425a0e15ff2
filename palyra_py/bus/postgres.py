"""The bus across nodes: "the head is now N" from PostgreSQL (LISTEN/NOTIFY plus a poll).

Every append transaction of the journal ends with ``pg_notify(HEAD_CHANNEL, head seq)``;
PostgreSQL delivers a notification only once its transaction committed, so only committed
heads are announced. Each node holds one :class:`PostgresHeadFeed`: one dedicated
connection that LISTENs on the channel; on a notification it reads the journal's head row
(the payload is only a hint: anyone who may connect may NOTIFY, and a head that ran ahead
of the journal would never come back) and publishes it on the node's local
:class:`SeqBus` (whose readers, dispatcher and streams, then read the journal from their
own cursors), and passes it to the node's other processes (``on_head``: the socket relay).
Notifications that arrive during a read share the next one.

A notification can be lost (the connection cut, the server restarted, a node that was not
listening yet), so the feed also reads the head row without one:

- at once after every (re)connect, before the first notification could arrive;
- every ``poll_s`` seconds (the poll backstop), on the same connection, which doubles as
  the check that the connection is alive.

A head at or below the bus's is never published again: the same commit heard twice (as a
notice and by the poll, or from this node's own append) wakes the node once. While the
server is unreachable the feed tries it again every ``retry_s`` seconds; the node's
readers keep working from the bus they have.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg

from palyra_py.bus.local import SeqBus
from palyra_py.journal.postgres import HEAD_CHANNEL, JournalSql
from palyra_py.storage.postgres import (
    CONNECT_TIMEOUT_S,
    DRIVER_ERRORS,
    connect,
    describe_pg_error,
)

__all__ = ["APPLICATION_NAME", "DEFAULT_POLL_S", "DEFAULT_RETRY_S", "PostgresHeadFeed"]

_log = logging.getLogger(__name__)

DEFAULT_POLL_S = 1.0
DEFAULT_RETRY_S = 1.0
APPLICATION_NAME = "palyra-bus"
"""The listening connection's ``application_name`` (``pg_stat_activity`` shows it)."""


class PostgresHeadFeed:
    """Publishes on ``bus`` every head committed by any node sharing the database. Use it
    from one event loop: ``start``, then ``close`` at the end."""

    def __init__(
        self,
        dsn: str | Callable[[], str],
        bus: SeqBus,
        *,
        on_head: Callable[[int], None] | None = None,
        poll_s: float = DEFAULT_POLL_S,
        retry_s: float = DEFAULT_RETRY_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        """``dsn``: the URI, or a function that gives it (read at each connect).
        ``on_head(seq)`` runs after each head this feed publishes (not for heads the bus
        already had): the node passes it on to its other processes."""
        self._dsn = dsn
        self._bus = bus
        self._on_head = on_head
        self._poll_s = poll_s
        self._retry_s = retry_s
        self._connect_timeout_s = connect_timeout_s
        self._conn: asyncpg.Connection | None = None
        self._cut = asyncio.Event()
        self._wake = asyncio.Event()
        self._notices = 0
        self._task: asyncio.Task[None] | None = None
        self._down: str | None = None
        self.listening = asyncio.Event()
        """Set while the LISTEN connection is up (after its catch-up read)."""
        self.heard = 0
        """Head reads after a notification that moved the bus."""
        self.polled = 0
        """Head reads (catch-up or backstop) that moved the bus: a notice was missed."""
        self.connects = 0
        """Connections made (the first, then one per reconnect)."""

    @property
    def problem(self) -> str | None:
        """Why the feed cannot listen (worded without values): set when a connection
        attempt failed (a cut connection is tried again at once first), cleared by the
        next that succeeds; else ``None``."""
        return self._down

    @property
    def server_pid(self) -> int | None:
        """The server process of the LISTEN connection (``pg_stat_activity.pid``), while it
        is up."""
        conn = self._conn
        return None if conn is None or conn.is_closed() else conn.get_server_pid()

    async def start(self) -> None:
        """Start listening. Returns once the first connection is up and the bus holds the
        head it read, or at once when the server cannot be reached (the feed keeps
        trying every ``retry_s`` meanwhile; the poll backstop of the readers still
        works)."""
        if self._task is not None:
            return
        first = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(first), name="palyra-bus-pg")
        await asyncio.shield(first)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._drop()

    # -- inside ------------------------------------------------------------------------

    def _publish(self, seq: int) -> bool:
        if seq <= self._bus.head:
            return False
        self._bus.publish(seq)
        if self._on_head is not None:
            self._on_head(seq)
        return True

    def _notified(self, _conn: object, _pid: int, _channel: str, _payload: object) -> None:
        # The payload (the head seq) is only a hint: anyone who may connect may NOTIFY on
        # the channel, so the head is read from the journal before it is published
        # (notices that arrive meanwhile share that read).
        self._notices += 1
        self._wake.set()

    def _terminated(self, _conn: object) -> None:
        self._cut.set()
        self._wake.set()

    async def _listen(self) -> asyncpg.Connection:
        dsn = self._dsn if isinstance(self._dsn, str) else self._dsn()
        conn = await connect(dsn, timeout_s=self._connect_timeout_s,
                             application_name=APPLICATION_NAME)
        try:
            conn.add_termination_listener(self._terminated)
            await conn.add_listener(HEAD_CHANNEL, self._notified)
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def _catch_up(self, conn: asyncpg.Connection, *, told: bool = False) -> None:
        head = (await JournalSql(conn).head()).seq
        if self._publish(head):
            if told:
                self.heard += 1
            else:
                self.polled += 1

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self.listening.clear()
        if conn is not None and not conn.is_closed():
            conn.terminate()  # LISTEN ends with the session; nothing to wait for

    async def _run(self, first: asyncio.Future[None]) -> None:
        was_up = False
        try:
            while True:
                try:
                    self._cut.clear()
                    self._wake.clear()
                    self._notices = 0
                    self._conn = await self._listen()
                    self.connects += 1
                    # Heads committed while nobody listened: read at once, not at the poll.
                    await self._catch_up(self._conn)
                    self.listening.set()
                    was_up = True
                    if self._down is not None:
                        _log.warning("bus: listening to PostgreSQL again")
                    self._down = None
                    if not first.done():
                        first.set_result(None)
                    while True:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._wake.wait(), self._poll_s)
                        self._wake.clear()
                        if self._cut.is_set():
                            raise ConnectionResetError("the LISTEN connection was closed")
                        told, self._notices = self._notices > 0, 0
                        await self._catch_up(self._conn, told=told)
                except DRIVER_ERRORS as exc:
                    await self._drop()
                    if was_up:
                        # A connection that worked was cut (pg_terminate_backend, a pooler,
                        # a restart): once more at once, before calling the server away.
                        was_up = False
                        continue
                    reason = describe_pg_error(exc, "bus", "listen")
                    if self._down is None:
                        _log.warning("%s; retrying every %ss", reason, self._retry_s)
                    self._down = reason
                    if not first.done():
                        first.set_result(None)
                    await asyncio.sleep(self._retry_s)  # the server is away: try again later
        finally:
            if not first.done():
                first.cancel()
