"""A real PostgreSQL server for the tests and benchmarks: Debian's binaries
(``/usr/lib/postgresql/<version>/bin``), a fresh cluster in a temp directory, listening on
a Unix socket in that directory only (no TCP), fsync on (we measure real durability).

PostgreSQL refuses to run as root: under root the server runs as the ``postgres`` system
user (``setpriv``), which owns the temp directory; otherwise as the current user. Clients
connect over the socket as the cluster's superuser ``palyra`` (trust on the socket only: the
directory is 0700 and nobody else can reach it).

Where the binaries are missing, ``PgServer.find_binaries`` returns ``None`` and the
``pg_server`` fixture skips with ``MISSING``, the one line that says how to install them.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

MISSING = "PostgreSQL binaries not installed: apt-get install postgresql"
SUPERUSER = "palyra"
PORT = 5432  # only names the socket file (.s.PGSQL.5432): TCP is off
_SERVER_USER = "postgres"


def find_binaries(root: Path = Path("/usr/lib/postgresql")) -> Path | None:
    """The newest ``<root>/*/bin`` (Debian's layout) that has ``initdb`` and ``pg_ctl``."""
    found = [
        path / "bin" for path in root.glob("*")
        if (path / "bin" / "initdb").exists() and (path / "bin" / "pg_ctl").exists()
    ] if root.is_dir() else []

    def version(bin_dir: Path) -> tuple[int, ...]:
        text = bin_dir.parent.name
        return tuple(int(p) for p in text.split(".") if p.isdigit())

    return max(found, key=version) if found else None


@dataclass
class PgServer:
    """One running cluster. ``dsn(database)`` is a libpq URI over the socket."""

    bin_dir: Path
    root: Path
    run_as: tuple[int, int] | None
    """``(uid, gid)`` the server runs as, when it is not this process's user."""
    databases: list[str] = field(default_factory=list)
    _next_db: int = 0

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def dsn(self, database: str = "postgres", *, user: str = SUPERUSER) -> str:
        return f"postgresql://{user}@/{database}?host={self.socket_dir}&port={PORT}"

    # -- the server's life ---------------------------------------------------------------

    @classmethod
    def create(cls, bin_dir: Path, *, settings: Sequence[str] = ()) -> PgServer:
        """initdb a new cluster in a fresh temp directory and start it."""
        run_as = _server_user() if os.geteuid() == 0 else None
        root = Path(tempfile.mkdtemp(prefix="palyra-pg-", dir="/tmp"))
        server = cls(bin_dir, root, run_as)
        try:
            server.socket_dir.mkdir(mode=0o700)
            if run_as is not None:
                for path in (root, server.socket_dir):
                    os.chown(path, *run_as)
            os.chmod(root, 0o700)
            server._run("initdb", "-D", str(server.data_dir), "-U", SUPERUSER,
                        "--auth-local=trust", "--auth-host=reject", "-E", "UTF8",
                        "--locale=C.UTF-8", "--no-instructions")
            conf = server.data_dir / "postgresql.conf"
            lines = [
                "listen_addresses = ''",
                f"unix_socket_directories = '{server.socket_dir}'",
                f"port = {PORT}",
                "fsync = on",
                "synchronous_commit = on",
                "max_connections = 200",
                *settings,
            ]
            with conf.open("a", encoding="utf-8") as out:
                out.write("\n# palyra tests\n" + "\n".join(lines) + "\n")
            server.start()
        except BaseException:
            server.remove()
            raise
        return server

    def start(self) -> None:
        """Start the server and wait until it takes connections (``pg_ctl -w``)."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_path), "-w",
                  "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: roll back open transactions; ``immediate``: as a
        crash) and wait until it is down."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def running(self) -> bool:
        result = subprocess.run(
            self._argv("pg_ctl", "-D", str(self.data_dir), "status"),
            capture_output=True, check=False, **self._as_server(),
        )
        return result.returncode == 0

    def remove(self) -> None:
        """Stop the server if it runs, then delete its directory."""
        with contextlib.suppress(subprocess.CalledProcessError, OSError):
            if self.data_dir.exists() and self.running():
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    # -- databases -----------------------------------------------------------------------

    def new_database(self, prefix: str = "t") -> str:
        """A new, empty database (``createdb``); its DSN."""
        self._next_db += 1
        name = f"{prefix}_{os.getpid()}_{self._next_db}"
        self.psql("postgres", f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return self.dsn(name)

    def psql(self, database: str, sql: str) -> str:
        """Run ``sql`` with ``psql`` (stops at the first error); its output, unaligned."""
        result = subprocess.run(
            [str(self.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-d", self.dsn(database), "-c", sql],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout.strip()

    def terminate_backends(self, database: str) -> int:
        """``pg_terminate_backend`` every other connection to ``database``; how many."""
        out = self.psql("postgres", (
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            f" WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        ))
        return int(out or 0)

    # -- plumbing ------------------------------------------------------------------------

    def _argv(self, tool: str, *args: str) -> list[str]:
        return [str(self.bin_dir / tool), *args]

    def _as_server(self) -> dict[str, Any]:
        """``subprocess`` arguments that run a tool as the server's user (done in the
        child by ``subprocess`` itself, no Python code between fork and exec)."""
        if self.run_as is None:
            return {}
        uid, gid = self.run_as
        return {"user": uid, "group": gid, "extra_groups": []}

    def _run(self, tool: str, *args: str) -> None:
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "HOME": str(self.root)}
        result = subprocess.run(
            self._argv(tool, *args), capture_output=True, text=True, check=False, env=env,
            cwd=self.root, **self._as_server(),
        )
        if result.returncode != 0:
            log = self.log_path.read_text(errors="replace")[-2000:] if (
                self.log_path.exists()) else ""
            raise RuntimeError(
                f"{tool} failed ({result.returncode}): {result.stdout.strip()}"
                f" {result.stderr.strip()} {log}".strip()
            )


def _server_user() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(_SERVER_USER)
    except KeyError:
        pytest.skip(f"running as root and no {_SERVER_USER!r} user to run PostgreSQL as"
                    " (apt-get install postgresql creates it)")
    with contextlib.suppress(KeyError):
        return entry.pw_uid, grp.getgrgid(entry.pw_gid).gr_gid
    return entry.pw_uid, entry.pw_gid


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL for the whole session, started on first use; skips loudly where the
    binaries are not installed."""
    bin_dir = find_binaries()
    if bin_dir is None:
        pytest.skip(MISSING)
    server = PgServer.create(bin_dir)
    try:
        yield server
    finally:
        server.remove()
