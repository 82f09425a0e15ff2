"""``db:`` secrets across nodes, on a real PostgreSQL (tests/pg.py): two daemons in this
process, each with its own state dir, share one database. A secret generated on node A is
sealed in the shared table (never in a keyring, never in clear) and verifies on node B; a
rotation on A is in force on B within two of B's polls (``REFRESH_BOUND_S``); a keyring
secret in cluster mode is ready with a per-node warning; ``palyra secrets reencrypt``
moves every row to a new key, once. The key is watched for by the suite's leak check."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from palyra_py.secrets.postgres import PostgresSecrets
from palyra_py.secrets.sealing import Keys, key_id
from palyra_py.secrets.shared import POLL_INTERVAL_S, REFRESH_BOUND_S, DbSecrets
from palyra_py.server.daemon import Daemon
from palyra_py.testing import ManualClock, MemoryKeyring, running_daemon
from tests import leakcheck
from tests.fault_helpers import admin_session
from tests.helpers import send_signed
from tests.pg import PgServer


def new_key(directory: Path, name: str) -> tuple[bytes, str]:
    """A random key in a 0600 file; its bytes and its ``file:`` ref. The leak check
    watches for its text from now on."""
    raw = os.urandom(32)
    text = base64.b64encode(raw).decode()
    leakcheck.WATCH.remember(text)
    leakcheck.WATCH.remember(raw.hex())
    path = directory / name
    path.write_text(text + "\n")
    path.chmod(0o600)
    return raw, f"file:{path}"


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    """Where the key files are: outside every state dir (the leak check scans those)."""
    return tmp_path


@contextlib.asynccontextmanager
async def node(pg: PgServer, database: str, clock: ManualClock, keyring: MemoryKeyring,
               **settings: Any) -> AsyncIterator[Daemon]:
    with leakcheck.checked_state_dir("pt-node-") as state:
        async with running_daemon(state, clock=clock, keyring=keyring,
                                  storage__backend="postgres", storage__dsn=pg.dsn(database),
                                  **settings) as daemon:
            yield daemon


async def answer(admin: aiohttp.ClientSession, method: str, path: str,
                 **body: Any) -> dict[str, Any]:
    async with admin.request(method, path, json=body or None) as resp:
        data: dict[str, Any] = await resp.json()
        assert resp.status in (200, 201), data
        return data


async def accepted(http: aiohttp.ClientSession, daemon: Daemon, secret: str, n: int) -> int:
    push = json.dumps({"ref": "refs/heads/main", "n": n}).encode()
    status, body, _ = await send_signed(http, daemon, "gh", push, secret=secret,
                                        delivery_id=f"8f7d1c3e-0000-4000-8000-{n:012d}")
    assert status in (202, 401), body
    return status


def database(pg: PgServer) -> str:
    pg.new_database("secrets")
    return pg.databases[-1]


async def test_a_secret_generated_on_one_node_verifies_on_another_and_so_does_its_rotation(
    pg_server: PgServer, key_dir: Path, clock: ManualClock, http: aiohttp.ClientSession,
) -> None:
    db = database(pg_server)
    raw, key_ref = new_key(key_dir, "key")
    keyring_a, keyring_b = MemoryKeyring(), MemoryKeyring()
    async with node(pg_server, db, clock, keyring_a, secrets__key_ref=key_ref) as a, \
            admin_session(a.socket_path) as admin_a:
        added = await answer(admin_a, "POST", "/v1/webhooks", integration_id="gh",
                             provider="github", secret={"generate": True})
        first = added["secret"]
        leakcheck.WATCH.remember(first)
        assert added["webhook"]["secret_ref"] == "db:webhook:gh"
        assert added["webhook"]["readiness"] == "ready"
        assert "readiness_warning" not in added["webhook"]
        assert keyring_a.passwords == {}  # nothing in this node's keyring
        # Sealed under the key's id; neither the secret nor the key is in the table.
        row = pg_server.psql(db, "SELECT name || ' ' || key_id || ' ' || encode(nonce, 'hex')"
                                 " || ' ' || encode(ciphertext, 'hex') FROM palyra_secrets")
        name, kid, nonce, box = row.split(" ")
        assert (name, kid, len(nonce)) == ("webhook:gh", key_id(raw), 24)
        assert first.encode().hex() not in box and raw.hex() not in row

        async with node(pg_server, db, clock, keyring_b, secrets__key_ref=key_ref) as b, \
                admin_session(b.socket_path) as admin_b:
            # The registry is in the database: node B has the integration already.
            assert b.registry.integrations["gh"].secret_ref == "db:webhook:gh"
            assert await accepted(http, b, first, 1) == 202
            assert await accepted(http, a, first, 2) == 202

            rotated = await answer(admin_a, "POST", "/v1/webhooks/gh/rotate-secret",
                                   grace_s=3600)
            second = rotated["secret"]
            leakcheck.WATCH.remember(second)
            assert rotated["webhook"]["secret_ref"] == "db:webhook:gh"
            assert rotated["webhook"]["previous_secret_ref"] == "db:webhook:gh:previous"
            # On A at once: the new secret, and the old one for the grace period.
            assert await accepted(http, a, second, 3) == 202
            assert await accepted(http, a, first, 4) == 202
            # On B within two of its polls (a poll already under way may read the table
            # before the rotation committed; the next one starts after it).
            assert 2 * POLL_INTERVAL_S <= REFRESH_BOUND_S
            assert b.db_secrets is not None
            polls = 0
            while await accepted(http, b, second, 10 + polls) != 202:
                assert polls < 2, "node B did not take the rotated secret within two polls"
                await b.db_secrets.next_poll()
                polls += 1
            assert keyring_b.passwords == {}

            # Removing the integration on A removes its db: rows; B's copy follows.
            await answer(admin_a, "DELETE", "/v1/webhooks/gh")
            assert pg_server.psql(db, "SELECT count(*) FROM palyra_secrets") == "0"
            for _ in range(3):
                if not b.db_secrets.names():
                    break
                await b.db_secrets.next_poll()
            assert b.db_secrets.names() == []
            # The registry is shared too: the integration is gone on B as well.
            for _ in range(4):
                if "gh" not in b.registry.integrations:
                    break
                await b.registry_keeper.next_poll()
            readiness = await answer(admin_b, "GET", "/v1/webhooks/readiness")
            assert readiness["readiness"] == []


async def test_in_cluster_mode_a_keyring_secret_is_ready_with_a_per_node_warning(
    pg_server: PgServer, clock: ManualClock, memory_keyring: MemoryKeyring,
) -> None:
    db = database(pg_server)
    async with node(pg_server, db, clock, memory_keyring) as a, \
            admin_session(a.socket_path) as admin:
        added = await answer(admin, "POST", "/v1/webhooks", integration_id="gh",
                             provider="github", secret={"value": "a-keyring-secret-0042"})
        hook = added["webhook"]
        assert hook["secret_ref"] == "keyring:webhook:gh"  # no key_ref: the keyring
        assert hook["readiness"] == "ready"
        assert hook["readiness_warning"].startswith("keyring secrets are per node: ")
        assert "move it to db:" in hook["readiness_warning"]
        listed = await answer(admin, "GET", "/v1/webhooks")
        assert listed["webhooks"][0]["readiness_warning"] == hook["readiness_warning"]
        readiness = await answer(admin, "GET", "/v1/webhooks/readiness")
        assert readiness["readiness"][0]["readiness"] == "ready"
        assert "per node" in readiness["readiness"][0]["warning"]
        status = await answer(admin, "GET", "/v1/status")
        assert status["integrations"]["by_readiness"]["ready"] == 1
        assert status["integrations"]["warnings"] == [
            {"integration_id": "gh", "warning": hook["readiness_warning"]}]
        assert a.db_secrets is None


async def test_an_embedded_daemon_gives_no_warning(
    state_dir: Path, clock: ManualClock, memory_keyring: MemoryKeyring,
) -> None:
    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring) as a, \
            admin_session(a.socket_path) as admin:
        added = await answer(admin, "POST", "/v1/webhooks", integration_id="gh",
                             provider="github", secret={"value": "a-keyring-secret-0043"})
        assert "readiness_warning" not in added["webhook"]
        assert (await answer(admin, "GET", "/v1/status"))["integrations"]["warnings"] == []


async def test_a_key_that_is_not_32_bytes_stops_the_start_without_being_shown(
    pg_server: PgServer, key_dir: Path, clock: ManualClock, memory_keyring: MemoryKeyring,
) -> None:
    from palyra_py.settings import SettingsError

    db = database(pg_server)
    bad = key_dir / "short"
    text = base64.b64encode(b"sixteen byte key").decode()
    leakcheck.WATCH.remember(text)
    bad.write_text(text)
    bad.chmod(0o600)
    with pytest.raises(SettingsError) as caught:
        async with node(pg_server, db, clock, memory_keyring, secrets__key_ref=f"file:{bad}"):
            pass
    message = str(caught.value)
    assert message.startswith(f"secrets.key_ref: the key file:{bad} holds decodes to 16 bytes")
    assert text not in message
    with pytest.raises(SettingsError, match="must come from env:VAR or file:PATH"):
        async with node(pg_server, db, clock, memory_keyring,
                        secrets__key_ref="keyring:palyra-key"):
            pass


def reencrypt(state: Path) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "palyra_py", "secrets", "reencrypt", "--state-dir", str(state),
         "--json"], capture_output=True, text=True, check=False, timeout=60,
        env={**os.environ, "PALYRA_STATE_DIR": ""},
    )
    leakcheck.WATCH.record("secrets reencrypt --json", done.stdout + done.stderr)
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else {
        "stderr": done.stderr}


async def test_reencrypt_moves_every_row_to_the_new_key_once(
    pg_server: PgServer, key_dir: Path,
) -> None:
    db = database(pg_server)
    old, old_ref = new_key(key_dir, "old")
    new, new_ref = new_key(key_dir, "new")
    dsn = pg_server.dsn(db)
    writer = DbSecrets(Keys.of(old), PostgresSecrets(lambda: dsn))
    await writer.start()
    for n in range(3):
        leakcheck.WATCH.remember(f"db-secret-number-{n}")
        await writer.put(f"webhook:n{n}", f"db-secret-number-{n}")
    await writer.close()

    with leakcheck.checked_state_dir("pt-rekey-") as state:
        (state / "palyra.toml").write_text(
            f'[storage]\nbackend = "postgres"\ndsn = "{dsn}"\n'
            f'[secrets]\nkey_ref = "{new_ref}"\nprevious_key_refs = "{old_ref}"\n')
        code, first = reencrypt(state)
        assert code == 0, first
        assert (first["total"], first["reencrypted"], first["already_current"],
                first["failed"], first["key_id"]) == (3, 3, 0, [], key_id(new))
        code, again = reencrypt(state)
        assert (code, again["reencrypted"], again["already_current"]) == (0, 0, 3)

        # The new key alone opens every row now.
        reader = DbSecrets(Keys.of(new), PostgresSecrets(lambda: dsn))
        await reader.start()
        try:
            assert [reader.get(f"webhook:n{n}") for n in range(3)] == [
                f"db-secret-number-{n}" for n in range(3)]
        finally:
            await reader.close()

        # A row this node has no key for is named, with the key id it needs; exit 4.
        stranger, _ = new_key(key_dir, "stranger")
        odd = DbSecrets(Keys.of(stranger), PostgresSecrets(lambda: dsn))
        await odd.start()
        leakcheck.WATCH.remember("db-secret-of-a-stranger")
        await odd.put("webhook:odd", "db-secret-of-a-stranger")
        await odd.close()
        code, third = reencrypt(state)
        assert (code, third["reencrypted"], third["already_current"]) == (4, 0, 3)
        assert third["failed"] == [
            f"db:webhook:odd: sealed with key {key_id(stranger)}, which this node does not"
            " have (set it as [secrets] key_ref or add it to [secrets] previous_key_refs)"]


async def test_with_workers_a_db_secret_written_by_an_edit_is_in_force_on_every_worker(
    pg_server: PgServer, state_dir: Path, key_dir: Path,
) -> None:
    """``--workers 2``: each process keeps its own copy of the rows; an admin edit that
    writes a db: secret is in force on every worker when it returns (each worker reads
    the table again as it takes the edit), not one poll later."""
    from palyra_py.providers import get_provider
    from tests.daemon_process import DaemonProcess

    db = database(pg_server)
    _, key_ref = new_key(key_dir, "key")
    env = {"PALYRA_STORAGE_BACKEND": "postgres", "PALYRA_STORAGE_DSN": pg_server.dsn(db),
           "PALYRA_SECRETS_KEY_REF": key_ref}
    process = await DaemonProcess(state_dir, env=env, workers="2").start()
    github = get_provider("github")

    async def statuses(secret: str, first: int) -> list[int]:
        connector = aiohttp.TCPConnector(force_close=True)  # each on its own connection
        async with aiohttp.ClientSession(connector=connector) as http:
            async def one(n: int) -> int:
                body = json.dumps({"n": n}).encode()
                signed = github.sign(body, secret, time.time(), "push", f"delivery-{n:06d}")
                async with http.post(f"{process.ingress}/hooks/gh", data=signed.body,
                                     headers=dict(signed.headers)) as resp:
                    return resp.status
            return list(await asyncio.gather(*(one(first + n) for n in range(12))))

    try:
        async with admin_session(state_dir / "palyra.sock") as admin:
            added = await answer(admin, "POST", "/v1/webhooks", integration_id="gh",
                                 provider="github", secret={"generate": True})
            leakcheck.WATCH.remember(added["secret"])
            assert added["webhook"]["secret_ref"] == "db:webhook:gh"
            assert await statuses(added["secret"], 0) == [202] * 12
            rotated = await answer(admin, "POST", "/v1/webhooks/gh/rotate-secret", grace_s=0)
            leakcheck.WATCH.remember(rotated["secret"])
            assert await statuses(rotated["secret"], 100) == [202] * 12
            assert set(await statuses(added["secret"], 200)) == {401}
            workers = [p for p in (await answer(admin, "GET", "/v1/status"))["processes"]
                       if p["role"] == "worker"]
            assert len(workers) == 2
    finally:
        await process.stop()
        for record in process.log:
            leakcheck.WATCH.record(f"daemon log {record.get('event')!r}", json.dumps(record))
