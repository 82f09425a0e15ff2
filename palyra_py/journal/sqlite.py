"""SQLite storage for the journal: file creation, pragmas, schema, transactions, and the SQL
of appends and reads; the hash chain's SQL (verification, retention) is in
``sqlite_chain``, the rules applied inside the transactions in ``chain``.

This module only stores and fetches rows (``backend.EventRow``), applying
``chain.plan_batch`` inside the append transaction. A ``JournalStore`` wraps one
connection and is not thread-safe: the engine (``sqlite_journal``) gives the writer thread
one store and guards the reader's with a lock.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from palyra_py.journal.backend import ChainHead, ChainWalk, EventRow, PendingRow, Stored
from palyra_py.journal.chain import (
    EVENT_COLUMNS,
    ZERO_HASH,
    KeyPair,
    fnmatch_class_end,
    key_pairs,
    plan_batch,
)
from palyra_py.journal.chain import chain_hash as chain_hash  # re-exported
from palyra_py.journal.sqlite_chain import (
    read_checkpoint,
    remove_through,
    retention_cut,
    walk_chain,
)
from palyra_py.storage import sqlite as sqlite_files
from palyra_py.storage.sqlite import FILE_MODE as FILE_MODE  # re-exported
from palyra_py.storage.sqlite import open_database, scalar
from palyra_py.storage.sqlite import related_files as related_files  # re-exported
from palyra_py.storage.sqlite import restrict_permissions as restrict_permissions  # re-exported

SCHEMA_VERSION = 1

_COLS = ", ".join(EVENT_COLUMNS)
_INSERT_EVENTS = f"INSERT INTO journal_events ({_COLS}) VALUES "  # noqa: S608 (constants)
# REPLACE: an expired key with the same identity gives way.
_INSERT_KEYS = (
    "INSERT OR REPLACE INTO replay_keys (integration_id, delivery_id, seq, event_id,"
    " expires_at_ms) VALUES "
)
_INSERT_ROWS_MAX = 64  # rows per INSERT: 64 x 13 parameters stay under SQLite's old 999
_INSERT_EXACT_MAX = 32  # up to this many rows: one INSERT of exactly that size
_LIVE_KEYS_MAX = 256  # keys looked up per statement (2 parameters each)
_PRUNE_EVERY = 64
"""Batches between two prunes of expired replay keys at most, even when no key this store
wrote has expired: other processes append keys too."""


@cache
def _insert_sql(head: str, columns: int, rows: int) -> str:
    row = "(" + ", ".join("?" for _ in range(columns)) + ")"
    return head + ", ".join(row for _ in range(rows))


def _insert_rows(cur: sqlite3.Cursor, head: str, rows: list[tuple[Any, ...]]) -> None:
    """INSERT ``rows`` with as few multi-row statements as the statement cache allows: a
    batch of up to ``_INSERT_EXACT_MAX`` rows in one statement of its own size, a bigger
    one in chunks of ``_INSERT_ROWS_MAX`` and a power of two, then the rest likewise.
    Every statement releases and takes back the GIL (twice: step and reset), and while the
    event loop holds it each take is a wait and a context switch, so fewer is cheaper."""
    if not rows:
        return
    columns = len(rows[0])
    start = 0
    while start < len(rows):
        left = len(rows) - start
        size = (left if left <= _INSERT_EXACT_MAX
                else min(_INSERT_ROWS_MAX, 1 << (left.bit_length() - 1)))
        chunk = rows[start:start + size]
        cur.execute(_insert_sql(head, columns, size), [value for row in chunk for value in row])
        start += size


_HEAD_SQL = (
    "SELECT 'head', NULL, NULL, seq, hash FROM"
    " (SELECT seq, hash FROM journal_events ORDER BY seq DESC LIMIT 1)"
)


@cache
def _live_keys_sql(count: int, with_head: bool) -> str:
    """The live replay keys among ``count`` listed ones (tagged ``key``), after the chain's
    newest row (tagged ``head``) when ``with_head``: one statement for both."""
    if count == 0:
        return _HEAD_SQL
    # CROSS JOIN keeps the listed keys as the outer loop, so each is one primary-key
    # search (left to itself the planner may scan the expiry index instead).
    values = ", ".join("(?, ?)" for _ in range(count))
    keys = (
        f"WITH k(integration_id, delivery_id) AS (VALUES {values})"  # noqa: S608 (placeholders)
        " SELECT 'key', r.integration_id, r.delivery_id, r.seq, r.event_id FROM k"
        " CROSS JOIN replay_keys AS r ON r.integration_id = k.integration_id"
        " AND r.delivery_id = k.delivery_id WHERE r.expires_at_ms > ?"
    )
    if not with_head:
        return keys
    # The head's subquery first: UNION ALL keeps both plans as they are alone.
    return keys.replace(" SELECT 'key'", f" {_HEAD_SQL} UNION ALL SELECT 'key'", 1)

_SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS journal_events (
        seq INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL UNIQUE,
        ts_unix_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        source TEXT NOT NULL,
        actor TEXT,
        integration_id TEXT,
        event_type TEXT,
        severity TEXT NOT NULL,
        payload_json TEXT NOT NULL,
        redacted INTEGER NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS journal_events_kind ON journal_events (kind, seq)",
    "CREATE INDEX IF NOT EXISTS journal_events_event_type ON journal_events (event_type, seq)",
    "CREATE INDEX IF NOT EXISTS journal_events_integration"
    " ON journal_events (integration_id, seq)",
    "CREATE INDEX IF NOT EXISTS journal_events_ts ON journal_events (ts_unix_ms)",
    # One row; retention flips it on and off inside its own transaction, so no other
    # connection ever sees it on.
    """CREATE TABLE IF NOT EXISTS journal_guard (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        retention_running INTEGER NOT NULL DEFAULT 0
    )""",
    "INSERT OR IGNORE INTO journal_guard (id, retention_running) VALUES (1, 0)",
    """CREATE TRIGGER IF NOT EXISTS journal_events_no_update
        BEFORE UPDATE ON journal_events
        BEGIN SELECT RAISE(ABORT, 'journal is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS journal_events_no_delete
        BEFORE DELETE ON journal_events
        WHEN (SELECT retention_running FROM journal_guard WHERE id = 1) IS NOT 1
        BEGIN SELECT RAISE(ABORT, 'journal is append-only'); END""",
    # The (seq, hash) of the last row removed by retention: where the chain now starts.
    """CREATE TABLE IF NOT EXISTS journal_checkpoint (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq INTEGER NOT NULL,
        hash TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS replay_keys (
        integration_id TEXT NOT NULL,
        delivery_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        event_id TEXT NOT NULL,
        expires_at_ms INTEGER NOT NULL,
        PRIMARY KEY (integration_id, delivery_id)
    )""",
    "CREATE INDEX IF NOT EXISTS replay_keys_expiry ON replay_keys (expires_at_ms)",
)

@dataclass(frozen=True, slots=True)
class WhereClause:
    """A filter turned into SQL. ``exact`` is False when the SQL only narrows the rows
    (a superset) and the caller must still filter them in Python."""

    sql: str
    params: tuple[Any, ...]
    exact: bool


def glob_for_fnmatch(pattern: str) -> tuple[str, bool]:
    """Translate an ``fnmatch`` pattern to an SQLite GLOB pattern.

    Returns ``(glob, exact)``. ``*``, ``?`` and literal characters translate exactly; a
    ``[...]`` class (whose syntax differs: ``[!x]`` vs ``[^x]``) becomes ``?``, which
    matches a superset, so ``exact`` is then False.
    """
    out: list[str] = []
    exact = True
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch in "*?":
            out.append(ch)
        elif ch == "[":
            j = fnmatch_class_end(pattern, i)
            if j is None:
                out.append("[[]")  # unclosed: fnmatch takes "[" literally
            else:
                out.append("?")  # a class matches exactly one character
                exact = False
                i = j + 1
        else:
            out.append(ch)
    return "".join(out), exact


def where_clause(
    *,
    types: Sequence[str],
    integration_id: str | None,
    source: str | None,
    since_ms: int | None,
    until_ms: int | None,
) -> WhereClause:
    """SQL for an event filter: ``types`` are fnmatch globs matched against ``kind`` or
    ``event_type``; ``since_ms`` is inclusive, ``until_ms`` exclusive."""
    parts: list[str] = []
    params: list[Any] = []
    exact = True
    if types:
        alternatives: list[str] = []
        for pattern in types:
            glob, glob_exact = glob_for_fnmatch(pattern)
            exact = exact and glob_exact
            alternatives.append("kind GLOB ? OR event_type GLOB ?")
            params.extend((glob, glob))
        parts.append("(" + " OR ".join(alternatives) + ")")
    if integration_id is not None:
        parts.append("integration_id = ?")
        params.append(integration_id)
    if source is not None:
        parts.append("source = ?")
        params.append(source)
    if since_ms is not None:
        parts.append("ts_unix_ms >= ?")
        params.append(since_ms)
    if until_ms is not None:
        parts.append("ts_unix_ms < ?")
        params.append(until_ms)
    return WhereClause(" AND ".join(parts) if parts else "1", tuple(params), exact)


class JournalStore:
    """All SQL of the journal over one SQLite connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        # When the expired replay keys must next be pruned: at the first batch, then once
        # a key this store wrote may have expired, or after _PRUNE_EVERY batches (keys of
        # other processes). Only ever moved on by a committed prune or insert.
        self._prune_at_ms: int | None = None
        self._batches_unpruned = 0

    @classmethod
    def open(cls, path: Path, *, busy_timeout_ms: int, create: bool) -> JournalStore:
        """Open the database; with ``create``, create it (mode 0600) and switch it to WAL,
        else open it query-only. Every connection gets ``synchronous=FULL`` (a commit is
        fsync'd) and the busy timeout."""
        def prepare(conn: sqlite3.Connection) -> None:
            if scalar(conn.execute("SELECT count(*) FROM sqlite_master")) == 0:
                # Only possible before the first table: lets retention give space back.
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")

        conn = open_database(
            path, busy_timeout_ms=busy_timeout_ms, create=create, label="journal",
            prepare=prepare,
        )
        if create:
            # The statement journal in memory: a multi-row INSERT of a batch needs one
            # (the replay keys' OR REPLACE may abort halfway), and past 64 KiB SQLite
            # spilled it to a temporary file: an open, an unlink and a hundred writes per
            # commit. It holds the pages the statement changes that existed before it
            # (b-tree pages, never a payload's new overflow pages): tens of pages a batch.
            conn.execute("PRAGMA temp_store = MEMORY")
        return cls(conn)

    def close(self) -> None:
        self._conn.close()

    def begin_read(self) -> None:
        """Start a read transaction: every query until ``rollback`` sees one snapshot."""
        self._conn.execute("BEGIN DEFERRED")

    def rollback(self) -> None:
        """Roll back if a transaction is open; never raises."""
        sqlite_files.rollback(self._conn)

    def ensure_schema(self) -> None:
        """Create the tables, indexes and triggers if missing (idempotent)."""
        sqlite_files.ensure_schema(self._conn, _SCHEMA, SCHEMA_VERSION, label="journal")

    # -- chain head --------------------------------------------------------------------

    def checkpoint(self) -> ChainHead | None:
        """``(seq, hash)`` of the last row removed by retention, if any."""
        return read_checkpoint(self._conn)

    def head(self) -> ChainHead:
        """``(seq, hash)`` the next append chains onto: the newest row, else the
        checkpoint, else ``(0, ZERO_HASH)``."""
        newest = self._conn.execute(
            "SELECT seq, hash FROM journal_events ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        if newest is not None:
            seq, row_hash = newest
            return ChainHead(int(seq), str(row_hash))
        return self.checkpoint() or ChainHead(0, ZERO_HASH)

    # -- appends -----------------------------------------------------------------------

    def append_batch(
        self, rows: Sequence[PendingRow], *, now_ms: int, head: tuple[int, str] | None
    ) -> tuple[list[Stored], ChainHead]:
        """Write ``rows`` after ``head`` (read from the table when None) in ONE transaction
        (``BEGIN IMMEDIATE`` ... ``COMMIT``: one fsync), replay keys included. Returns one
        ``Stored`` per row and the new head. On any error nothing is written."""
        try:
            return self._append(rows, now_ms, head, checked_ids=False)
        except sqlite3.IntegrityError as exc:
            if "journal_events.event_id" not in str(exc):
                raise
        # An event id already taken (only a caller-supplied one can be): nothing of the batch
        # was written; write it again with every id checked first, so that only that row
        # fails.
        return self._append(rows, now_ms, head, checked_ids=True)

    def _append(
        self, rows: Sequence[PendingRow], now_ms: int, head: tuple[int, str] | None,
        *, checked_ids: bool,
    ) -> tuple[list[Stored], ChainHead]:
        # Statements per batch, not per row, where one can answer for all: each statement
        # drops and retakes the GIL, which the event loop is waiting for.
        # The transaction is BEGIN, one SELECT (head and live keys), the prune when due,
        # one INSERT per table, COMMIT.
        cur = self._conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            pairs = [pair for row in rows for pair in key_pairs(row)]
            found, live = self._live_keys(cur, pairs, now_ms, with_head=head is None)
            seq, prev_hash = (found or self.checkpoint() or ChainHead(0, ZERO_HASH)
                              ) if head is None else head
            pruned_all = False
            if self._prune_due(now_ms):
                # Bounded, enough to outpace the keys the batches since the last prune can
                # have added (two a row).
                limit = 4 * len(rows) * (self._batches_unpruned + 1) + 64
                cur.execute(
                    "DELETE FROM replay_keys WHERE rowid IN (SELECT rowid FROM replay_keys"
                    " WHERE expires_at_ms <= ? ORDER BY expires_at_ms LIMIT ?)",
                    (now_ms, limit),
                )
                pruned_all = cur.rowcount < limit
            plan = plan_batch(
                rows, head=(seq, prev_hash), now_ms=now_ms, live=live,
                id_taken=self._event_id_taken if checked_ids else None,
            )
            _insert_rows(cur, _INSERT_EVENTS, plan.events)
            _insert_rows(cur, _INSERT_KEYS, plan.keys)
            cur.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise
        self._pruned(pruned_all, plan.keys)
        return plan.stored, plan.head

    def _prune_due(self, now_ms: int) -> bool:
        return (self._prune_at_ms is None or now_ms >= self._prune_at_ms
                or self._batches_unpruned + 1 >= _PRUNE_EVERY)

    def _pruned(self, complete: bool, keys: list[tuple[Any, ...]]) -> None:
        """After a commit: a complete prune left no expired key; the keys written expire
        at their ``expires_at_ms`` (the last field)."""
        if complete:
            self._batches_unpruned = 0
            self._prune_at_ms = min((key[-1] for key in keys), default=None)
            if self._prune_at_ms is None:
                self._prune_at_ms = 1 << 62  # no key known to expire: the batch count rules
            return
        self._batches_unpruned += 1
        if keys and self._prune_at_ms is not None:
            self._prune_at_ms = min(self._prune_at_ms, min(key[-1] for key in keys))

    def _live_keys(
        self, cur: sqlite3.Cursor, keys: list[KeyPair], now_ms: int, *, with_head: bool
    ) -> tuple[ChainHead | None, dict[KeyPair, Stored]]:
        """The chain's newest row (with ``with_head``; ``None`` for an empty table) and the
        replay keys among ``keys`` that are present and not expired."""
        head: ChainHead | None = None
        found: dict[KeyPair, Stored] = {}
        chunks = [keys[start:start + _LIVE_KEYS_MAX]
                  for start in range(0, len(keys), _LIVE_KEYS_MAX)] or [[]]
        for index, chunk in enumerate(chunks):
            first = with_head and index == 0
            if not chunk and not first:
                continue
            # Padded to a power of two (repeating a key is harmless): a handful of
            # statement texts, all kept in the connection's statement cache.
            size = 1 << (len(chunk) - 1).bit_length() if chunk else 0
            chunk = chunk + [chunk[0]] * (size - len(chunk)) if chunk else chunk
            params = [part for pair in chunk for part in pair]
            for tag, integration_id, delivery_id, seq, value in cur.execute(
                _live_keys_sql(size, first), (*params, now_ms) if chunk else ()
            ):
                if tag == "head":
                    head = ChainHead(int(seq), str(value))
                else:
                    found[(integration_id, delivery_id)] = Stored(
                        int(seq), str(value), "duplicate"
                    )
        return head, found

    def _event_id_taken(self, event_id: str) -> bool:
        found = self._conn.execute(
            "SELECT 1 FROM journal_events WHERE event_id = ?", (event_id,)
        ).fetchone()
        return found is not None

    # -- retention ---------------------------------------------------------------------

    def apply_retention(
        self, *, older_than_ms: int | None, max_bytes: int | None
    ) -> int:
        """Remove the oldest rows (a prefix of the chain) in one transaction, recording
        the last removed row's ``(seq, hash)`` as the checkpoint; return how many.

        By age: the rows before the first one stamped at or after ``older_than_ms`` (so a
        clock that stepped back never removes a newer row). By size: the oldest rows until
        the estimated size of the rest is at most ``max_bytes``. The newest row always
        stays, so the chain head survives.
        """
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            cut = retention_cut(self._conn, older_than_ms, max_bytes)
            removed = 0 if cut is None else remove_through(self._conn, cut)
            self._conn.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise
        if removed:
            try:
                # Give freed pages back to the file system; the rows are gone either way.
                self._conn.execute("PRAGMA incremental_vacuum").fetchall()
            except sqlite3.Error:
                pass
        return removed

    # -- reads -------------------------------------------------------------------------

    def select_events(self, where: WhereClause, *, after_seq: int, limit: int
                      ) -> list[EventRow]:
        """Rows with ``seq > after_seq`` matching ``where``, in seq order, at most ``limit``."""
        return [*map(EventRow._make, self._conn.execute(
            f"SELECT {_COLS} FROM journal_events WHERE seq > ? AND ({where.sql})"  # noqa: S608
            " ORDER BY seq LIMIT ?",
            (after_seq, *where.params, limit),
        ))]

    def quick_check(self, *, budget_s: float) -> tuple[str | None, bool]:
        """``PRAGMA quick_check`` for at most ``budget_s`` seconds: ``(problem, complete)``."""
        return sqlite_files.quick_check(self._conn, budget_s=budget_s)

    def walk_chain(self, *, chunk: int = 1000) -> ChainWalk:
        """Check the whole chain in seq order, ``chunk`` rows at a time, from the
        checkpoint (or seq 1 and ``ZERO_HASH``): contiguous seqs, each ``prev_hash`` equal
        to the previous row's hash, each hash recomputed from the stored columns. Call
        inside ``begin_read`` for one consistent snapshot."""
        return walk_chain(self._conn, chunk=chunk)
