"""SQLite storage for the journal: file creation, pragmas, schema, transactions, and the SQL
of appends and reads; the hash chain's SQL (verification, retention) is in ``journal_chain``.

``journal.py`` owns the rules (group commit, replay semantics); this module only stores and
fetches rows. It knows nothing of the journal's dataclasses, so that a PostgreSQL store can
be added beside it behind the same methods.

A ``JournalStore`` wraps one connection and is not thread-safe: the journal gives the
writer thread one store and guards the reader's with a lock.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from palyra_py import sqlite_files
from palyra_py.journal_chain import (
    EVENT_COLUMNS,
    ZERO_HASH,
    ChainWalk,
    Row,
    chain_hash,
    read_checkpoint,
    remove_through,
    retention_cut,
    walk_chain,
)
from palyra_py.sqlite_files import FILE_MODE as FILE_MODE  # re-exported
from palyra_py.sqlite_files import open_database
from palyra_py.sqlite_files import related_files as related_files  # re-exported
from palyra_py.sqlite_files import restrict_permissions as restrict_permissions  # re-exported

SCHEMA_VERSION = 1

_COLS = ", ".join(EVENT_COLUMNS)
_INSERT_EVENT = (
    f"INSERT INTO journal_events ({_COLS})"  # noqa: S608 (constant column names)
    f" VALUES ({', '.join('?' for _ in EVENT_COLUMNS)})"
)

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

def encode_payload(payload: Any) -> str:
    """The ``payload_json`` column: compact, sorted keys, UTF-8 text. Raises ``TypeError``
    / ``ValueError`` for what JSON cannot hold (NaN and infinities included)."""
    if not isinstance(payload, dict):
        raise TypeError("payload must be a dict")
    text = json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    if not is_storable_text(text):
        # Lone surrogates (legal as JSON escapes): keep them escaped, losslessly.
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return text


def is_storable_text(value: str) -> bool:
    """False for strings holding lone surrogates, which have no UTF-8 form."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class PendingRow:
    """One append as the store takes it: every column but seq, ts and the hashes."""

    event_id: str
    kind: str
    source: str
    actor: str | None
    integration_id: str | None
    event_type: str | None
    severity: str
    payload_json: str
    redacted: bool
    replay_key: tuple[str, str, int] | None
    """``(integration_id, delivery_id, window_ms)``."""


