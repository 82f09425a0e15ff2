"""What the SQLite stores (journal, deliveries) share about their files and writer thread:
opening a database 0600 in WAL with ``synchronous=FULL`` and a busy timeout, keeping the
-wal/-shm files 0600, applying a versioned schema, and the one writer thread that drains a
job queue in batches; and the query-only reading of a file for a copy (``QueryOnlyFile``).

The SQL of each store (its schema statements included) stays in its own module.
"""

from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from palyra_py.storage.copying import CopyFailed

FILE_MODE = 0o600
DIR_MODE = 0o700
_T = TypeVar("_T")

Outcome = tuple["asyncio.Future[Any]", Any]
"""A job's future and what to settle it with: a value, or an exception to raise."""


def related_files(path: Path) -> list[Path]:
    """The database file and its WAL companions (which may not exist yet)."""
    return [path, Path(f"{path}-wal"), Path(f"{path}-shm")]


def file_identity(path: Path) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of the file ``path`` names now (``None``: none). SQLite goes on
    writing into an unlinked inode, so a writer compares this with what it opened to tell
    that its file was removed or replaced."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def restrict_permissions(path: Path) -> None:
    """chmod 0600 the database and whichever of its -wal/-shm files exist."""
    for file in related_files(path):
        try:
            os.chmod(file, FILE_MODE)
        except FileNotFoundError:
            continue


def describe_sqlite_error(exc: BaseException, what: str, action: str) -> str:
    """``"<what> <action> failed (<code>): <message>"``. SQLite's messages name the failure
    (locked, full, read-only...), never bound values, so no payload or secret leaks through."""
    code = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    return f"{what} {action} failed ({code}): {str(exc)[:120]}"


_SQLITE_MAGIC = b"SQLite format 3\x00"
_CORRUPT_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB (primary codes)


def is_corruption(exc: BaseException) -> bool:
    """Whether ``exc`` says the database file is damaged (SQLITE_CORRUPT and its extended
    codes, SQLITE_NOTADB), as opposed to busy, full, read-only... which pass."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in _CORRUPT_CODES:
        return True
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text


def header_problem(path: Path, *, sizes: bool = True) -> str | None:
    """``header_problem_of`` the file at ``path``; a missing or empty file is ``None`` (a new
    database). Only before this process opens the database: closing any descriptor of the
    file drops the POSIX locks SQLite holds on it (a writer keeps one descriptor open and
    asks ``header_problem_of`` instead)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        return header_problem_of(fd, sizes=sizes, empty_ok=True)
    finally:
        os.close(fd)


def header_problem_of(fd: int, *, sizes: bool = True, empty_ok: bool = False) -> str | None:
    """What is wrong with the 100-byte header of the database file open as ``fd``, or
    ``None``: shorter than the header, not starting with SQLite's magic string, an
    impossible page size, or (with ``sizes``) fewer bytes than the pages its header counts
    (truncated). An empty file is ``None`` with ``empty_ok``. A stat and a 100-byte read:
    cheap enough after every commit.

    Only ask for ``sizes`` when no checkpoint can be half done: a crash during one may
    leave the header ahead of the file while the WAL still holds the pages."""
    size = os.fstat(fd).st_size
    head = os.pread(fd, 100, 0)
    if size == 0 and empty_ok:
        return None
    if len(head) < 100:
        return f"the file is {size} bytes, shorter than its 100-byte header: truncated"
    if not head.startswith(_SQLITE_MAGIC):
        return "the file does not start with the SQLite header: overwritten"
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        return f"the header gives an impossible page size ({page_size}): overwritten"
    pages = int.from_bytes(head[28:32], "big")
    # The header's page count holds only when its change counter matches "valid for".
    if sizes and head[24:28] == head[92:96] and size < pages * page_size:
        return (f"the file is {size} bytes but its header counts {pages} pages of"
                f" {page_size} bytes: truncated")
    return None


def quick_check(conn: sqlite3.Connection, *, budget_s: float, max_errors: int = 5
                ) -> tuple[str | None, bool]:
    """``PRAGMA quick_check``, stopped after ``budget_s`` seconds: ``(problem, complete)``,
    ``problem`` being ``None`` when nothing wrong was found (so far, if not complete)."""
    deadline = time.monotonic() + budget_s
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    try:
        rows = conn.execute(f"PRAGMA quick_check({int(max_errors)})").fetchall()
    except sqlite3.DatabaseError as exc:
        if is_corruption(exc):
            return describe_sqlite_error(exc, "quick check", "read"), True
        if "interrupt" in str(exc).lower():
            return None, False
        raise
    finally:
        conn.set_progress_handler(None, 0)
    text = "; ".join(str(message) for (message,) in rows).replace("\n", " ")
    return (None if text == "ok" else text[:400]), True


