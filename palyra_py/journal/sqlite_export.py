"""Reading ``journal.db`` for a copy to another engine (``journal.transfer``): rows by
seq, the checkpoint, the live replay keys. The file is opened query-only and never
written; each call runs in a thread, off the event loop."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from palyra_py.journal.backend import ChainHead, EventRow
from palyra_py.journal.chain import EVENT_COLUMNS, ZERO_HASH
from palyra_py.journal.sqlite_chain import read_checkpoint
from palyra_py.journal.transfer import ReplayKeyRow
from palyra_py.storage.sqlite import QueryOnlyFile, scalar

__all__ = ["JournalExport"]

_COLS = ", ".join(EVENT_COLUMNS)


class JournalExport(QueryOnlyFile):
    """The ``JournalSource`` of a copy, over one query-only connection."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, label="journal", file_name="journal.db")

    async def checkpoint(self) -> ChainHead | None:
        return await self._call("read", read_checkpoint)

    async def head(self) -> ChainHead:
        def read(conn: sqlite3.Connection) -> ChainHead:
            found = conn.execute(
                "SELECT seq, hash FROM journal_events ORDER BY seq DESC LIMIT 1").fetchone()
            if found is not None:
                seq, row_hash = found
                return ChainHead(int(seq), str(row_hash))
            return read_checkpoint(conn) or ChainHead(0, ZERO_HASH)
        return await self._call("read", read)

    async def first(self) -> ChainHead | None:
        def read(conn: sqlite3.Connection) -> ChainHead | None:
            found = conn.execute(
                "SELECT seq, hash FROM journal_events ORDER BY seq LIMIT 1").fetchone()
            if found is None:
                return None
            seq, row_hash = found
            return ChainHead(int(seq), str(row_hash))
        return await self._call("read", read)

    async def count_after(self, seq: int) -> int:
        return await self._call("read", lambda conn: int(scalar(conn.execute(
            "SELECT count(*) FROM journal_events WHERE seq > ?", (seq,)))))

    async def row_hash(self, seq: int) -> str | None:
        def read(conn: sqlite3.Connection) -> str | None:
            value = scalar(conn.execute("SELECT hash FROM journal_events WHERE seq = ?",
                                        (seq,)))
            return None if value is None else str(value)
        return await self._call("read", read)

    async def rows_after(self, seq: int, limit: int) -> list[EventRow]:
        return await self._call("read", lambda conn: [
            EventRow._make(record) for record in conn.execute(
                f"SELECT {_COLS} FROM journal_events WHERE seq > ?"  # noqa: S608 (constants)
                " ORDER BY seq LIMIT ?", (seq, limit))])

    async def live_keys(self, now_ms: int) -> list[ReplayKeyRow]:
        return await self._call("read", lambda conn: [
            ReplayKeyRow(str(i), str(d), int(s), str(e), int(x)) for i, d, s, e, x in
            conn.execute("SELECT integration_id, delivery_id, seq, event_id, expires_at_ms"
                         " FROM replay_keys WHERE expires_at_ms > ? ORDER BY seq", (now_ms,))])
