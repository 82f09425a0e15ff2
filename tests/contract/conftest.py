"""The engines the contract suite runs against, each behind the Protocols only.

``engine`` is parametrised by engine name; a new engine adds its name to ``ENGINES`` and a
branch to ``Engine``'s factories (its storage set up and torn down here), and passes the
suite unchanged. The tests never see an engine's class, file or SQL.

PostgreSQL: a fresh database of the session's server (``tests/pg.py``) per test; where
the binaries are missing, those tests skip with the line that says how to install them.
A store with no PostgreSQL engine yet keeps its suite on the engines it has
(``engine_fixture``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from palyra_py.bus.base import Bus
from palyra_py.bus.local import SeqBus
from palyra_py.bus.postgres import PostgresHeadFeed
from palyra_py.bus.socket import HeadRelay
from palyra_py.delivery.backend import DeliveryBackend
from palyra_py.delivery.postgres_store import PostgresDeliveries
from palyra_py.delivery.sqlite_store import DeliveryStore
from palyra_py.journal.backend import JournalBackend
from palyra_py.journal.journal import Journal
from palyra_py.journal.postgres_journal import PostgresJournal
from palyra_py.journal.sqlite_journal import SqliteJournal
from tests.pg import PgServer

ENGINES = ["sqlite", "postgres"]
DELIVERY_ENGINES = ENGINES


@dataclass
class Node:
    """One node (or process) as the daemon builds it: a journal sharing the test's storage
    with every other node, and the bus its readers wait on."""

    journal: Journal
    bus: Bus
    cut: Callable[[], Awaitable[None]]
    """Cuts the node off from the other nodes' notices for a while (the engine's way to
    lose them), as a crash of its listener or its socket would."""
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


class Engine:
    """Builds stores of one engine over one storage (for SQLite, a directory), closing
    every one it built at the end of the test."""

    def __init__(self, name: str, root: Path, dsn: str | None = None) -> None:
        self.name = name
        self._root = root
        self._dsn = dsn
        self._journals: list[JournalBackend] = []
        self._deliveries: list[DeliveryBackend] = []
        self._nodes: list[Node] = []

    def journal(
        self, *, clock: Callable[[], float],
        on_commit: Callable[[int, int], None] | None = None, shared: bool = False,
    ) -> JournalBackend:
        """A journal backend, not started, over this test's storage; ``shared``: other
        backends append to the same storage too (processes or nodes)."""
        backend: JournalBackend
        if self.name == "sqlite":
            backend = SqliteJournal(
                self._root / "journal.db", clock=clock, on_commit=on_commit, start_check_s=0,
                several_appenders=shared,
            )
        elif self.name == "postgres" and self._dsn is not None:
            backend = PostgresJournal(self._dsn, clock=clock, on_commit=on_commit)
        else:
            raise AssertionError(f"no journal for engine {self.name!r}")
        self._journals.append(backend)
        return backend

    def deliveries(self) -> DeliveryBackend:
        """A delivery backend, not started, over this test's storage."""
        backend: DeliveryBackend
        if self.name == "sqlite":
            backend = DeliveryStore(self._root / "deliveries.db")
        elif self.name == "postgres" and self._dsn is not None:
            backend = PostgresDeliveries(self._dsn)
        else:
            raise AssertionError(f"no delivery store for engine {self.name!r}")
        self._deliveries.append(backend)
        return backend

    def bus(self) -> Bus:
        """A bus as a reader in one process sees it, told of nothing else (what crosses
        processes and nodes is :meth:`node`'s)."""
        bus: Bus = SeqBus()
        return bus

    async def node(self, *, clock: Callable[[], float], poll_s: float) -> Node:
        """A started node: its own commits are on its bus at once, every other node's by
        the engine's notices, and a lost notice by the poll backstop every ``poll_s``
        seconds."""
        bus = SeqBus()
        name = f"node{len(self._nodes) + 1}"
        node: Node
        if self.name == "sqlite":
            backend = SqliteJournal(self._root / "journal.db", clock=clock, start_check_s=0,
                                    several_appenders=True,
                                    on_commit=lambda seq, _events: committed(seq))
            relay = HeadRelay(self._root, bus, backend.last_seq, poll_s=poll_s, name=name)

            def committed(seq: int) -> None:
                bus.publish(seq)
                relay.notify(seq)

            async def cut_socket() -> None:
                relay.path.unlink()  # the peers' notices find nobody: dropped

            journal = Journal(backend)
            await journal.start()
            bus.publish(await journal.last_seq())
            await relay.start()
            node = Node(journal, bus, cut_socket, [relay.close, journal.close])
        elif self.name == "postgres" and self._dsn is not None:
            dsn = self._dsn
            pg = PostgresJournal(dsn, clock=clock,
                                 on_commit=lambda seq, _events: bus.publish(seq))
            feed = PostgresHeadFeed(dsn, bus, poll_s=poll_s)

            async def cut_listener() -> None:
                pid = feed.server_pid
                assert pid is not None, "the node is not listening"
                conn = await asyncpg.connect(dsn)
                try:  # as a server restart or a pooler would
                    assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
                finally:
                    await conn.close()

            journal = Journal(pg)
            await journal.start()
            await feed.start()
            node = Node(journal, bus, cut_listener, [feed.close, journal.close])
        else:
            raise AssertionError(f"no bus for engine {self.name!r}")
        self._nodes.append(node)
        return node

    async def close(self) -> None:
        for node in self._nodes:
            for closer in node.closers:
                await closer()
        for journal in self._journals:
            await journal.close()
        for deliveries in self._deliveries:
            await deliveries.close()


EngineFixture = Callable[[pytest.FixtureRequest, Path], AsyncIterator[Engine]]


def engine_fixture(names: list[str]) -> EngineFixture:
    """An ``engine`` fixture over ``names``: a module whose store runs on fewer engines
    defines its own ``engine = engine_fixture([...])``."""

    @pytest.fixture(params=names)
    async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Engine]:
        name = str(request.param)
        dsn = None
        if name == "postgres":
            server: PgServer = request.getfixturevalue("pg_server")
            dsn = server.new_database()
        built = Engine(name, tmp_path, dsn)
        yield built
        await built.close()

    return engine


engine = engine_fixture(ENGINES)
