"""``deliveries.db`` removed (issue 9, item 10): under the running daemon (dispatching
stops, the log and readiness say so, and where a restart must resume), and between two
runs (the daemon refuses to guess; ``--deliveries-from`` chooses). Real files are removed
for real; real daemons, in-process and as ``palyra daemon run`` children."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import time
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog.testing

from palyra_py.delivery.start import DeliveriesFrom, parse_deliveries_from
from palyra_py.server.daemon import EXIT_DELIVERIES_MISSING, Daemon, DaemonError
from palyra_py.testing import CapturingReceiver, ManualClock, MemoryKeyring, running_daemon
from tests.daemon_process import child_env
from tests.fault_helpers import admin_session, publish, subscribe

DELIVERY_FILES = ("deliveries.db", "deliveries.db-wal", "deliveries.db-shm")
SETTINGS = {"delivery__allow_private_networks": True}


def remove_delivery_store(state_dir: Path) -> None:
    for name in DELIVERY_FILES:
        (state_dir / name).unlink(missing_ok=True)


def started(state_dir: Path, clock: ManualClock, keyring: MemoryKeyring,
            deliveries_from: DeliveriesFrom | None) -> AbstractAsyncContextManager[Daemon]:
    """The daemon of these tests (deliveries to the loopback receiver allowed), started
    with ``deliveries_from``."""
    return running_daemon(state_dir, clock=clock, keyring=keyring,
                          deliveries_from=deliveries_from,
                          delivery__allow_private_networks=True)


async def publish_seq(admin: aiohttp.ClientSession, i: int) -> int:
    status, body = await publish(admin, "app.step", i=i)
    assert status == 201, body
    return int(body["seq"])


async def deliveries(admin: aiohttp.ClientSession) -> list[dict[str, Any]]:
    async with admin.get("/v1/deliveries", params={"limit": "1000"}) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        found: list[dict[str, Any]] = body["deliveries"]
        return found


async def a_state_with_history(state_dir: Path, clock: ManualClock, keyring: MemoryKeyring,
                               receiver: CapturingReceiver, count: int = 3) -> list[int]:
    """A subscription and ``count`` events delivered, one minute apart; their seqs."""
    async with running_daemon(state_dir, clock=clock, keyring=keyring, **SETTINGS) as d, \
            admin_session(d.socket_path) as admin:
        await subscribe(admin, "app", receiver.url, events=["app.*"])
        seqs = []
        for i in range(count):
            seqs.append(await publish_seq(admin, i))
            clock.advance(60)
        await receiver.wait_for(count)
        await d.dispatcher.wait_for_attempts(count)
    return seqs


async def test_delivery_store_removed_under_the_daemon_stops_dispatching_and_says_where_to_resume(
    state_dir: Path, memory_keyring: MemoryKeyring, receiver: CapturingReceiver,
    http: aiohttp.ClientSession,
) -> None:
    clock = ManualClock(start=time.time())
    receiver.script = [500]  # the first event's first attempt fails: a retry is pending
    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring, **SETTINGS) as d, \
            admin_session(d.socket_path) as admin:
        await subscribe(admin, "app", receiver.url, events=["app.*"])
        retried = await publish_seq(admin, 0)
        await publish_seq(admin, 1)
        await receiver.wait_for(2)
        await d.dispatcher.wait_for_attempts(2)

        remove_delivery_store(state_dir)
        with structlog.testing.capture_logs() as logs:
            async with http.get(f"http://127.0.0.1:{d.ingress_port}/readyz") as resp:
                ready = await resp.json()
            await asyncio.wait_for(d.delivery_store_lost.wait(), 10)
        assert (resp.status, ready["reason"]) == (503, "deliveries_unavailable"), ready
        removed = [e for e in logs if e["event"] == "delivery_store_removed"]
        assert len(removed) == 1 and removed[0]["log_level"] == "error", logs
        # From the pending retry on: nothing is lost by a restart from there.
        assert removed[0]["deliveries_from"] == f"seq:{retried}"
        assert f"--deliveries-from seq:{retried}" in removed[0]["what_to_do"]

        # Still acknowledged and journaled, but no longer dispatched.
        later = [await publish_seq(admin, i) for i in (2, 3)]
        assert d.dispatcher.halted()
        assert await d.dispatcher.enqueue_once() is False
        assert await d.dispatcher.schedule_once() is None
        assert d.dispatcher.in_flight("app") == (0, 0)
        async with admin.get("/v1/status") as resp:
            status = await resp.json()
        assert "deliveries.db was removed" in status["deliveries"]["problem"]

    # The next start refuses to guess ...
    with pytest.raises(DaemonError) as info:
        async with started(state_dir, clock, memory_keyring, None):
            pass
    assert info.value.exit_code == EXIT_DELIVERIES_MISSING

    # ... and from the seq the log named, the retry and every later event are delivered.
    receiver.received.clear()
    async with started(state_dir, clock, memory_keyring, parse_deliveries_from(
            removed[0]["deliveries_from"])) as d, admin_session(d.socket_path) as admin:
        got = await receiver.wait_for(4)
        assert sorted(r.json()["data"]["i"] for r in got) == [0, 1, 2, 3]
        assert {d["event_seq"] for d in await deliveries(admin)} == {retried, retried + 1,
                                                                       *later}


async def test_a_start_without_the_delivery_store_refuses_to_guess(
    state_dir: Path, memory_keyring: MemoryKeyring, receiver: CapturingReceiver,
) -> None:
    clock = ManualClock(start=time.time())
    await a_state_with_history(state_dir, clock, memory_keyring, receiver)
    remove_delivery_store(state_dir)
    with pytest.raises(DaemonError) as info:
        async with started(state_dir, clock, memory_keyring, None):
            pass
    message = str(info.value)
    assert info.value.exit_code == EXIT_DELIVERIES_MISSING
    for hint in ("deliveries.db is missing", "--deliveries-from head", "--deliveries-from seq:N",
                 "backup"):
        assert hint in message, message
    # Nothing was made meanwhile: the next start still has the choice to make.
    assert not (state_dir / "deliveries.db").exists()


async def test_deliveries_from_head_skips_the_gap(
    state_dir: Path, memory_keyring: MemoryKeyring, receiver: CapturingReceiver,
) -> None:
    clock = ManualClock(start=time.time())
    await a_state_with_history(state_dir, clock, memory_keyring, receiver)
    remove_delivery_store(state_dir)
    async with started(state_dir, clock, memory_keyring, DeliveriesFrom("head")) as d, \
            admin_session(d.socket_path) as admin:
        new = await publish_seq(admin, 9)
        got = await receiver.wait_for(4)
        assert got[-1].json()["data"] == {"i": 9}
        assert [d["event_seq"] for d in await deliveries(admin)] == [new]


@pytest.mark.parametrize("how", ["seq", "time"])
async def test_deliveries_from_a_seq_or_a_time_delivers_again_from_there(
    state_dir: Path, memory_keyring: MemoryKeyring, receiver: CapturingReceiver, how: str,
) -> None:
    clock = ManualClock(start=time.time())
    seqs = await a_state_with_history(state_dir, clock, memory_keyring, receiver)
    remove_delivery_store(state_dir)
    if how == "seq":
        choice = parse_deliveries_from(f"seq:{seqs[1]}")
    else:
        choice = parse_deliveries_from(_time_of(state_dir, seqs[1]))
    receiver.received.clear()
    async with started(state_dir, clock, memory_keyring, choice) as d, \
            admin_session(d.socket_path) as admin:
        got = await receiver.wait_for(2)
        assert sorted(r.json()["data"]["i"] for r in got) == [1, 2]
        assert sorted(d["event_seq"] for d in await deliveries(admin)) == seqs[1:]


def _time_of(state_dir: Path, seq: int) -> str:
    """The stamped time of event ``seq``, as the operator would copy it from the listing."""
    conn = sqlite3.connect(state_dir / "journal.db")
    try:
        (ms,) = conn.execute("SELECT ts_unix_ms FROM journal_events WHERE seq = ?",
                             (seq,)).fetchone()
    finally:
        conn.close()
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


async def test_no_choice_is_needed_without_subscriptions_or_history(
    state_dir: Path, memory_keyring: MemoryKeyring,
) -> None:
    clock = ManualClock(start=time.time())
    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring) as d, \
            admin_session(d.socket_path) as admin:
        await publish_seq(admin, 0)
    remove_delivery_store(state_dir)
    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring) as d:
        assert d.deliveries.path.exists()


async def test_a_first_start_with_subscriptions_needs_no_choice(
    state_dir: Path, memory_keyring: MemoryKeyring, receiver: CapturingReceiver,
) -> None:
    """The registry has subscriptions, but neither journal nor delivery store exist yet
    (a registry written by hand, or copied to a new machine): nothing to lose."""
    clock = ManualClock(start=time.time())
    await a_state_with_history(state_dir, clock, memory_keyring, receiver, count=1)
    for name in ("journal.db", "journal.db-wal", "journal.db-shm", *DELIVERY_FILES):
        (state_dir / name).unlink(missing_ok=True)
    async with started(state_dir, clock, memory_keyring, None) as d, \
            admin_session(d.socket_path) as admin:
        await publish_seq(admin, 7)
        assert (await receiver.wait_for(2))[-1].json()["data"] == {"i": 7}


async def test_a_wal_left_without_its_database_is_moved_aside(
    state_dir: Path, memory_keyring: MemoryKeyring, receiver: CapturingReceiver,
) -> None:
    clock = ManualClock(start=time.time())
    await a_state_with_history(state_dir, clock, memory_keyring, receiver, count=1)
    remove_delivery_store(state_dir)
    (state_dir / "deliveries.db-wal").write_bytes(b"\x37\x7f\x06\x82" + b"\0" * 28)
    async with started(state_dir, clock, memory_keyring, DeliveriesFrom("head")) as d, \
            admin_session(d.socket_path) as admin:
        await publish_seq(admin, 8)
        assert (await receiver.wait_for(2))[-1].json()["data"] == {"i": 8}
    assert len(list(state_dir.glob("deliveries.db-wal.orphaned-*"))) == 1


async def test_palyra_daemon_run_exits_4_without_a_choice_and_2_for_a_bad_one(
    state_dir: Path, memory_keyring: MemoryKeyring, receiver: CapturingReceiver,
) -> None:
    clock = ManualClock(start=time.time())
    await a_state_with_history(state_dir, clock, memory_keyring, receiver, count=1)
    remove_delivery_store(state_dir)

    async def run(*args: str) -> tuple[int, bytes]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "palyra_py", "daemon", "run", "--listen", "127.0.0.1:0",
            "--log-format", "json", *args, env=child_env(state_dir),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, stderr

    code, stderr = await run()
    assert code == EXIT_DELIVERIES_MISSING, stderr
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith(b"{")]
    refusal = next(r for r in records if r.get("event") == "daemon_cannot_start")
    assert "--deliveries-from head" in refusal["error"]
    code, stderr = await run("--deliveries-from", "yesterday-ish")
    assert code == 2 and b"--deliveries-from" in stderr, stderr


def test_deliveries_from_values() -> None:
    assert parse_deliveries_from("head") == DeliveriesFrom("head")
    assert parse_deliveries_from("seq:42") == DeliveriesFrom("seq", 42)
    moment = parse_deliveries_from("2026-12-07T10:00Z")
    assert moment == DeliveriesFrom(
        "time", int(datetime(2026, 12, 7, 10, 0, tzinfo=UTC).timestamp() * 1000))
    for bad in ("seq:0", "seq:x", "2026-12-07T10:00", "tomorrow", ""):
        with pytest.raises(ValueError, match="deliveries-from"):
            parse_deliveries_from(bad)
