from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from palyra_py.daemon import Daemon
from palyra_py.testing import ManualClock, MemoryKeyring, running_daemon, short_state_dir


@pytest.fixture
def state_dir() -> Iterator[Path]:
    path = short_state_dir("pt-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def memory_keyring() -> MemoryKeyring:
    return MemoryKeyring()


@pytest.fixture
async def daemon(
    state_dir: Path, clock: ManualClock, memory_keyring: MemoryKeyring
) -> AsyncIterator[Daemon]:
    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring) as d:
        yield d


@pytest.fixture
async def admin(daemon: Daemon) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client on the daemon's admin socket (base URL http://admin)."""
    connector = aiohttp.UnixConnector(path=str(daemon.socket_path))
    async with aiohttp.ClientSession(connector=connector, base_url="http://admin") as session:
        yield session


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
