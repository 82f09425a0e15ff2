"""``palyra storage copy`` and ``palyra storage migrate`` on a real PostgreSQL
(tests/pg.py): a real embedded installation (events, deliveries with attempts, cursors,
keyring secrets) is copied by the real CLI; the copy holds the same rows, its chain
verifies, a daemon started on it (``backend = "postgres"``) verifies a webhook signed
with the old secret and treats a provider's retry of an old delivery as a duplicate. A
copy killed by SIGKILL resumes; a foreign or non-empty target, a running daemon and an
unreachable target are refused with their exit codes; the password is never printed."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from palyra_py.journal.journal import Journal, NewEvent
from palyra_py.journal.sqlite_journal import SqliteJournal
from palyra_py.secrets.keyring_file import StateDirKeyring
from palyra_py.testing import CapturingReceiver, ManualClock, running_daemon
from tests import leakcheck
from tests.daemon_process import child_env
from tests.fault_helpers import admin_session, subscribe, verify
from tests.helpers import events, send_signed
from tests.pg import PgServer

PASSWORD = "copy-pw-Hx7q"  # the target role's; must never be printed


def push(n: int) -> bytes:
    return json.dumps({"ref": "refs/heads/main", "n": n}).encode()


def delivery_id(n: int) -> str:
    return f"8f7d1c3e-0000-4000-8000-{n:012d}"


def palyra(state: Path, *args: str, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    """The real CLI, as an operator runs it (the keyring is the state dir's file)."""
    done = subprocess.run(
        [sys.executable, "-m", "palyra_py", *args, "--state-dir", str(state)],
        env={**child_env(state), **(env or {})}, capture_output=True, text=True, timeout=120,
    )
    leakcheck.WATCH.record(f"palyra {' '.join(args[:2])}", done.stdout + done.stderr)
    return done


def new_key(directory: Path) -> str:
    text = base64.b64encode(os.urandom(32)).decode()
    leakcheck.WATCH.remember(text)
    path = directory / "secrets.key"
    path.write_text(text + "\n")
    path.chmod(0o600)
    return f"file:{path}"


@pytest.fixture
def target(pg_server: PgServer) -> Iterator[str]:
    """A fresh database owned by a role with a password, and its URI (over the socket)."""
    pg_server.new_database("copy")
    database = pg_server.databases[-1]
    role = f"r_{database}"
    pg_server.psql("postgres", f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
    pg_server.psql("postgres", f"ALTER DATABASE {database} OWNER TO {role}")
    pg_server.psql(database, f"ALTER SCHEMA public OWNER TO {role}")
    yield (f"postgresql://{role}:{PASSWORD}@/{database}"
           f"?host={pg_server.socket_dir}&port=5432")


async def rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


def sqlite_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in conn.execute(sql)]
    finally:
        conn.close()


JOURNAL_SQL = ("SELECT seq, event_id, ts_unix_ms, kind, source, actor, integration_id,"
               " event_type, severity, payload_json, redacted, prev_hash, hash"
               " FROM journal_events ORDER BY seq")
DELIVERIES_SQL = ("SELECT delivery_id, subscription_id, event_seq, event_id, status, attempts,"
                  " next_attempt_ms, created_ms, updated_ms, last_status_code,"
                  " last_error_class FROM deliveries ORDER BY delivery_id")
ATTEMPTS_SQL = ("SELECT delivery_id, attempt_no, started_ms, duration_ms, status_code,"
                " error_class, error_detail, response_excerpt FROM {} ORDER BY 1, 2")
CURSORS_SQL = "SELECT subscription_id, seq FROM {} ORDER BY 1"


async def answer(admin: aiohttp.ClientSession, method: str, path: str,
                 **body: Any) -> dict[str, Any]:
    async with admin.request(method, path, json=body or None) as resp:
        data: dict[str, Any] = await resp.json()
        assert resp.status in (200, 201), data
        return data


async def deliveries_settled(admin: aiohttp.ClientSession, count: int) -> list[dict[str, Any]]:
    """The deliveries once ``count`` of them have their attempt recorded (deadline 15 s)."""
    deadline = time.monotonic() + 15
    while True:
        async with admin.get("/v1/deliveries", params={"limit": "1000"}) as resp:
            found: list[dict[str, Any]] = (await resp.json())["deliveries"]
        if sum(1 for d in found if d["attempts"] >= 1) >= count:
            return found
        assert time.monotonic() < deadline, found
        await asyncio.sleep(0.02)


async def make_installation(state: Path, clock: ManualClock, receiver: CapturingReceiver,
                            http: aiohttp.ClientSession, n: int) -> dict[str, str]:
    """A real embedded installation: a GitHub integration (keyring secret), a subscription
    (keyring signing secret), ``n`` signed webhooks (the last one's first attempt fails),
    an API token. Its secret and token id."""
    keyring = StateDirKeyring(state / "secrets.json")
    async with running_daemon(state, clock=clock, keyring=keyring,
                              delivery__allow_private_networks=True) as daemon, \
            admin_session(daemon.socket_path) as admin:
        added = await answer(admin, "POST", "/v1/webhooks", integration_id="gh",
                             provider="github", secret={"generate": True})
        await subscribe(admin, "ci", receiver.url, events=["github.push"])
        token = await answer(admin, "POST", "/v1/tokens", name="publisher")
        for i in range(n):
            if i == n - 1:
                await receiver.wait_for(n - 1)
                receiver.script = [500]  # the last one's first attempt fails
            status, body, _ = await send_signed(http, daemon, "gh", push(i),
                                                secret=added["secret"],
                                                delivery_id=delivery_id(i))
            assert status == 202, body
        await receiver.wait_for(n)
        await deliveries_settled(admin, n)
    leakcheck.WATCH.remember(added["secret"])
    return {"webhook": added["secret"], "token_id": str(token["token"]["token_id"])}


@pytest.fixture
async def installation(tmp_path: Path, receiver: CapturingReceiver,
                       http: aiohttp.ClientSession) -> AsyncIterator[tuple[Path, dict[str, str]]]:
    with leakcheck.checked_state_dir("pt-copy-") as state:
        secrets = await make_installation(state, ManualClock(), receiver, http, 6)
        yield state, secrets


async def test_a_copy_holds_the_same_rows_verifies_and_a_daemon_runs_on_it(
    installation: tuple[Path, dict[str, str]], target: str, tmp_path: Path,
    http: aiohttp.ClientSession, receiver: CapturingReceiver,
) -> None:
    state, secrets = installation
    key_ref = new_key(tmp_path)
    registry_before = (state / "webhooks.toml").read_text()
    files_before = {p.name: p.read_bytes() for p in state.iterdir()
                    if p.is_file() and not p.name.endswith((".lock", "-shm", "-wal"))}

    done = palyra(state, "storage", "copy", "--to", target, "--key-ref", key_ref, "--json")
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["verified"] and not report["resumed"]
    assert "***" in report["target"]
    by_store = {s["store"]: s for s in report["stores"]}
    journal_rows = sqlite_rows(state / "journal.db", JOURNAL_SQL)
    assert by_store["journal"]["copied"] == len(journal_rows) == report["chain"]["checked"]
    assert by_store["deliveries"]["copied"] == 6
    # The webhook's, the subscription's and the token's keyring secrets.
    assert by_store["secrets"]["copied"] == 3, by_store["secrets"]
    assert 'backend = "postgres"' in report["settings"]
    assert f'key_ref = "{key_ref}"' in report["settings"]

    # The state dir is as it was; the registry, its references moved to db:, is the
    # database's.
    assert {p.name: p.read_bytes() for p in state.iterdir()
            if p.name in files_before} == files_before
    assert (state / "webhooks.toml").read_text() == registry_before
    [(copied_registry, version)] = await rows(
        target, "SELECT document, version FROM palyra_registry")
    assert version == 1
    assert 'secret_ref = "db:webhook:gh"' in copied_registry
    assert "keyring:" not in copied_registry
    assert copied_registry.replace("db:", "keyring:") == registry_before

    # The same rows, exactly.
    assert await rows(target, JOURNAL_SQL) == journal_rows
    assert (await rows(target, DELIVERIES_SQL)
            == sqlite_rows(state / "deliveries.db", DELIVERIES_SQL))
    assert (await rows(target, ATTEMPTS_SQL.format("delivery_attempts"))
            == sqlite_rows(state / "deliveries.db", ATTEMPTS_SQL.format("attempts")))
    assert (await rows(target, CURSORS_SQL.format("delivery_cursors"))
            == sqlite_rows(state / "deliveries.db", CURSORS_SQL.format("cursors")))
    statuses = sorted(r[4] for r in await rows(target, DELIVERIES_SQL))
    assert statuses == ["pending"] + ["succeeded"] * 5  # the first attempt got a 500
    head = await rows(target, "SELECT seq, hash FROM journal_head")
    assert head == [journal_rows[-1][:1] + journal_rows[-1][-1:]]
    # Sealed, never in clear.
    sealed = await rows(target, "SELECT name, ciphertext FROM palyra_secrets ORDER BY name")
    assert [name for name, _ in sealed] == [
        "subscription:ci", f"token:{secrets['token_id']}", "webhook:gh"]
    assert all(secrets["webhook"].encode() not in bytes(box) for _, box in sealed)

    # Switch, as the report says, and run a daemon on the copy.
    (state / "palyra.toml").write_text(
        f'[storage]\nbackend = "postgres"\ndsn = "{target}"\n\n[secrets]\nkey_ref = "{key_ref}"\n')
    async with running_daemon(state, clock=ManualClock(),
                              keyring=StateDirKeyring(tmp_path / "empty-keyring.json"),
                              delivery__allow_private_networks=True) as daemon, \
            admin_session(daemon.socket_path) as admin:
        assert daemon.settings.get("storage", "backend") == "postgres"
        assert (await verify(admin))["ok"]
        listed = await events(admin, limit=1000)
        assert [e["seq"] for e in listed][:len(journal_rows)] == [r[0] for r in journal_rows]
        assert [e["event_id"] for e in listed][:len(journal_rows)] == [
            r[1] for r in journal_rows]
        # The old secret verifies (read from the database: this node's keyring is empty);
        # a provider's retry of a delivery made before the move is a duplicate.
        status, body, _ = await send_signed(http, daemon, "gh", push(100),
                                            secret=secrets["webhook"],
                                            delivery_id=delivery_id(100))
        assert status == 202, body
        status, body, _ = await send_signed(http, daemon, "gh", push(0),
                                            secret=secrets["webhook"],
                                            delivery_id=delivery_id(0))
        assert (status, body["status"]) == (200, "duplicate"), body
        first_push = next(r for r in journal_rows if (r[6], r[7]) == ("gh", "push"))
        assert (body["seq"], body["event_id"]) == first_push[:2]
        # The deliveries are the copy's, and the subscription goes on from its cursor:
        # the new event is delivered, signed with the subscription's db: secret.
        async with admin.get("/v1/deliveries", params={"limit": "1000"}) as resp:
            listed_deliveries = (await resp.json())["deliveries"]
        by_id = {d["delivery_id"]: d for d in listed_deliveries}
        for row in sqlite_rows(state / "deliveries.db", DELIVERIES_SQL):
            assert (by_id[row[0]]["event_seq"], by_id[row[0]]["attempts"]) == (row[2], row[5])
        await receiver.wait_for(7)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "palyra_py", "system", "events", "verify",
            "--state-dir", str(state), env=child_env(state),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err
        assert PASSWORD.encode() not in out + err


async def test_a_killed_copy_resumes_where_its_last_batch_committed(
    target: str, tmp_path: Path,
) -> None:
    with leakcheck.checked_state_dir("pt-copyk-") as state:
        journal = Journal(SqliteJournal(state / "journal.db", clock=time.time))
        await journal.start()
        for start in range(0, 6000, 500):
            await asyncio.gather(*(journal.append(NewEvent(
                kind="test.bulk", source="test", payload={"n": i, "pad": "x" * 200}))
                for i in range(start, start + 500)))
        await journal.close()
        total = sqlite_rows(state / "journal.db", "SELECT count(*) FROM journal_events")[0][0]

        proc = subprocess.Popen(
            [sys.executable, "-m", "palyra_py", "storage", "copy", "--to", target,
             "--batch-rows", "50", "--json", "--state-dir", str(state)],
            env=child_env(state), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            # Kill it once some batches are in, well before the end.
            deadline = time.monotonic() + 60
            seq = 0
            while seq < 500:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline
                found = await rows(target, "SELECT to_regclass('journal_head') IS NOT NULL")
                if found[0][0]:
                    seq = (await rows(target, "SELECT seq FROM journal_head"))[0][0]
                await asyncio.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.communicate()
        partial = (await rows(target, "SELECT count(*) FROM journal_events"))[0][0]
        assert 500 <= partial < total

        done = palyra(state, "storage", "copy", "--to", target, "--json")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["resumed"] and report["verified"]
        journal_done = next(s for s in report["stores"] if s["store"] == "journal")
        assert journal_done["already"] >= partial
        assert journal_done["already"] + journal_done["copied"] == total
        assert (await rows(target, JOURNAL_SQL)
                == sqlite_rows(state / "journal.db", JOURNAL_SQL))

        # Once more: nothing left to copy, nothing written twice.
        again = json.loads(palyra(state, "storage", "copy", "--to", target, "--json").stdout)
        assert next(s for s in again["stores"] if s["store"] == "journal")["copied"] == 0
        assert (await rows(target, "SELECT count(*) FROM journal_events"))[0][0] == total


async def small_installation(state: Path, n: int) -> None:
    journal = Journal(SqliteJournal(state / "journal.db", clock=time.time))
    await journal.start()
    for i in range(n):
        await journal.append(NewEvent(kind="test.small", source="test", payload={"n": i}))
    await journal.close()


async def test_refusals_each_with_its_exit_code_and_nothing_written(
    target: str, pg_server: PgServer, tmp_path: Path,
) -> None:
    with leakcheck.checked_state_dir("pt-copya-") as one, \
            leakcheck.checked_state_dir("pt-copyb-") as other:
        await small_installation(one, 3)
        await small_installation(other, 3)
        # Neither or both targets, or no installation: a usage error.
        assert palyra(one, "storage", "copy").returncode == 2
        done = palyra(tmp_path, "storage", "copy", "--to", target)
        assert done.returncode == 2 and "holds no journal.db" in done.stderr
        assert palyra(one, "storage", "copy", "--to", "http://x/y").returncode == 2

        # Unreachable: exit 3, and the URI's password is not in the message.
        gone = target.replace(f"host={pg_server.socket_dir}", f"host={tmp_path}")
        done = palyra(one, "storage", "copy", "--to", gone)
        assert done.returncode == 3, done.stderr
        assert PASSWORD not in done.stdout + done.stderr and "unreachable" in done.stderr

        assert palyra(one, "storage", "copy", "--to", target).returncode == 0
        # Another installation into the same database: refused, nothing written.
        before = await rows(target, JOURNAL_SQL)
        done = palyra(other, "storage", "copy", "--to", target)
        assert done.returncode == 4, done.stderr
        assert "another installation" in done.stderr and PASSWORD not in done.stderr
        assert await rows(target, JOURNAL_SQL) == before

        # This one after its journal moved on: refused too.
        await small_installation(one, 1)
        done = palyra(one, "storage", "copy", "--to", target)
        assert done.returncode == 4 and "before its daemon ran again" in done.stderr

        # A database holding palyra data that no copy made: refused.
        pg_server.psql(pg_server.databases[-1], "DELETE FROM palyra_copy")
        done = palyra(other, "storage", "copy", "--to", target)
        assert done.returncode == 4 and "not empty" in done.stderr, done.stderr


async def test_a_running_daemon_refuses_the_copy_and_a_copy_holds_off_the_daemon(
    target: str,
) -> None:
    with leakcheck.checked_state_dir("pt-copyd-") as state:
        async with running_daemon(state) as daemon:
            done = palyra(state, "storage", "copy", "--to", target)
            assert done.returncode == 4, done.stderr
            assert "a palyra daemon (pid" in done.stderr and "stop" in done.stderr
            assert daemon.started_at > 0
        # Stopped: the lock is free again, and while a copy holds it no daemon starts.
        from palyra_py.server.daemon import DaemonError
        from palyra_py.storage.state_lock import StateDirLock

        lock = StateDirLock(state, "palyra storage copy")
        lock.acquire()
        try:
            with pytest.raises(DaemonError, match="palyra storage copy"):
                async with running_daemon(state):
                    pass
        finally:
            lock.release()
        async with running_daemon(state):
            pass


async def test_migrate_applies_and_shows_every_store(target: str, tmp_path: Path) -> None:
    with leakcheck.checked_state_dir("pt-copym-") as state:
        (state / "palyra.toml").write_text(f'[storage]\nbackend = "postgres"\ndsn = "{target}"\n')
        done = palyra(state, "storage", "migrate", "--status", "--json")
        assert done.returncode == 4, done.stderr  # everything pending
        pending = {s["store"]: s["pending"] for s in json.loads(done.stdout)["stores"]}
        assert pending == {"journal": [1, 2], "deliveries": [1], "secrets": [1],
                           "registry": [1], "cluster": [1]}
        done = palyra(state, "storage", "migrate", "--json")
        assert done.returncode == 0, done.stderr
        assert PASSWORD not in done.stdout + done.stderr
        applied = {s["store"]: s["applied_now"] for s in json.loads(done.stdout)["stores"]}
        assert applied == {"journal": [1, 2], "deliveries": [1], "secrets": [1],
                           "registry": [1], "cluster": [1]}
        done = palyra(state, "storage", "migrate", "--status")
        assert done.returncode == 0, done.stderr
        assert "***" in done.stderr and PASSWORD not in done.stdout + done.stderr
        # SQLite: the files' versions, nothing to do.
        (state / "palyra.toml").unlink()
        done = palyra(state, "storage", "migrate", "--status", "--json")
        assert done.returncode == 0
        assert [s["store"] for s in json.loads(done.stdout)["stores"]] == ["journal",
                                                                           "deliveries"]


async def test_a_journal_cut_by_retention_copies_with_its_checkpoint(target: str) -> None:
    with leakcheck.checked_state_dir("pt-copyr-") as state:
        clock = ManualClock(time.time())
        journal = Journal(SqliteJournal(state / "journal.db", clock=clock))
        await journal.start()
        for i in range(10):
            await journal.append(NewEvent(kind="test.old", source="test", payload={"n": i}))
        clock.advance(2 * 86400)
        for i in range(5):
            await journal.append(NewEvent(kind="test.new", source="test", payload={"n": i}))
        assert await journal.apply_retention(max_age_s=86400, max_bytes=None) == 10
        await journal.close()
        checkpoint = sqlite_rows(state / "journal.db",
                                 "SELECT seq, hash FROM journal_checkpoint")

        done = palyra(state, "storage", "copy", "--to", target, "--json")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["verified"]
        assert (report["chain"]["first_seq"], report["chain"]["checked"]) == (11, 5)
        assert await rows(target, "SELECT seq, hash FROM journal_checkpoint") == checkpoint
        assert (await rows(target, JOURNAL_SQL)
                == sqlite_rows(state / "journal.db", JOURNAL_SQL))


class Interrupted(Exception):
    """Stands for the copy dying right after a committed batch."""


async def test_a_copy_stopped_inside_the_deliveries_resumes_after_its_last_batch(
    installation: tuple[Path, dict[str, str]], target: str,
) -> None:
    from palyra_py.server.store_catalog import copy_installation

    state, _ = installation
    seen: list[int] = []

    def stop_after_three(store: str, unit: str, total: int) -> Any:
        def advance(n: int) -> None:
            if store == "deliveries" and n:
                seen.append(n)
                if sum(seen) >= 3:
                    raise Interrupted
        return advance

    def copy(progress: Any) -> Any:
        return copy_installation(state, target, keys=None, resolve=lambda ref: "",
                                 now_ms=lambda: int(time.time() * 1000), progress=progress,
                                 batch_rows=2)  # one delivery a batch

    with pytest.raises(Interrupted):
        await copy(stop_after_three)
    assert (await rows(target, "SELECT count(*) FROM deliveries"))[0][0] == 3
    report = await copy(lambda store, unit, total: (lambda n: None))
    done = {d.store: d for d in report.stores}
    assert report.resumed and (done["deliveries"].already, done["deliveries"].copied) == (3, 3)
    assert done["journal"].copied == 0
    assert (await rows(target, DELIVERIES_SQL)
            == sqlite_rows(state / "deliveries.db", DELIVERIES_SQL))
    assert (await rows(target, ATTEMPTS_SQL.format("delivery_attempts"))
            == sqlite_rows(state / "deliveries.db", ATTEMPTS_SQL.format("attempts")))


async def test_a_target_named_by_a_reference_is_shown_by_it_and_a_newer_schema_refused(
    target: str, pg_server: PgServer,
) -> None:
    with leakcheck.checked_state_dir("pt-copyf-") as state:
        await small_installation(state, 2)
        done = palyra(state, "storage", "copy", "--to-ref", "env:COPY_TARGET_DSN", "--json",
                      env={"COPY_TARGET_DSN": target})
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["target"] == "env:COPY_TARGET_DSN"
        assert 'dsn_ref = "env:COPY_TARGET_DSN"' in report["settings"]
        assert PASSWORD not in done.stdout + done.stderr
        # An unset variable: a usage error naming the reference.
        done = palyra(state, "storage", "copy", "--to-ref", "env:NO_SUCH_DSN_VAR")
        assert done.returncode == 2 and "NO_SUCH_DSN_VAR" in done.stderr

        # A schema newer than this palyra knows: migrate refuses, naming the store.
        pg_server.psql(pg_server.databases[-1],
                       "INSERT INTO palyra_schema (store, version, name)"
                       " VALUES ('journal', 99, 'from the future')")
        (state / "palyra.toml").write_text(
            f'[storage]\nbackend = "postgres"\ndsn = "{target}"\n')
        done = palyra(state, "storage", "migrate")
        assert done.returncode == 2, done.stderr
        assert "journal schema in PostgreSQL is at version 99" in done.stderr
        assert PASSWORD not in done.stdout + done.stderr
