"""The journal's SHA-256 hash chain in SQLite: how a row's hash is made, how the whole chain
is checked, and how retention cuts off its oldest rows while keeping it verifiable.

Each row's ``hash`` covers its other columns and the previous row's hash, so a row changed,
removed or inserted behind the daemon's back breaks the chain at that row. Retention removes
a prefix of the chain and records the last removed row's ``(seq, hash)`` as the checkpoint
the chain then starts from.

The functions that take a connection run no transaction of their own: ``JournalStore``
opens one around them (a snapshot for ``walk_chain``, a write transaction for retention).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from json.encoder import encode_basestring
from typing import Any, NamedTuple

ZERO_HASH = "0" * 64
_GIL_FREE_HASH_BYTES = 2047  # CPython's hashlib releases the GIL from 2048 bytes on

EVENT_COLUMNS: tuple[str, ...] = (
    "seq",
    "event_id",
    "ts_unix_ms",
    "kind",
    "source",
    "actor",
    "integration_id",
    "event_type",
    "severity",
    "payload_json",
    "redacted",
    "prev_hash",
    "hash",
)
"""Column order of every row the journal store returns or accepts; the hash covers every
column but the last, in this order."""

Row = tuple[Any, ...]

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


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: str, record: dict[str, Any]) -> str:
    """``sha256(prev_hash + "\\n" + canonical JSON of the other columns + "\\n" +
    payload_json)`` in hex, where ``record`` maps every column of the row except ``hash`` to
    its stored value. The payload text is hashed as stored rather than escaped again inside
    the canonical JSON: it is the bulk of a row, and the writer holds the GIL meanwhile."""
    fields = {k: v for k, v in record.items() if k != "payload_json"}
    digest = hashlib.sha256(f"{prev_hash}\n{canonical_json(fields)}\n".encode())
    digest.update(str(record.get("payload_json", "")).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def _text(value: str | None) -> str:
    # encode_basestring is the string encoder json.dumps uses with ensure_ascii=False.
    return "null" if value is None else encode_basestring(value)


def new_row_hash(
    prev_hash: str,
    seq: int,
    event_id: str,
    ts_unix_ms: int,
    kind: str,
    source: str,
    actor: str | None,
    integration_id: str | None,
    event_type: str | None,
    severity: str,
    payload_json: str,
    redacted: int,
) -> str:
    """``chain_hash`` of a row about to be appended, whose columns have the types the journal
    writes (text, NULL or int, never bool), with the canonical JSON written out directly:
    the same text ``canonical_json`` makes (keys sorted), at a fraction of its cost on the
    writer thread. ``chain_hash``/``row_hash`` stay the general form that ``verify`` uses."""
    canonical = (
        f'{{"actor":{_text(actor)},"event_id":{encode_basestring(event_id)},'
        f'"event_type":{_text(event_type)},"integration_id":{_text(integration_id)},'
        f'"kind":{encode_basestring(kind)},"prev_hash":{encode_basestring(prev_hash)},'
        f'"redacted":{int(redacted)},"seq":{int(seq)},"severity":{encode_basestring(severity)},'
        f'"source":{encode_basestring(source)},"ts_unix_ms":{int(ts_unix_ms)}}}'
    )
    digest = hashlib.sha256(f"{prev_hash}\n{canonical}\n".encode())
    payload = memoryview(payload_json.encode("utf-8", "surrogatepass"))
    # In pieces under 2048 bytes, which hashlib hashes without dropping the GIL: taking it
    # back means waiting for the event loop, and this thread has more to do before its
    # next statement lets the loop run.
    for start in range(0, len(payload), _GIL_FREE_HASH_BYTES):
        digest.update(payload[start:start + _GIL_FREE_HASH_BYTES])
    return digest.hexdigest()


def row_hash(row: Row) -> str:
    """The hash a stored row should carry, recomputed from its other columns."""
    return chain_hash(str(row[11]), dict(zip(EVENT_COLUMNS[:-1], row[:-1], strict=True)))


class ChainWalk(NamedTuple):
    checked: int
    first_seq: int | None
    last_seq: int | None
    first_broken_seq: int | None
    reason: str


def read_checkpoint(conn: sqlite3.Connection) -> tuple[int, str] | None:
    """``(seq, hash)`` of the last row removed by retention, if any."""
    row = conn.execute("SELECT seq, hash FROM journal_checkpoint WHERE id = 1").fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


# -- verification ----------------------------------------------------------------------


def walk_chain(conn: sqlite3.Connection, *, chunk: int = 1000) -> ChainWalk:
    """Check the whole chain in seq order, ``chunk`` rows at a time, from the checkpoint
    (or seq 1 and ``ZERO_HASH``): contiguous seqs, each ``prev_hash`` equal to the previous
    row's hash, each hash recomputed from the stored columns. Run it inside one read
    transaction for one consistent snapshot."""
    checkpoint = read_checkpoint(conn)
    expected, prev_hash = checkpoint or (0, ZERO_HASH)
    expected += 1
    checked, first, last = 0, None, None
    after = 0
    while True:
        rows = conn.execute(
            f"SELECT {_COLS} FROM journal_events"  # noqa: S608
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, chunk),
        ).fetchall()
        for row in rows:
            seq = int(row[0])
            first = seq if first is None else first
            if seq != expected:
                # The first missing seq (or a row that sits before the checkpoint).
                return ChainWalk(checked, first, last, min(seq, expected), "seq gap")
            if row[11] != prev_hash:
                return ChainWalk(checked, first, last, seq, "prev_hash does not link")
            if row_hash(row) != row[12]:
                return ChainWalk(checked, first, last, seq, "hash mismatch")
            checked, last, prev_hash, expected = checked + 1, seq, str(row[12]), seq + 1
        if len(rows) < chunk:
            return ChainWalk(checked, first, last, None, "ok")
        after = int(rows[-1][0])


# -- retention -------------------------------------------------------------------------


def retention_cut(
    conn: sqlite3.Connection, older_than_ms: int | None, max_bytes: int | None
) -> int | None:
    """The last seq retention should remove, or None for nothing; never the newest row.

    By age: the rows before the first one stamped at or after ``older_than_ms`` (so a clock
    that stepped back never removes a newer row). By size: the oldest rows until the
    estimated size of the rest is at most ``max_bytes``."""
    bounds = conn.execute("SELECT min(seq), max(seq) FROM journal_events").fetchone()
    if bounds[0] is None:
        return None
    first, newest = int(bounds[0]), int(bounds[1])
    cut = first - 1
    if older_than_ms is not None:
        row = conn.execute(
            "SELECT seq FROM journal_events WHERE ts_unix_ms >= ? ORDER BY seq LIMIT 1",
            (older_than_ms,),
        ).fetchone()
        cut = max(cut, newest if row is None else int(row[0]) - 1)
    if max_bytes is not None:
        total = conn.execute(
            f"SELECT ifnull(sum({_ROW_BYTES}), 0) FROM journal_events"  # noqa: S608
        ).fetchone()[0]
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
    last = conn.execute("SELECT hash FROM journal_events WHERE seq = ?", (seq,))
    last_hash = str(last.fetchone()[0])
    conn.execute("UPDATE journal_guard SET retention_running = 1 WHERE id = 1")
    cur = conn.execute("DELETE FROM journal_events WHERE seq <= ?", (seq,))
    conn.execute("UPDATE journal_guard SET retention_running = 0 WHERE id = 1")
    conn.execute(
        "INSERT OR REPLACE INTO journal_checkpoint (id, seq, hash) VALUES (1, ?, ?)",
        (seq, last_hash),
    )
    return max(cur.rowcount, 0)
