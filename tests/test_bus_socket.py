"""The bus across processes: a notice wakes a peer's readers; a lost notice is recovered by
the poll backstop (the journal is re-read)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from palyra_py.bus.local import SeqBus
from palyra_py.bus.socket import HeadRelay
from palyra_py.journal.journal import Journal, NewEvent
from palyra_py.journal.sqlite_journal import SqliteJournal


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    journal = Journal(SqliteJournal(tmp_path / "journal.db", start_check_s=0))
    await journal.start()
    yield journal
    await journal.close()


async def test_a_notice_wakes_the_peer(tmp_path: Path, journal: Journal) -> None:
    near, far = SeqBus(), SeqBus()
    # No backstop to speak of: only the notice can wake the far side.
    far_relay = HeadRelay(tmp_path, far, journal.last_seq, poll_s=3600, name="far")
    near_relay = HeadRelay(tmp_path, near, journal.last_seq, poll_s=3600, name="near")
    await far_relay.start()
    await near_relay.start()  # finds "far" in the directory
    try:
        result = await journal.append(NewEvent(kind="x", source="test", payload={}))
        near.publish(result.seq)
        near_relay.notify(result.seq)
        assert await asyncio.wait_for(far.wait_beyond(0), 30) == result.seq
        assert far_relay.heard >= 1
        assert far_relay.polled == 0
    finally:
        await near_relay.close()
        await far_relay.close()
    assert not (tmp_path / "bus" / "near").exists()


async def test_a_dropped_notice_is_recovered_by_the_backstop(
    tmp_path: Path, journal: Journal
) -> None:
    far = SeqBus()
    far.publish(await journal.last_seq())
    relay = HeadRelay(tmp_path, far, journal.last_seq, poll_s=0.05, name="far")
    await relay.start()
    try:
        # Another process committed and its notice was lost: nobody sends one here.
        result = await journal.append(NewEvent(kind="x", source="test", payload={}))
        assert await asyncio.wait_for(far.wait_beyond(0), 30) == result.seq
        assert relay.heard == 0
        assert relay.polled >= 1
    finally:
        await relay.close()


async def test_a_dead_peer_is_forgotten(tmp_path: Path, journal: Journal) -> None:
    # A process that died left its socket file; nobody is bound to it.
    (tmp_path / "bus").mkdir(mode=0o700)
    gone_path = tmp_path / "bus" / "gone"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(gone_path))
    dead.close()
    relay = HeadRelay(tmp_path, SeqBus(), journal.last_seq, poll_s=3600, name="alive")
    await relay.start()  # its first notice finds the dead socket refused
    try:
        relay.notify(1)
        assert not gone_path.exists()
    finally:
        await relay.close()