@dataclass(frozen=True, slots=True)
class Stored:
    """What became of one ``PendingRow``: ``new`` (written), ``duplicate`` (a live replay
    key: seq/event_id are the original's) or ``id_conflict`` (event_id taken: seq is 0)."""

    seq: int
    event_id: str
    status: Literal["new", "duplicate", "id_conflict"]


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
            # Find the end of the class the way fnmatch does: a leading "!" and a
            # leading "]" belong to the class.
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
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

    @classmethod
    def open(cls, path: Path, *, busy_timeout_ms: int, create: bool) -> JournalStore:
        """Open the database; with ``create``, create it (mode 0600) and switch it to WAL,
        else open it query-only. Every connection gets ``synchronous=FULL`` (a commit is
        fsync'd) and the busy timeout."""
        def prepare(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
                # Only possible before the first table: lets retention give space back.
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")

        conn = open_database(
            path, busy_timeout_ms=busy_timeout_ms, create=create, label="journal",
            prepare=prepare,
        )
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

    def checkpoint(self) -> tuple[int, str] | None:
        """``(seq, hash)`` of the last row removed by retention, if any."""
        return read_checkpoint(self._conn)

    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` the next append chains onto: the newest row, else the
        checkpoint, else ``(0, ZERO_HASH)``."""
        row = self._conn.execute(
            "SELECT seq, hash FROM journal_events ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        if row is not None:
            return int(row[0]), str(row[1])
        return self.checkpoint() or (0, ZERO_HASH)

    # -- appends -----------------------------------------------------------------------

    def append_batch(
        self, rows: Sequence[PendingRow], *, now_ms: int, head: tuple[int, str] | None
    ) -> tuple[list[Stored], tuple[int, str]]:
        """Write ``rows`` after ``head`` (read from the table when None) in ONE transaction
        (``BEGIN IMMEDIATE`` ... ``COMMIT``: one fsync), replay keys included. Returns one
        ``Stored`` per row and the new head. On any error nothing is written."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            seq, prev_hash = self.head() if head is None else head
            # Bounded pruning, enough to outpace the keys this batch can add.
            self._conn.execute(
                "DELETE FROM replay_keys WHERE rowid IN (SELECT rowid FROM replay_keys"
                " WHERE expires_at_ms <= ? ORDER BY expires_at_ms LIMIT ?)",
                (now_ms, 2 * len(rows) + 64),
            )
            stored: list[Stored] = []
            batch_keys: dict[tuple[str, str], Stored] = {}
            batch_ids: set[str] = set()
            for row in rows:
                if row.replay_key is not None:
                    seen = batch_keys.get(row.replay_key[:2]) or self._live_key(row, now_ms)
                    if seen is not None:
                        stored.append(seen)
                        continue
                if row.event_id in batch_ids or self._event_id_taken(row.event_id):
                    stored.append(Stored(0, row.event_id, "id_conflict"))
                    continue
                seq += 1
                record: dict[str, Any] = {
                    "seq": seq,
                    "event_id": row.event_id,
                    "ts_unix_ms": now_ms,
                    "kind": row.kind,
                    "source": row.source,
                    "actor": row.actor,
                    "integration_id": row.integration_id,
                    "event_type": row.event_type,
                    "severity": row.severity,
                    "payload_json": row.payload_json,
                    "redacted": int(row.redacted),
                    "prev_hash": prev_hash,
                }
                prev_hash = chain_hash(prev_hash, record)
                self._conn.execute(_INSERT_EVENT, (*record.values(), prev_hash))
                if row.replay_key is not None:
                    integration_id, delivery_id, window_ms = row.replay_key
                    # REPLACE: an expired key with the same identity gives way.
                    self._conn.execute(
                        "INSERT OR REPLACE INTO replay_keys (integration_id, delivery_id,"
                        " seq, event_id, expires_at_ms) VALUES (?, ?, ?, ?, ?)",
                        (integration_id, delivery_id, seq, row.event_id, now_ms + window_ms),
                    )
                    batch_keys[(integration_id, delivery_id)] = Stored(
                        seq, row.event_id, "duplicate"
                    )
                batch_ids.add(row.event_id)
                stored.append(Stored(seq, row.event_id, "new"))
            self._conn.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise
        return stored, (seq, prev_hash)

    def _live_key(self, row: PendingRow, now_ms: int) -> Stored | None:
        assert row.replay_key is not None
        found = self._conn.execute(
            "SELECT seq, event_id FROM replay_keys WHERE integration_id = ? AND delivery_id = ?"
            " AND expires_at_ms > ?",
            (*row.replay_key[:2], now_ms),
        ).fetchone()
        return None if found is None else Stored(int(found[0]), str(found[1]), "duplicate")

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

    def select_events(self, where: WhereClause, *, after_seq: int, limit: int) -> list[Row]:
        """Rows with ``seq > after_seq`` matching ``where``, in seq order, at most ``limit``."""
        return self._conn.execute(
            f"SELECT {_COLS} FROM journal_events WHERE seq > ? AND ({where.sql})"  # noqa: S608
            " ORDER BY seq LIMIT ?",
            (after_seq, *where.params, limit),
        ).fetchall()

    def walk_chain(self, *, chunk: int = 1000) -> ChainWalk:
        """Check the whole chain in seq order, ``chunk`` rows at a time, from the
        checkpoint (or seq 1 and ``ZERO_HASH``): contiguous seqs, each ``prev_hash`` equal
        to the previous row's hash, each hash recomputed from the stored columns. Call
        inside ``begin_read`` for one consistent snapshot."""
        return walk_chain(self._conn, chunk=chunk)
