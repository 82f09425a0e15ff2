"""A damaged journal (issue 9, item 9): ``journal.db`` truncated or overwritten in place,
under the running daemon and between two runs. Real files are damaged for real; the daemon
must stop acknowledging (503 ``journal_unavailable``), say not ready, answer the admin
listing with a documented 503 (not a 500), say what happened and what to do, and refuse to
start on the damaged file."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest

from palyra_py.journal.journal import Journal, JournalDamaged
from palyra_py.journal.sqlite_journal import SqliteJournal
from palyra_py.server.daemon import EXIT_JOURNAL_DAMAGED, Daemon, DaemonError
from palyra_py.testing import running_daemon
from tests.daemon_process import child_env
from tests.fault_helpers import admin_session, publish
from tests.helpers import add_integration, send_signed

BODY = json.dumps({"ref": "refs/heads/main", "pad": "x" * 6000}).encode()
PAGE = 4096


def checkpoint(journal_db: Path) -> int:
    """Copy every page from the WAL into ``journal.db`` (another connection, as a backup
    tool would), so that the file holds the rows; its page count."""
    conn = sqlite3.connect(journal_db)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return int(conn.execute("PRAGMA page_count").fetchone()[0])
    finally:
        conn.close()


def truncate(path: Path) -> None:
    os.truncate(path, 2 * PAGE)


def truncate_to_nothing(path: Path) -> None:
    os.truncate(path, 0)


def overwrite_header(path: Path) -> None:
    with open(path, "r+b") as file:
        file.write(b"\xa5" * 100)


def overwrite_pages(path: Path) -> None:
    """Garbage over four pages in the middle (rows), in place: same inode, same size, a
    sound header; only reading those pages tells."""
    pages = path.stat().st_size // PAGE
    with open(path, "r+b") as file:
        file.seek(pages // 2 * PAGE)
        file.write(b"\x5a" * (4 * PAGE))


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated": truncate,
    "truncated-to-0": truncate_to_nothing,
    "header-overwritten": overwrite_header,
    "pages-overwritten": overwrite_pages,
}


async def fill(admin: aiohttp.ClientSession, count: int = 40) -> None:
    for n in range(count):
        status, body = await publish(admin, "app.filled", n=n, pad="p" * 6000)
        assert status == 201, body


async def status_of(admin: aiohttp.ClientSession) -> dict[str, Any]:
    async with admin.get("/v1/status") as resp:
        answer: dict[str, Any] = await resp.json()
        assert resp.status == 200, answer
        return answer


def assert_says_what_to_do(message: str, journal_db: Path) -> None:
    assert "damaged" in message
    assert "palyra system events verify" in message
    assert f"mv {journal_db}" in message and "backup" in message


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
async def test_a_journal_damaged_under_the_daemon_is_acknowledged_no_more(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession, damage: str
) -> None:
    await add_integration(admin, "gh")
    await fill(admin)
    assert (await send_signed(http, daemon, "gh", BODY, delivery_id="before-damage-0001"))[0] \
        == 202
    assert checkpoint(daemon.journal_path) > 20
    DAMAGE[damage](daemon.journal_path)

    # The listing reads the file: a documented 503, never a 500.
    async with admin.get("/v1/events", params={"limit": "1000"}) as resp:
        listed = await resp.json()
    if damage == "header-overwritten":
        # Page 1 stays in the readers' cache: the header check after the next commit (or
        # the readiness probe) finds it instead.
        assert resp.status in (200, 503), listed
    else:
        assert (resp.status, listed["error"]) == (503, "journal_unavailable"), listed

    status, body, headers = await send_signed(http, daemon, "gh", BODY,
                                              delivery_id="after-damage-0001")
    assert (status, body.get("error")) == (503, "journal_unavailable"), body
    assert cast(Any, headers).get("Retry-After") == "60"
    published = await publish(admin, "app.after")
    assert (published[0], published[1]["error"]) == (503, "journal_unavailable")

    async with http.get(f"http://127.0.0.1:{daemon.ingress_port}/readyz") as resp:
        ready = await resp.json()
    assert (resp.status, ready["status"], ready["reason"]) == \
        (503, "not_ready", "journal_unavailable"), ready
    assert_says_what_to_do(ready["detail"], daemon.journal_path)

    problem = (await status_of(admin))["journal"]["problem"]
    assert_says_what_to_do(problem, daemon.journal_path)
    assert daemon.journal.damaged


async def test_the_damage_is_logged_once_with_what_to_do(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession,
) -> None:
    import structlog.testing

    await fill(admin, 10)
    checkpoint(daemon.journal_path)
    truncate(daemon.journal_path)
    with structlog.testing.capture_logs() as logs:
        for n in range(3):
            assert (await publish(admin, "app.after", n=n))[0] == 503
    # The writer reports the damage (a loop callback) before it settles the refused append.
    damaged = [entry for entry in logs if entry["event"] == "journal_damaged"]
    assert len(damaged) == 1, logs
    assert_says_what_to_do(damaged[0]["error"], daemon.journal_path)


async def _damaged_state(state_dir: Path, damage: str) -> None:
    async with running_daemon(state_dir) as daemon, \
            admin_session(daemon.socket_path) as admin:
        await fill(admin)
    # A clean stop checkpointed everything into journal.db and removed the WAL.
    assert not (state_dir / "journal.db-wal").exists()
    DAMAGE[damage](state_dir / "journal.db")


@pytest.mark.parametrize("damage", ["truncated", "header-overwritten", "pages-overwritten"])
async def test_the_daemon_refuses_to_start_on_a_damaged_journal(
    state_dir: Path, damage: str
) -> None:
    await _damaged_state(state_dir, damage)
    with pytest.raises(DaemonError) as info:
        async with running_daemon(state_dir):
            pass
    assert info.value.exit_code == EXIT_JOURNAL_DAMAGED
    assert_says_what_to_do(str(info.value), state_dir / "journal.db")
    # Nothing was appended to it, nor a new journal begun.
    assert not (state_dir / "journal.db-wal").exists() or \
        (state_dir / "journal.db-wal").stat().st_size == 0


async def test_palyra_daemon_run_exits_with_the_documented_code_and_message(
    state_dir: Path,
) -> None:
    await _damaged_state(state_dir, "pages-overwritten")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "palyra_py", "daemon", "run", "--listen", "127.0.0.1:0",
        "--log-format", "json", env=child_env(state_dir),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == EXIT_JOURNAL_DAMAGED, stderr
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith(b"{")]
    refusal = next(r for r in records if r.get("event") == "daemon_cannot_start")
    assert_says_what_to_do(refusal["error"], state_dir / "journal.db")
    assert "quick check" in refusal["error"]


async def test_moving_the_damaged_files_aside_lets_the_daemon_start(state_dir: Path) -> None:
    """What the message says to do works: with the files moved aside, a new journal."""
    await _damaged_state(state_dir, "truncated")
    aside = state_dir / "damaged"
    aside.mkdir()
    for name in ("journal.db", "journal.db-wal", "journal.db-shm"):
        if (state_dir / name).exists():
            (state_dir / name).rename(aside / name)
    async with running_daemon(state_dir) as daemon:
        assert await daemon.journal.last_seq() >= 1


async def test_the_start_check_is_bounded(tmp_path: Path) -> None:
    journal = Journal(SqliteJournal(tmp_path / "journal.db", start_check_s=0))
    await journal.start()
    assert journal.start_check == "skipped"
    await journal.close()
    checked = Journal(SqliteJournal(tmp_path / "journal.db"))
    await checked.start()
    assert checked.start_check == "ok"
    await checked.close()
    overwrite_header(tmp_path / "journal.db")
    with pytest.raises(JournalDamaged):
        await Journal(SqliteJournal(tmp_path / "journal.db", start_check_s=0)).start()


def header_ahead_of_the_file(path: Path, pages: int) -> None:
    """What a checkpoint that grows the file does first, and what one that could not copy
    every frame leaves until the next: page 1, counting ``pages`` more pages, is written
    before (or without) the pages after the end of the file."""
    with open(path, "r+b") as file:
        head = bytearray(file.read(100))
        head[28:32] = (int.from_bytes(head[28:32], "big") + pages).to_bytes(4, "big")
        head[92:96] = head[24:28]
        file.seek(0)
        file.write(head)


async def test_a_header_ahead_of_the_file_is_no_truncation_but_a_shrunk_file_is(
    daemon: Daemon, admin: aiohttp.ClientSession,
) -> None:
    """A file shorter than its header counts is what a checkpoint leaves for a while (a
    reader on an older snapshot stops it short): not damage, appends go on. A file that
    shrank under the daemon, shorter than its header counts, is truncated: no more 2xx."""
    await fill(admin)
    assert checkpoint(daemon.journal_path) > 20
    await fill(admin, 10)  # page 1 is in the WAL again: SQLite reads it from there
    header_ahead_of_the_file(daemon.journal_path, 1000)
    for n in range(3):
        assert (await publish(admin, "app.during", n=n))[0] == 201
    assert daemon.journal.unavailable_reason is None

    os.truncate(daemon.journal_path, 2 * PAGE)  # no read in between: the commit finds it
    status, body = await publish(admin, "app.after")
    assert (status, body["error"]) == (503, "journal_unavailable")
    assert daemon.journal.damaged and "truncated" in str(daemon.journal.unavailable_reason)


async def test_daemon_status_shows_the_journal_problem(
    daemon: Daemon, admin: aiohttp.ClientSession,
) -> None:
    from tests.test_cli_e2e import palyra

    await fill(admin, 10)
    checkpoint(daemon.journal_path)
    overwrite_header(daemon.journal_path)
    code, out, err = await palyra(daemon.state_dir, "daemon", "status")
    assert code == 0, err
    # The panel wraps long values: join its lines without the box drawing.
    flat = " ".join(out.replace("│", " ").split())
    assert "journal problem" in flat and "damaged" in flat, out
    assert "palyra system events verify" in flat, out
