"""The PostgreSQL the tests start (tests/pg.py) is what the engine's tests rely on: a
server of its own, not run as root, reachable on its Unix socket only, with fsync on, and
able to restart and to cut connections as the fault tests do."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.pg import PORT, PgServer, find_binaries


def test_the_server_is_private_durable_and_on_its_socket_only(pg_server: PgServer) -> None:
    settings = pg_server.psql("postgres", (
        "SELECT current_setting('fsync') || ',' || current_setting('synchronous_commit')"
        " || ',' || current_setting('listen_addresses') || ',' || current_setting('port')"
    ))
    assert settings == f"on,on,,{PORT}"
    assert (pg_server.socket_dir / f".s.PGSQL.{PORT}").is_socket()
    mode = stat.S_IMODE(pg_server.root.stat().st_mode)
    assert mode & 0o077 == 0, oct(mode)
    # The server process does not run as root.
    pid = int((pg_server.data_dir / "postmaster.pid").read_text().split()[0])
    assert os.stat(f"/proc/{pid}").st_uid != 0


def test_databases_are_fresh_and_the_server_restarts(pg_server: PgServer) -> None:
    dsn = pg_server.new_database()
    name = pg_server.databases[-1]
    assert dsn.endswith(f"/{name}?host={pg_server.socket_dir}&port={PORT}")
    pg_server.psql(name, "CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)")
    assert pg_server.terminate_backends(name) == 0
    pg_server.restart()
    assert pg_server.running()
    assert pg_server.psql(name, "SELECT n FROM kept") == "42"


def test_the_newest_installed_version_is_found(tmp_path: Path) -> None:
    assert find_binaries(tmp_path) is None  # nothing installed: the fixture skips
    for version in ("9.6", "15", "13"):
        (tmp_path / version / "bin").mkdir(parents=True)
        for tool in ("initdb", "pg_ctl"):
            (tmp_path / version / "bin" / tool).touch()
    (tmp_path / "17" / "bin").mkdir(parents=True)  # no initdb: a client-only install
    assert find_binaries(tmp_path) == tmp_path / "15" / "bin"
