"""The journal's writer thread: group commit over one SQLite connection.

``Journal`` hands each append or retention run to ``GroupCommitWriter`` as a job carrying an
asyncio future (the appends of one event-loop pass together, as one queue item). The thread
runs jobs in the order they were queued, commits the appends queued together in one
transaction (one fsync for the lot, at most ``batch_max``), and settles each future in the
event loop once its outcome is final: an ``AppendResult`` (for retention, the number of rows
removed) after the commit, or ``JournalUnavailable`` / ``DuplicateEventId``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from palyra_py.events import AppendResult
from palyra_py.journal.backend import (
    DuplicateEventId,
    JournalDamaged,
    JournalUnavailable,
    PendingRow,
)
from palyra_py.journal.sqlite import JournalStore
from palyra_py.storage.sqlite import (
    Outcome,
    QueueWriterThread,
    call_in_loop,
    describe_sqlite_error,
    file_identity,
    header_problem_of,
    is_corruption,
    settle_outcomes,
)

_log = logging.getLogger(__name__)


def damaged_message(path: Path, problem: str) -> str:
    """What a damaged journal means and what the operator does about it."""
    aside = path.parent / "damaged"
    return (
        f"the journal {path} is damaged ({problem}); nothing more is acknowledged (ingress and "
        f"publishing answer 503 journal_unavailable). To recover: stop the daemon; move the "
        f"damaged files aside (mkdir {aside} && mv {path} {path}-wal {path}-shm {aside}/, "
        f"those that exist); restore {path.name} from a backup if you have one, or start "
        f"without it (a new, empty journal is begun; `sqlite3 {aside / path.name} .recover` "
        f"may salvage rows); then start the daemon and run `palyra system events verify`"
    )


def describe_failure(exc: BaseException, action: str = "write") -> str:
    """A short reason for JournalUnavailable. SQLite's messages name the failure (locked,
    full, read-only...), never bound values, so no payload or secret leaks through."""
    return describe_sqlite_error(exc, "journal", action)


@dataclass(frozen=True, slots=True)
class AppendJob:
    row: PendingRow
    future: asyncio.Future[AppendResult]


@dataclass(frozen=True, slots=True)
class RetentionJob:
    max_age_s: float | None
    max_bytes: int | None
    future: asyncio.Future[int]


class GroupCommitWriter(QueueWriterThread):
    """The journal's only writer. Takes the first queued job, then everything else queued
    (up to ``batch_max``), and commits the appends among them in one transaction: one
    fsync for many concurrent appends."""

    def __init__(
        self,
        store: JournalStore,
        *,
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], float],
        batch_max: int,
        on_commit: Callable[[int, int], None] | None,
        path: Path | None = None,
        writer_lock: Path | None = None,
    ) -> None:
        """``writer_lock``: a file every process appending to this journal locks (flock)
        around each write transaction. SQLite alone would also keep them apart, but its
        busy handler waits by sleeping in steps of up to 100 ms; a process blocked on the
        lock wakes the moment the other's commit is done (and its queue has grown into a
        bigger batch meanwhile)."""
        super().__init__(name="palyra-journal-writer", batch_max=batch_max)
        self._store = store
        self._lock_fd = (os.open(writer_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                         if writer_lock is not None else None)
        # The file this writer commits into. SQLite keeps writing into an unlinked inode, so
        # after every commit the path must still name it, or nothing may be acknowledged.
        self._path = path
        self._inode = file_identity(path) if path is not None else None
        # One descriptor kept for the header check, closed only by ``release_file`` after
        # every connection: closing a descriptor of the file drops SQLite's POSIX locks.
        self._fd = _open_for_reading(path) if path is not None else None
        # The file's size at the last check: SQLite grows a database file, and shrinks it
        # only to what its header then counts (a checkpoint after an incremental vacuum).
        self._size_floor = os.fstat(self._fd).st_size if self._fd is not None else 0
        self._gone: str | None = None
        self._damaged = False
        self._gone_lock = threading.Lock()
        # Called (in the event loop) once, when the file is found removed or damaged.
        self.on_unavailable: Callable[[str], None] | None = None
        self._loop = loop
        self._clock = clock
        self._on_commit = on_commit
        self.commits = 0
        self.failed_batches = 0

    def submit(self, job: AppendJob | RetentionJob | list[AppendJob]) -> None:
        """Queue one job, or a list of appends (those of one event-loop pass): one queue
        item, so one wake-up of this thread for all of them."""
        self._put(job)

    def _close(self) -> None:
        self._store.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the writers' lock (if any) for one write transaction."""
        if self._lock_fd is None:
            yield
            return
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _run_batch(self, batch: list[object]) -> None:
        appends: list[AppendJob] = []
        for job in batch:
            if isinstance(job, AppendJob | list):
                if isinstance(job, list):
                    appends.extend(job)
                else:
                    appends.append(job)
                while len(appends) > self._batch_max:  # a list may hold more
                    self._commit(appends[:self._batch_max])
                    appends = appends[self._batch_max:]
            elif isinstance(job, RetentionJob):
                # Queue order holds: appends queued before the retention commit first.
                if appends:
                    self._commit(appends)
                    appends = []
                self._retain(job)
        if appends:
            self._commit(appends)

    def _deliver(self, outcomes: list[Outcome],
                 committed: tuple[int, int] | None = None) -> None:
        """Settle ``outcomes`` in the loop; ``committed``: the new head and the events this
        commit wrote, told to ``on_commit`` first."""
        on_commit = self._on_commit if committed is not None else None

        def settle() -> None:
            # One loop callback: the head moves (on_commit) before any caller resumes, so a
            # caller that just got its seq never sees an older head on the bus.
            if on_commit is not None and committed is not None:
                on_commit(*committed)
            settle_outcomes(outcomes)

        call_in_loop(self._loop, settle)

    @property
    def unavailable_reason(self) -> str | None:
        """Why appends are refused until a restart (the file removed, replaced or damaged)."""
        return self._gone

    @property
    def damaged(self) -> bool:
        """Whether the refusal is for a damaged file (not a removed one)."""
        return self._damaged

    def _refuse_from_now(self, reason: str, *, damaged: bool = False) -> None:
        with self._gone_lock:
            if self._gone is not None:
                return
            self._gone, self._damaged = reason, damaged
        _log.error("journal writer: %s", reason)
        if self.on_unavailable is not None:
            call_in_loop(self._loop, self.on_unavailable, reason)

    def mark_damaged(self, problem: str) -> None:
        """A read or write found the file damaged: refuse every append from now on. Any
        thread."""
        if self._path is not None:
            self._refuse_from_now(damaged_message(self._path, problem), damaged=True)

    def check_file(self, *, sizes: bool = False) -> str | None:
        """Does the path still name the file this writer commits into, with a sound
        header? Else refuse every append from now on. Returns the reason, if any. Any
        thread (cheap: a stat and a 100-byte read).

        ``sizes`` also looks for a truncation: only on the writer thread, between its
        commits. A file shorter than its header counts is not enough: a checkpoint that
        grows the file writes page 1 first, and one that could not copy every frame (a
        reader still on an older snapshot) can leave the header ahead of the file until the
        next full checkpoint. A file that shrank since the last check and is shorter than its
        header counts is truncated (SQLite itself shrinks a file only to what its header
        then counts)."""
        if self._gone is None and self._path is not None:
            if file_identity(self._path) != self._inode:
                self._refuse_from_now(
                    f"{self._path.name} was removed or replaced under the daemon; restart it "
                    "(events answered 503 were not acknowledged)")
            elif self._fd is not None:
                problem = self._header_problem(sizes)
                if problem is not None:
                    self.mark_damaged(problem)
        return self._gone

    def _header_problem(self, sizes: bool) -> str | None:
        assert self._fd is not None
        try:
            problem = header_problem_of(self._fd, sizes=False)
            if problem is not None or not sizes:
                return problem
            size = os.fstat(self._fd).st_size
            shrank, self._size_floor = size < self._size_floor, size
            if not shrank:
                return None
            return header_problem_of(self._fd, sizes=True)
        except OSError as exc:
            return f"cannot read its header ({exc.strerror})"

    def release_file(self) -> None:
        """Close the descriptor of the header check: only once every connection to the file
        in this process is closed (the writer's and the journal's reader)."""
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None

    def _file_gone(self) -> str | None:
        return self.check_file(sizes=True)

    def _refusal(self, reason: str) -> JournalUnavailable:
        return JournalDamaged(reason) if self._damaged else JournalUnavailable(reason)

    def _commit(self, jobs: list[AppendJob]) -> None:
        gone = self._file_gone()
        if gone is not None:
            self.failed_batches += 1
            self._deliver([(job.future, self._refusal(gone)) for job in jobs])
            return
        try:
            now_ms = int(self._clock() * 1000)
            # The head is read inside the write transaction, never carried over from the
            # last commit: other processes may append to the same file between two batches.
            with self._exclusive():
                stored, head = self._store.append_batch(
                    [job.row for job in jobs], now_ms=now_ms, head=None
                )
        except Exception as exc:
            if not isinstance(exc, sqlite3.Error | OSError):
                _log.exception("journal writer: unexpected error")
            self.failed_batches += 1
            if is_corruption(exc):
                self.mark_damaged(describe_failure(exc))
            error = (self._refusal(self._gone) if self._gone is not None
                     else JournalUnavailable(describe_failure(exc)))
            self._deliver([(job.future, error) for job in jobs])
            return
        self.commits += 1
        gone = self._file_gone()
        if gone is not None:
            # Committed, but into a file nobody will open again: not acknowledged.
            self._deliver([(job.future, self._refusal(gone)) for job in jobs])
            return
        outcomes: list[Outcome] = []
        for job, result in zip(jobs, stored, strict=True):
            if result.status == "id_conflict":
                outcomes.append((job.future, DuplicateEventId("event_id already journaled")))
            else:
                value = AppendResult(result.seq, result.event_id, result.status == "duplicate")
                outcomes.append((job.future, value))
        # Counted here, not from the head: other processes' rows may lie between two of
        # this writer's heads.
        written = sum(result.status == "new" for result in stored)
        self._deliver(outcomes, (head[0], written) if written else None)

    def _retain(self, job: RetentionJob) -> None:
        result: int | JournalUnavailable
        try:
            now_ms = int(self._clock() * 1000)
            with self._exclusive():
                result = self._store.apply_retention(
                    older_than_ms=(None if job.max_age_s is None
                                   else now_ms - int(job.max_age_s * 1000)),
                    max_bytes=job.max_bytes,
                )
        except Exception as exc:
            if not isinstance(exc, sqlite3.Error | OSError):
                _log.exception("journal retention: unexpected error")
            if is_corruption(exc):
                self.mark_damaged(describe_failure(exc, "retention"))
            result = JournalUnavailable(describe_failure(exc))
        self._deliver([(job.future, result)])


def _open_for_reading(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
