"""The registry's source inside one daemon (in this process, real parts): on SQLite the
export/import commands work on ``webhooks.toml``; in cluster mode a document written
around palyra that does not validate leaves the last good registry in force (and an import
mends it), and a start that fails after the registry's database was opened closes that
connection."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from palyra_py.server.daemon import DaemonError
from palyra_py.testing import ManualClock, MemoryKeyring, running_daemon
from tests.daemon_process import child_env
from tests.fault_helpers import admin_session
from tests.pg import PgServer

SEED = """# ours
version = 1

[[webhooks]]
integration_id = "gh"
provider = "github"
secret_ref = "env:GH_SECRET"
"""


async def cli(state_dir: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "palyra_py", "registry", *args, "--state-dir", str(state_dir),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=child_env(state_dir))
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def database_of(dsn: str) -> str:
    return dsn.split("/")[3].split("?")[0]


async def test_on_sqlite_export_and_import_work_on_the_file(
    state_dir: Path, clock: ManualClock, memory_keyring: MemoryKeyring, tmp_path: Path,
) -> None:
    (state_dir / "webhooks.toml").write_text(SEED)
    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring) as daemon:
        code, out, _ = await cli(state_dir, "export")
        assert (code, out) == (0, SEED)
        new = SEED.replace('"gh"', '"gl"').replace('"github"', '"gitlab"')
        path = tmp_path / "next.toml"
        path.write_text(new)
        code, out, err = await cli(state_dir, "import", str(path))
        assert code == 0, err
        assert out.splitlines()[:2] == ["+ integration gl", "- integration gh"]
        assert "imported: 2 record(s)" in out
        assert (state_dir / "webhooks.toml").read_text() == new
        assert list(daemon.registry.integrations) == ["gl"]
        code, _, err = await cli(state_dir, "import", str(path), "--expected-version", "3")
        assert code == 1
        assert "registry_conflict" in err and "has no version" in err


async def test_a_stored_document_that_does_not_validate_leaves_the_last_good_in_force(
    pg_server: PgServer, state_dir: Path, clock: ManualClock, memory_keyring: MemoryKeyring,
) -> None:
    dsn = pg_server.new_database("regd")
    (state_dir / "webhooks.toml").write_text(SEED)
    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring,
                              storage__backend="postgres", storage__dsn=dsn) as daemon, \
            admin_session(daemon.socket_path) as admin:
        keeper = daemon.registry_keeper
        assert keeper.version == 1
        pg_server.psql(database_of(dsn), "UPDATE palyra_registry SET document = 'version = [',"
                                         " version = version + 1")
        for _ in range(3):  # the poll finds it (SQL by hand sends no NOTIFY)
            await asyncio.wait_for(keeper.next_poll(), 10)
        assert keeper.version == 1
        assert list(daemon.registry.integrations) == ["gh"]
        async with admin.get("/v1/registry") as resp:
            assert resp.status == 422
            assert (await resp.json())["error"] == "registry_invalid"
        # An edit cannot change a document that does not parse; an import mends it.
        async with admin.post("/v1/webhooks", json={
                "integration_id": "x", "provider": "github",
                "secret": {"ref": "env:X"}}) as resp:
            assert resp.status == 422
        async with admin.post("/v1/registry/import", json={"document": SEED}) as resp:
            answer = await resp.json()
            assert resp.status == 200, answer
        assert answer["version"] == 3
        assert keeper.version == 3


def registry_connections(pg: PgServer, database: str) -> str:
    """How many connections to ``database`` last ran a registry statement."""
    return pg.psql("postgres", (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '" + database + "'"
        " AND query ILIKE '%palyra_registry%' AND pid <> pg_backend_pid()"))


async def test_a_start_that_fails_after_the_registry_closes_its_connection(
    pg_server: PgServer, state_dir: Path, clock: ManualClock, memory_keyring: MemoryKeyring,
) -> None:
    dsn = pg_server.new_database("regf")
    database = database_of(dsn)
    # The delivery store cannot open (its schema is newer than this palyra): the start
    # fails after the registry was seeded and read from the database.
    pg_server.psql(database, (
        "CREATE TABLE palyra_schema (store text NOT NULL, version integer NOT NULL,"
        " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(),"
        " PRIMARY KEY (store, version));"
        " INSERT INTO palyra_schema (store, version, name) VALUES ('deliveries', 99, 'x')"))
    with pytest.raises(DaemonError, match="delivery store"):
        async with running_daemon(state_dir, clock=clock, keyring=memory_keyring,
                                  storage__backend="postgres", storage__dsn=dsn):
            pass
    assert pg_server.psql(database, "SELECT version FROM palyra_registry") == "1"
    assert registry_connections(pg_server, database) == "0"


async def test_a_stored_document_that_does_not_validate_stops_the_start_and_closes(
    pg_server: PgServer, state_dir: Path, clock: ManualClock, memory_keyring: MemoryKeyring,
) -> None:
    dsn = pg_server.new_database("regs")
    database = database_of(dsn)
    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring,
                              storage__backend="postgres", storage__dsn=dsn):
        pass
    pg_server.psql(database, "UPDATE palyra_registry SET document = 'version = [',"
                             " version = version + 1")
    with pytest.raises(DaemonError, match=r"cannot read the registry: .*TOML syntax error"):
        async with running_daemon(state_dir, clock=clock, keyring=memory_keyring,
                                  storage__backend="postgres", storage__dsn=dsn):
            pass
    assert registry_connections(pg_server, database) == "0"


async def test_a_notify_wakes_the_watch_and_the_poll_is_its_backstop(
    pg_server: PgServer, state_dir: Path, clock: ManualClock, memory_keyring: MemoryKeyring,
    tmp_path: Path,
) -> None:
    from palyra_py.registry.integrations import add_integration
    from palyra_py.registry.postgres import postgres_registry

    dsn = pg_server.new_database("regn")
    (state_dir / "webhooks.toml").write_text(SEED)
    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring,
                              storage__backend="postgres", storage__dsn=dsn) as daemon:
        keeper = daemon.registry_keeper
        # Another node's write, with its NOTIFY: the watch, polling only hourly now,
        # wakes for it.
        keeper.poll_interval_s = 3600.0
        # The wait that began with the old interval ends.
        await asyncio.wait_for(keeper.next_poll(), 10)
        other = postgres_registry(lambda: dsn, tmp_path / "other.toml")
        try:
            await other.edit(lambda doc: add_integration(doc, {
                "integration_id": "notified", "provider": "github",
                "secret_ref": "env:X"}, daemon.now_dt()), by="another node")
        finally:
            await other.close()
        while keeper.version != 2:
            await asyncio.wait_for(keeper.next_poll(), 10)
        assert "notified" in daemon.registry.integrations

        # A write without a NOTIFY (SQL by hand): the poll finds it.
        keeper.poll_interval_s = 0.25
        keeper.notified()  # end the hourly wait
        text = SEED.replace('"gh"', '"polled"')
        pg_server.psql(database_of(dsn), (
            "UPDATE palyra_registry SET version = version + 1, document = $doc$"
            + text + "$doc$"))
        for _ in range(8):
            if keeper.version == 3:
                break
            await asyncio.wait_for(keeper.next_poll(), 10)
        assert list(daemon.registry.integrations) == ["polled"]
