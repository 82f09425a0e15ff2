"""Several processes append to one journal file: the chain head is read inside each write
transaction, so seqs stay gap-free, the chain verifies, and replay keys hold across
processes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from palyra_py.journal.journal import EventFilter, Journal
from palyra_py.journal.sqlite_journal import SqliteJournal

COUNT = 300
REPO = Path(__file__).resolve().parent.parent


async def _appender(path: Path, tag: str, mode: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.journal_appender", str(path), str(COUNT), tag, mode,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env, cwd=REPO)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line == b"ready\n", line
    return proc


async def _results(
    proc: asyncio.subprocess.Process,
) -> tuple[list[dict[str, Any]], list[tuple[int, int]]]:
    """Each append's result, and each commit's ``(last_seq, events)``."""
    assert proc.stdout is not None
    out = await asyncio.wait_for(proc.stdout.read(), 60)
    assert await proc.wait() == 0
    *appends, commits = [json.loads(line) for line in out.splitlines()]
    return appends, [(seq, events) for seq, events in commits["commits"]]


@pytest.mark.parametrize("mode", ["plain", "locked"])
async def test_two_processes_append_gap_free_and_chained(tmp_path: Path, mode: str) -> None:
    """``locked``: the writers also take turns on the writers' lock file, as a daemon's
    processes do; ``plain``: SQLite's own locking alone."""
    path = tmp_path / "journal.db"
    first = Journal(SqliteJournal(path))
    await first.start()  # creates the file and its schema before the children open it
    await first.close()
    procs = [await _appender(path, "a", mode), await _appender(path, "b", mode)]
    for proc in procs:  # both are open and waiting: let them go together
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
    results, commits = zip(*[await _results(proc) for proc in procs], strict=True)

    journal = Journal(SqliteJournal(path))
    await journal.start()
    try:
        verified = await journal.verify()
        assert verified.ok, verified
        events = await journal.list(EventFilter(), limit=10 * COUNT)
    finally:
        await journal.close()
    seqs = [event.seq for event in events]
    shared = COUNT // 3 + (COUNT % 3 > 0)
    assert seqs == list(range(1, 2 * COUNT - shared + 1))
    # Both appenders wrote, interleaved (not one after the other is the point, but either
    # way every seq is taken once).
    assert {event.payload["appender"] for event in events} == {"a", "b"}
    # Each shared replay key was journaled once: the other process got the original back.
    by_key: dict[str, set[int]] = {}
    for result in results[0] + results[1]:
        if result["key"] is not None:
            by_key.setdefault(result["key"], set()).add(result["seq"])
    assert len(by_key) == shared
    assert all(len(found) == 1 for found in by_key.values())
    duplicates = sum(result["duplicate"] for result in results[0] + results[1])
    assert duplicates == shared
    acknowledged = {result["seq"] for result in results[0] + results[1]}
    assert acknowledged == set(seqs)
    # Each process's commits count its own events (palyra_journal_batch_events): together
    # exactly the journal's rows, each process the rows it wrote, whatever the other's
    # commits in between moved the head by.
    for own, its_commits in zip(results, commits, strict=True):
        assert sum(events for _, events in its_commits) == sum(
            not result["duplicate"] for result in own)
    assert sum(events for its_commits in commits for _, events in its_commits) == len(seqs)
