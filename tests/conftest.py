from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import structlog
import structlog.testing

from palyra_py.bus.local import SeqBus
from palyra_py.journal.journal import Journal
from palyra_py.journal.sqlite_journal import SqliteJournal
from palyra_py.server.daemon import Daemon
from palyra_py.testing import (
    CapturingReceiver,
    ManualClock,
    MemoryKeyring,
    running_daemon,
    running_receiver,
)
from tests import leakcheck
from tests.fault_helpers import admin_session
from tests.pg import pg_server as pg_server  # the session's PostgreSQL, started on first use

leakcheck.install()


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_logs_or_outputs() -> Iterator[None]:
    """Every structlog event of the session is kept and, with the CLI outputs the tests
    recorded, scanned for secrets at the end (see tests/leakcheck.py)."""
    capture = structlog.testing.LogCapture()
    structlog.configure(processors=[capture, structlog.dev.ConsoleRenderer(colors=False)])
    yield
    for entry in capture.entries:
        leakcheck.WATCH.record(f"log event {entry.get('event')!r}", repr(entry))
    problems = leakcheck.WATCH.scan_outputs()
    assert not problems, f"secrets found in: {problems[:10]}"


@pytest.fixture
def state_dir() -> Iterator[Path]:
    with leakcheck.checked_state_dir() as path:
        yield path


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[tuple[Journal, SeqBus]]:
    """A started journal in tmp_path whose commits are published on a bus."""
    bus = SeqBus()
    journal = Journal(SqliteJournal(tmp_path / "journal.db",
                                    on_commit=lambda seq, _events: bus.publish(seq)))
    await journal.start()
    yield journal, bus
    await journal.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def memory_keyring() -> MemoryKeyring:
    return MemoryKeyring()


@pytest.fixture
async def receiver() -> AsyncIterator[CapturingReceiver]:
    """A real HTTP receiver on loopback whose answers the test scripts."""
    async with running_receiver() as r:
        yield r


@pytest.fixture
async def outbound(
    state_dir: Path, clock: ManualClock, memory_keyring: MemoryKeyring
) -> AsyncIterator[Daemon]:
    """A daemon that may deliver to loopback receivers (private addresses are refused by
    default)."""
    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring,
                              delivery__allow_private_networks=True) as d:
        yield d


@pytest.fixture
async def admin_o(outbound: Daemon) -> AsyncIterator[aiohttp.ClientSession]:
    """An admin API session on the ``outbound`` daemon's socket."""
    async with admin_session(outbound.socket_path) as session:
        yield session


@pytest.fixture
async def daemon(
    state_dir: Path, clock: ManualClock, memory_keyring: MemoryKeyring
) -> AsyncIterator[Daemon]:
    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring) as d:
        yield d


@pytest.fixture
async def admin(daemon: Daemon) -> AsyncIterator[aiohttp.ClientSession]:
    """An admin API session on the ``daemon`` fixture's socket."""
    async with admin_session(daemon.socket_path) as session:
        yield session


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