def open_database(
    path: Path,
    *,
    busy_timeout_ms: int,
    create: bool,
    label: str,
    wal_label: str | None = None,
    prepare: Callable[[sqlite3.Connection], None] | None = None,
) -> sqlite3.Connection:
    """Open the database in autocommit mode, usable from any thread.

    With ``create``, create it first if missing (mode 0600, parent directory 0700), run
    ``prepare`` on the connection, and switch it to WAL; else it must exist (else
    ``sqlite3.OperationalError`` "<label> file not found") and is opened query-only. Every
    connection gets ``synchronous=FULL`` (a commit is fsync'd) and the busy timeout."""
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        # Created here with 0600 rather than by SQLite under the umask: SQLite gives
        # the -wal and -shm files the mode of the database file.
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, FILE_MODE))
    elif not path.exists():
        raise sqlite3.OperationalError(f"{label} file not found: {path}")
    conn = sqlite3.connect(
        path, timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        if create:
            if prepare is not None:
                prepare(conn)
            mode = scalar(conn.execute("PRAGMA journal_mode = WAL"))
            if str(mode).lower() != "wal":
                name = label if wal_label is None else wal_label
                raise sqlite3.OperationalError(f"cannot switch {name} to WAL ({mode})")
        else:
            conn.execute("PRAGMA query_only = ON")
        conn.execute("PRAGMA synchronous = FULL")
    except BaseException:
        conn.close()
        raise
    return conn


def ensure_schema(
    conn: sqlite3.Connection, statements: Sequence[str], version: int, *, label: str
) -> None:
    """Run ``statements`` and set ``user_version`` to ``version`` in one ``BEGIN IMMEDIATE``
    transaction, unless the file is already at ``version`` (idempotent). A file at a newer
    version raises ``sqlite3.DatabaseError`` "<label> schema version ... is newer"; on any
    error nothing is changed."""
    if _user_version(conn) == version:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = _user_version(conn)
        if found > version:
            raise sqlite3.DatabaseError(
                f"{label} schema version {found} is newer than {version}"
            )
        for statement in statements:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {int(version)}")
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is open; never raises."""
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def _user_version(conn: sqlite3.Connection) -> int:
    return int(scalar(conn.execute("PRAGMA user_version")))


def scalar(cursor: sqlite3.Cursor) -> Any:
    """The one value of a query that answers one column: of its first row, ``None`` when it
    has none (a ``min`` over no rows is ``None`` too)."""
    found = cursor.fetchone()
    if found is None:
        return None
    (value,) = found
    return value


def optional_int(value: Any) -> int | None:
    """``int(value)``, ``None`` kept."""
    return None if value is None else int(value)


def settle_outcomes(outcomes: list[Outcome]) -> None:
    """Settle each future with its value or exception; skip those already done (their
    caller was cancelled). Call in the futures' event loop."""
    for future, value in outcomes:
        if future.done():  # the caller was cancelled: nobody is waiting for this one
            continue
        if isinstance(value, BaseException):
            future.set_exception(value)
        else:
            future.set_result(value)


def call_in_loop(loop: asyncio.AbstractEventLoop, callback: Callable[..., object],
                 *args: Any) -> None:
    """Schedule ``callback(*args)`` in ``loop`` from another thread; nothing if the loop is
    closed (nobody is waiting any more)."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        pass  # the event loop is closed: nobody is waiting any more


_STOP = object()


class QueueWriterThread(threading.Thread):
    """A store's only writer: takes the first queued job and whatever else is queued (up to
    ``batch_max``), hands them to ``_run_batch`` in queue order, and after ``stop`` finishes
    every job queued before it, then calls ``_close`` and ends."""

    def __init__(self, *, name: str, batch_max: int) -> None:
        super().__init__(name=name, daemon=True)
        self._batch_max = max(1, batch_max)
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()

    def _put(self, job: object) -> None:
        self._queue.put(job)

    def stop(self) -> None:
        """Finish every job queued so far, then end the thread and close its connection."""
        self._queue.put(_STOP)

    def run(self) -> None:
        try:
            stopping = False
            while not stopping:
                first = self._queue.get()
                if first is _STOP:
                    break
                batch = [first]
                while len(batch) < self._batch_max:
                    try:
                        job = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if job is _STOP:
                        stopping = True
                        break
                    batch.append(job)
                self._run_batch(batch)
        finally:
            self._close()

    def _run_batch(self, batch: list[Any]) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError


class QueryOnlyFile:
    """A SQLite file read for a copy to another engine (the stores' ``*Export``): one
    connection, opened on first use without creating the file, never written; each call
    runs in a thread, off the event loop, and an SQLite error becomes ``CopyFailed``."""

    def __init__(self, path: Path, *, label: str, file_name: str) -> None:
        self.path = path
        self._label = label
        self._file_name = file_name
        self._conn: sqlite3.Connection | None = None

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = open_database(self.path, busy_timeout_ms=5000, create=False,
                                       label=self._label)
        return self._conn

    async def _call(self, action: str, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        def run() -> _T:
            return fn(self._open())
        try:
            return await asyncio.to_thread(run)
        except sqlite3.Error as exc:
            raise CopyFailed(describe_sqlite_error(exc, self._file_name, action)) from None

    async def schema_version(self) -> int | None:
        """The file's schema version (``None`` when there is no file)."""
        if not self.path.exists():
            return None
        return await self._call("read", lambda conn: optional_int(scalar(
            conn.execute("PRAGMA user_version"))))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
