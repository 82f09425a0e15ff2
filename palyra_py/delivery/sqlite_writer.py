"""The one writer thread of the delivery store: it owns the write connection and runs
the queued jobs in shared transactions (one fsync for all of them), each job in a savepoint.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from palyra_py.delivery.backend import DeliveryStoreUnavailable
from palyra_py.delivery.sqlite import DeliverySql, describe_error
from palyra_py.storage.sqlite import (
    QueueWriterThread,
    call_in_loop,
    file_identity,
    settle_outcomes,
)

_log = logging.getLogger("palyra_py.delivery.sqlite")
_T = TypeVar("_T")

Settle = Callable[[Any], None]
"""Called in the writer's event loop with a job's result, or the exception that ended it."""
_Outcome = tuple[Settle, Any]


@dataclass(frozen=True, slots=True)
class WriteJob(Generic[_T]):
    """``run`` is called on the writer thread inside the open transaction; ``settle`` in
    the writer's event loop with its result (or exception) after the commit."""

    run: Callable[[DeliverySql], _T]
    settle: Settle

    @classmethod
    def for_future(cls, run: Callable[[DeliverySql], _T], future: asyncio.Future[_T]
                   ) -> WriteJob[_T]:
        """A job whose outcome goes to ``future`` (unless its caller gave up on it)."""

        def settle(value: Any) -> None:
            settle_outcomes([(future, value)])

        return cls(run, settle)


def _settle_all(outcomes: list[_Outcome]) -> None:
    for settle, value in outcomes:
        settle(value)


class DeliveryWriter(QueueWriterThread):
    """The store's only writer. Takes the first queued job and whatever else is queued
    (up to ``batch_max``) and runs them in one transaction, each in a savepoint."""

    def __init__(
        self, sql: DeliverySql, *, loop: asyncio.AbstractEventLoop, batch_max: int,
        path: Path | None = None,
    ) -> None:
        super().__init__(name="palyra-delivery-writer", batch_max=batch_max)
        self._sql = sql
        self._loop = loop
        self.commits = 0
        self.jobs = 0
        """Jobs run in committed transactions (a batch of attempts is one)."""
        # As the journal's writer: SQLite goes on writing into an unlinked inode, so the
        # path must still name the file written, or nothing written is kept.
        self._path = path
        self._inode = file_identity(path) if path is not None else None
        self._gone: str | None = None
        self._gone_lock = threading.Lock()
        self.on_unavailable: Callable[[str], None] | None = None
        """Called in the event loop once, when the file is found removed or replaced."""

    @property
    def unavailable_reason(self) -> str | None:
        """Why every write is refused until a restart (the file removed or replaced)."""
        return self._gone

    def check_file(self) -> str | None:
        """Does the path still name the file written? Else refuse every write from now on.
        Returns the reason, if any. Any thread (a stat)."""
        if (self._gone is None and self._path is not None
                and file_identity(self._path) != self._inode):
            with self._gone_lock:
                if self._gone is not None:
                    return self._gone
                self._gone = (f"{self._path} was removed or replaced under the running daemon; "
                              "dispatching has stopped")
            _log.error("delivery writer: %s", self._gone)
            if self.on_unavailable is not None:
                call_in_loop(self._loop, self.on_unavailable, self._gone)
        return self._gone

    def submit(self, job: WriteJob[Any]) -> None:
        self._put(job)

    def _close(self) -> None:
        self._sql.close()

    def _run_batch(self, jobs: list[WriteJob[Any]]) -> None:
        gone = self.check_file()
        if gone is not None:
            self._deliver([(job.settle, DeliveryStoreUnavailable(gone)) for job in jobs])
            return
        try:
            outcomes = self._transaction(jobs)
        except Exception as exc:
            self._sql.rollback()
            if len(jobs) > 1:
                # One job may have broken the shared transaction: give each its own, so
                # the others do not fail on its account.
                for job in jobs:
                    self._run_batch([job])
                return
            outcomes = [(jobs[0].settle, self._failure(exc))]
        gone = self.check_file()
        if gone is not None:
            # Committed into a file nobody will open again: as good as not written.
            outcomes = [(job.settle, DeliveryStoreUnavailable(gone)) for job in jobs]
        self._deliver(outcomes)

    def _transaction(self, jobs: list[WriteJob[Any]]) -> list[_Outcome]:
        sql = self._sql
        sql.begin_write()
        outcomes: list[_Outcome] = []
        for job in jobs:
            sql.savepoint()
            try:
                value = job.run(sql)
            except (ValueError, LookupError) as exc:
                # The job refused (bad input, unknown id): undo its writes only.
                sql.rollback_to_savepoint()
                outcomes.append((job.settle, exc))
            else:
                sql.release_savepoint()
                outcomes.append((job.settle, value))
        sql.commit()
        self.commits += 1
        self.jobs += len(jobs)
        return outcomes

    @staticmethod
    def _failure(exc: Exception) -> Exception:
        if isinstance(exc, sqlite3.Error | OSError):
            return DeliveryStoreUnavailable(describe_error(exc, "write"))
        _log.exception("delivery writer: unexpected error")
        return exc

    def _deliver(self, outcomes: list[_Outcome]) -> None:
        call_in_loop(self._loop, _settle_all, outcomes)
