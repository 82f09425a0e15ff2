"""The hash chain's SQL in SQLite: the retention checkpoint, reading the rows ``verify``
checks (with ``chain.ChainCheck``), and how retention cuts off the oldest rows while
keeping the chain verifiable.

These functions run no transaction of their own: ``JournalStore`` opens one around them (a
snapshot for ``walk_chain``, a write transaction for retention).
"""

from __future__ import annotations

import sqlite3

from palyra_py.journal.backend import ChainHead, ChainWalk, EventRow
from palyra_py.journal.chain import EVENT_COLUMNS, ChainCheck

_COLS = ", ".join(EVENT_COLUMNS)

# Estimated stored bytes of one row, for size-based retention: the text columns plus a
# fixed allowance for the integers and SQLite's record overhead.
_ROW_BYTES = (
    "(48 + "
    + " + ".join(
        f"ifnull(length(CAST({col} AS BLOB)), 0)"
        for col in EVENT_COLUMNS
        if col not in ("seq", "ts_unix_ms", "redacted")
    )
    + ")"
)


def read_checkpoint(conn: sqlite3.Connection) -> ChainHead | None:
    """``(seq, hash)`` of the last row removed by retention, if any."""
    found = conn.execute("SELECT seq, hash FROM journal_checkpoint WHERE id = 1").fetchone()
    if found is None:
        return None
    seq, row_hash = found
    return ChainHead(int(seq), str(row_hash))


def walk_chain(conn: sqlite3.Connection, *, chunk: int = 1000) -> ChainWalk:
    """``ChainCheck`` over every row in seq order, ``chunk`` rows at a time, from the
    checkpoint. Run it inside one read transaction for one consistent snapshot."""
    check = ChainCheck(read_checkpoint(conn))
    after = 0
    while True:
        rows = [EventRow._make(row) for row in conn.execute(
            f"SELECT {_COLS} FROM journal_events"  # noqa: S608
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, chunk),
        )]
        broken = check.feed(rows)
        if broken is not None:
            return broken
        if len(rows) < chunk:
            return check.result()
        after = int(rows[-1].seq)


def retention_cut(
    conn: sqlite3.Connection, older_than_ms: int | None, max_bytes: int | None
) -> int | None:
    """The last seq retention should remove, or None for nothing; never the newest row.

    By age: the rows before the first one stamped at or after ``older_than_ms`` (so a clock
    that stepped back never removes a newer row). By size: the oldest rows until the
    estimated size of the rest is at most ``max_bytes``."""
    low, high = conn.execute("SELECT min(seq), max(seq) FROM journal_events").fetchone()
    if low is None:
        return None
    first, newest = int(low), int(high)
    cut = first - 1
    if older_than_ms is not None:
        young = conn.execute(
            "SELECT seq FROM journal_events WHERE ts_unix_ms >= ? ORDER BY seq LIMIT 1",
            (older_than_ms,),
        ).fetchone()
        if young is None:
            cut = max(cut, newest)
        else:
            (young_seq,) = young
            cut = max(cut, int(young_seq) - 1)
    if max_bytes is not None:
        (total,) = conn.execute(
            f"SELECT ifnull(sum({_ROW_BYTES}), 0) FROM journal_events"  # noqa: S608
        ).fetchone()
        excess = int(total) - max_bytes
        if excess > 0:
            removed = 0
            # The cursor streams rows: memory stays bounded however long the scan.
            for seq, size in conn.execute(
                f"SELECT seq, {_ROW_BYTES} FROM journal_events ORDER BY seq"  # noqa: S608
            ):
                removed += int(size)
                if removed >= excess:
                    cut = max(cut, int(seq))
                    break
    cut = min(cut, newest - 1)
    return cut if cut >= first else None


def remove_through(conn: sqlite3.Connection, seq: int) -> int:
    """Delete the rows up to ``seq`` (past the append-only trigger, through the guard row)
    and make ``seq`` and its hash the checkpoint; return how many rows went."""
    (last_hash,) = conn.execute(
        "SELECT hash FROM journal_events WHERE seq = ?", (seq,)
    ).fetchone()
    conn.execute("UPDATE journal_guard SET retention_running = 1 WHERE id = 1")
    cur = conn.execute("DELETE FROM journal_events WHERE seq <= ?", (seq,))
    conn.execute("UPDATE journal_guard SET retention_running = 0 WHERE id = 1")
    conn.execute(
        "INSERT OR REPLACE INTO journal_checkpoint (id, seq, hash) VALUES (1, ?, ?)",
        (seq, str(last_hash)),
    )
    return max(cur.rowcount, 0)
