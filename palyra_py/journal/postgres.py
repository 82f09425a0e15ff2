"""PostgreSQL storage for the journal: the schema (versioned migrations), and the SQL of
appends, reads, the chain walk and retention, each over one asyncpg connection. The
rules applied inside the transactions are ``chain``'s, as in SQLite.

Several appenders (processes, nodes) share the tables: an append transaction first locks
the one ``journal_head`` row (``FOR UPDATE``), so appends take turns, each reads the head
it chains onto and the live replay keys only once it holds the lock (READ COMMITTED: a
statement after the lock sees every commit before it), and moves the head in the same
commit. Seqs are gap-free because a seq is only taken under that lock, in the commit
that writes it.

The journal is append-only: a trigger refuses UPDATE, DELETE and TRUNCATE on
``journal_events``, except the DELETE of retention, which sets ``palyra.retention`` for
its own transaction only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from palyra_py.journal.backend import ChainHead, ChainWalk, EventRow, PendingRow, Stored
from palyra_py.journal.chain import (
    EVENT_COLUMNS,
    ZERO_HASH,
    BatchPlan,
    ChainCheck,
    KeyPair,
    fnmatch_class_end,
    key_pairs,
    plan_batch,
)
from palyra_py.storage.postgres import Migration

__all__ = [
    "HEAD_CHANNEL",
    "MIGRATIONS",
    "STORE",
    "JournalSql",
    "WhereClause",
    "like_for_fnmatch",
    "where_clause",
]

STORE = "journal"
HEAD_CHANNEL = "palyra_journal_head"
"""Each append transaction that writes rows NOTIFYs its new head seq (decimal) here;
PostgreSQL delivers it to the listeners (``bus.postgres``) only once it committed."""
RETENTION_LOCK = 0x70616C797261_02
"""Advisory lock of a retention run: one node at a time; the others skip theirs."""

_COLS = ", ".join(EVENT_COLUMNS)
_TYPES = ("bigint", "text", "bigint", "text", "text", "text", "text", "text", "text", "text",
          "smallint", "text", "text")

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "journal events, head, checkpoint, replay keys, append-only trigger", (
        """CREATE TABLE journal_events (
            seq bigint PRIMARY KEY,
            event_id text NOT NULL UNIQUE,
            ts_unix_ms bigint NOT NULL,
            kind text NOT NULL,
            source text NOT NULL,
            actor text,
            integration_id text,
            event_type text,
            severity text NOT NULL,
            payload_json text NOT NULL,
            redacted smallint NOT NULL,
            prev_hash text NOT NULL,
            hash text NOT NULL
        )""",
        "CREATE INDEX journal_events_kind ON journal_events (kind, seq)",
        "CREATE INDEX journal_events_event_type ON journal_events (event_type, seq)",
        "CREATE INDEX journal_events_integration ON journal_events (integration_id, seq)",
        "CREATE INDEX journal_events_ts ON journal_events (ts_unix_ms)",
        # The lock every append takes, and where the next one chains on.
        """CREATE TABLE journal_head (
            id integer PRIMARY KEY CHECK (id = 1),
            seq bigint NOT NULL,
            hash text NOT NULL
        )""",
        "INSERT INTO journal_head (id, seq, hash) VALUES (1, 0, repeat('0', 64))",  # ZERO_HASH
        # The (seq, hash) of the last row removed by retention: where the chain now starts.
        """CREATE TABLE journal_checkpoint (
            id integer PRIMARY KEY CHECK (id = 1),
            seq bigint NOT NULL,
            hash text NOT NULL
        )""",
        """CREATE TABLE replay_keys (
            integration_id text NOT NULL,
            delivery_id text NOT NULL,
            seq bigint NOT NULL,
            event_id text NOT NULL,
            expires_at_ms bigint NOT NULL,
            PRIMARY KEY (integration_id, delivery_id)
        )""",
        "CREATE INDEX replay_keys_expiry ON replay_keys (expires_at_ms)",
        """CREATE FUNCTION palyra_journal_append_only() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP = 'DELETE' AND current_setting('palyra.retention', true) = 'on' THEN
                    RETURN OLD;
                END IF;
                RAISE EXCEPTION 'journal is append-only' USING ERRCODE = 'P0001';
            END $$""",
        """CREATE TRIGGER journal_events_append_only
            BEFORE UPDATE OR DELETE ON journal_events
            FOR EACH ROW EXECUTE FUNCTION palyra_journal_append_only()""",
        """CREATE TRIGGER journal_events_no_truncate
            BEFORE TRUNCATE ON journal_events
            FOR EACH STATEMENT EXECUTE FUNCTION palyra_journal_append_only()""",
    )),
    # A webhook's payload (often several KB) is compressed when stored; PostgreSQL's
    # default, pglz, was a third of the server's CPU per append in bench/pg_ingress.py, lz4
    # (PostgreSQL 14 and later, where the server is built with it) costs far less for the
    # same size. Only new values are written with it; a server without lz4 keeps pglz.
    Migration(2, "journal payloads compressed with lz4 where the server has it", (
        """DO $$ BEGIN
            ALTER TABLE journal_events ALTER COLUMN payload_json SET COMPRESSION lz4;
        EXCEPTION WHEN feature_not_supported OR syntax_error THEN
            NULL;
        END $$""",
    )),
)

_LOCK_HEAD = "SELECT seq, hash FROM journal_head WHERE id = 1 FOR UPDATE"
# Bounded pruning (enough to outpace the keys a batch adds: two a row), then the live keys
# among those asked: one statement, run after the head's lock is held.
_LIVE_KEYS = """
    WITH pruned AS (
        DELETE FROM replay_keys WHERE (integration_id, delivery_id) IN (
            SELECT integration_id, delivery_id FROM replay_keys
            WHERE expires_at_ms <= $1 ORDER BY expires_at_ms LIMIT $2)
    )
    SELECT r.integration_id, r.delivery_id, r.seq, r.event_id
    FROM unnest($3::text[], $4::text[]) AS k(integration_id, delivery_id)
    JOIN replay_keys AS r
      ON r.integration_id = k.integration_id AND r.delivery_id = k.delivery_id
    WHERE r.expires_at_ms > $1
"""
# The rows, their keys (an expired key with the same identity gives way), the new head and
# its notification (sent by the server at COMMIT, only if it commits) in one statement.
_WRITE = f"""
    WITH ev AS (
        INSERT INTO journal_events ({_COLS})
        SELECT * FROM unnest({", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(_TYPES))})
    ), keys AS (
        INSERT INTO replay_keys (integration_id, delivery_id, seq, event_id, expires_at_ms)
        SELECT * FROM unnest($14::text[], $15::text[], $16::bigint[], $17::text[],
                             $18::bigint[])
        ON CONFLICT (integration_id, delivery_id) DO UPDATE SET
            seq = EXCLUDED.seq, event_id = EXCLUDED.event_id,
            expires_at_ms = EXCLUDED.expires_at_ms
    )
    UPDATE journal_head SET seq = $19, hash = $20 WHERE id = 1
    RETURNING pg_notify('{HEAD_CHANNEL}', seq::text)
"""  # noqa: S608 (constants and placeholders only)
_TAKEN_IDS = "SELECT event_id FROM journal_events WHERE event_id = ANY($1::text[])"
_SIZE = (
    "SELECT pg_total_relation_size('journal_events') + pg_total_relation_size('replay_keys')"
)
# Estimated stored bytes of one row, for size-based retention (as SQLite's estimate: the
# text columns plus a fixed allowance for the integers and the row's overhead).
_ROW_BYTES = "(48 + " + " + ".join(
    f"coalesce(octet_length({col}), 0)" for col in EVENT_COLUMNS
    if col not in ("seq", "ts_unix_ms", "redacted")
) + ")"


@dataclass(frozen=True, slots=True)
class WhereClause:
    """A filter turned into SQL whose first placeholder is ``$first``; ``exact`` is False
    when the SQL only narrows the rows (a superset the caller filters in Python)."""

    sql: str
    params: tuple[Any, ...]
    exact: bool


def like_for_fnmatch(pattern: str) -> tuple[str, bool]:
    """An ``fnmatch`` pattern as a LIKE pattern (backslash escapes): ``(like, exact)``.
    ``*`` and ``?`` and literals translate exactly; a ``[...]`` class becomes ``_`` (one
    character: a superset), so ``exact`` is then False."""
    out: list[str] = []
    exact = True
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch == "[":
            j = fnmatch_class_end(pattern, i)
            if j is None:
                out.append("[")  # unclosed: fnmatch takes "[" literally
            else:
                out.append("_")
                exact = False
                i = j + 1
        elif ch in "%_\\":
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out), exact


def where_clause(
    *,
    first: int,
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

    def placeholder(value: Any) -> str:
        params.append(value)
        return f"${first + len(params) - 1}"

    if types:
        alternatives: list[str] = []
        for pattern in types:
            like, like_exact = like_for_fnmatch(pattern)
            exact = exact and like_exact
            p = placeholder(like)
            alternatives.append(f"kind LIKE {p} OR event_type LIKE {p}")
        parts.append("(" + " OR ".join(alternatives) + ")")
    if integration_id is not None:
        parts.append(f"integration_id = {placeholder(integration_id)}")
    if source is not None:
        parts.append(f"source = {placeholder(source)}")
    if since_ms is not None:
        parts.append(f"ts_unix_ms >= {placeholder(since_ms)}")
    if until_ms is not None:
        parts.append(f"ts_unix_ms < {placeholder(until_ms)}")
    return WhereClause(" AND ".join(parts) if parts else "true", tuple(params), exact)


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows as one list per column (the arrays ``unnest`` takes)."""
    return [[row[i] for row in rows] for i in range(width)]


Connection = asyncpg.Connection | PoolConnectionProxy
"""A connection of its own or one lent by a pool."""


class JournalSql:
    """The journal's SQL over one connection, which the caller does not share meanwhile."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.reached_commit = False
        """Whether the last append got as far as its COMMIT: a connection lost before it
        wrote nothing, and the batch may be tried again on a new one."""

    # -- appends -----------------------------------------------------------------------

    async def append_batch(self, rows: Sequence[PendingRow], *, now_ms: int
                           ) -> tuple[list[Stored], ChainHead]:
        """Write ``rows`` in ONE transaction (one commit), the chain head locked and read
        inside it, replay keys included; one ``Stored`` per row and the new head. On any
        error nothing is written."""
        try:
            return await self._append(rows, now_ms, checked_ids=False)
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name != "journal_events_event_id_key":
                raise
        # An event id already taken (only a caller-supplied one can be): nothing of the
        # batch was written; write it again with every id checked first, so that only that
        # row fails.
        return await self._append(rows, now_ms, checked_ids=True)

    async def _append(self, rows: Sequence[PendingRow], now_ms: int, *, checked_ids: bool
                      ) -> tuple[list[Stored], ChainHead]:
        conn = self.conn
        self.reached_commit = False
        async with conn.transaction():
            head = await conn.fetchrow(_LOCK_HEAD)
            if head is None:
                raise RuntimeError("journal_head row is missing")
            pairs = [pair for row in rows for pair in key_pairs(row)]
            live = await self._live_keys(pairs, now_ms, prune=4 * len(rows) + 64)
            taken: set[str] = set()
            if checked_ids:
                found = await conn.fetch(_TAKEN_IDS, [row.event_id for row in rows])
                taken = {str(r["event_id"]) for r in found}
            plan = plan_batch(
                rows, head=(int(head["seq"]), str(head["hash"])), now_ms=now_ms, live=live,
                id_taken=taken.__contains__ if checked_ids else None,
            )
            if plan.events:
                await self._write(plan)
            self.reached_commit = True
        return plan.stored, plan.head

    async def _live_keys(self, pairs: list[KeyPair], now_ms: int, *, prune: int
                         ) -> dict[KeyPair, Stored]:
        if not pairs:
            return {}
        found = await self.conn.fetch(
            _LIVE_KEYS, now_ms, prune, [p[0] for p in pairs], [p[1] for p in pairs]
        )
        return {
            (str(r["integration_id"]), str(r["delivery_id"])):
                Stored(int(r["seq"]), str(r["event_id"]), "duplicate")
            for r in found
        }

    async def _write(self, plan: BatchPlan) -> None:
        events = _columns(plan.events, len(EVENT_COLUMNS))
        keys = _columns(plan.keys, 5)
        await self.conn.execute(_WRITE, *events, *keys, plan.head.seq, plan.head.hash)

    # -- reads -------------------------------------------------------------------------

    async def head(self) -> ChainHead:
        found = await self.conn.fetchrow("SELECT seq, hash FROM journal_head WHERE id = 1")
        if found is None:
            return ChainHead(0, ZERO_HASH)
        return ChainHead(int(found["seq"]), str(found["hash"]))

    async def select_events(self, where: WhereClause, *, after_seq: int, limit: int
                            ) -> list[EventRow]:
        """Rows with ``seq > after_seq`` matching ``where`` (built with ``first=3``), in seq
        order, at most ``limit``."""
        found = await self.conn.fetch(
            f"SELECT {_COLS} FROM journal_events WHERE seq > $1 AND ({where.sql})"  # noqa: S608
            " ORDER BY seq LIMIT $2",
            after_seq, limit, *where.params,
        )
        return [EventRow(*record) for record in found]

    async def size_bytes(self) -> int:
        return int(await self.conn.fetchval(_SIZE) or 0)

    async def walk_chain(self, *, chunk: int = 1000) -> ChainWalk:
        """``ChainCheck`` over every row in seq order from the checkpoint, in one snapshot
        (a REPEATABLE READ, read-only transaction of its own)."""
        async with self.conn.transaction(isolation="repeatable_read", readonly=True):
            found = await self.conn.fetchrow(
                "SELECT seq, hash FROM journal_checkpoint WHERE id = 1")
            check = ChainCheck(None if found is None
                               else ChainHead(int(found["seq"]), str(found["hash"])))
            after = 0
            while True:
                rows = [EventRow(*record) for record in await self.conn.fetch(
                    f"SELECT {_COLS} FROM journal_events"  # noqa: S608
                    " WHERE seq > $1 ORDER BY seq LIMIT $2", after, chunk,
                )]
                broken = check.feed(rows)
                if broken is not None:
                    return broken
                if len(rows) < chunk:
                    return check.result()
                after = int(rows[-1].seq)

    # -- retention ---------------------------------------------------------------------

    async def apply_retention(self, *, older_than_ms: int | None, max_bytes: int | None
                              ) -> int:
        """Remove the oldest rows (a prefix of the chain, never the newest row) in one
        transaction and make the last removed row the checkpoint; how many went. By age:
        the rows before the first stamped at or after ``older_than_ms``; by size: the
        oldest until the estimated size of the rest is at most ``max_bytes``. Another
        node's run in progress: this one removes nothing."""
        conn = self.conn
        async with conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", RETENTION_LOCK):
                return 0
            # Appends wait meanwhile, so the newest row is the newest.
            await conn.execute(_LOCK_HEAD)
            cut = await self._retention_cut(older_than_ms, max_bytes)
            if cut is None:
                return 0
            last_hash = await conn.fetchval(
                "SELECT hash FROM journal_events WHERE seq = $1", cut)
            await conn.execute("SET LOCAL palyra.retention = 'on'")
            status = await conn.execute("DELETE FROM journal_events WHERE seq <= $1", cut)
            await conn.execute("SET LOCAL palyra.retention = 'off'")
            await conn.execute(
                "INSERT INTO journal_checkpoint (id, seq, hash) VALUES (1, $1, $2)"
                " ON CONFLICT (id) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash",
                cut, str(last_hash),
            )
        return int(status.rsplit(" ", 1)[-1])

    async def _retention_cut(self, older_than_ms: int | None, max_bytes: int | None
                             ) -> int | None:
        conn = self.conn
        bounds = await conn.fetchrow("SELECT min(seq) AS low, max(seq) AS high"
                                     " FROM journal_events")
        if bounds is None or bounds["low"] is None:
            return None
        first, newest = int(bounds["low"]), int(bounds["high"])
        cut = first - 1
        if older_than_ms is not None:
            young = await conn.fetchval(
                "SELECT seq FROM journal_events WHERE ts_unix_ms >= $1 ORDER BY seq LIMIT 1",
                older_than_ms,
            )
            cut = max(cut, newest if young is None else int(young) - 1)
        if max_bytes is not None:
            total = int(await conn.fetchval(
                f"SELECT coalesce(sum({_ROW_BYTES}), 0) FROM journal_events"  # noqa: S608
            ))
            excess = total - max_bytes
            if excess > 0:
                through = await conn.fetchval(
                    f"SELECT seq FROM (SELECT seq, sum({_ROW_BYTES}) OVER (ORDER BY seq)"  # noqa: S608
                    " AS removed FROM journal_events) AS run WHERE removed >= $1"
                    " ORDER BY seq LIMIT 1", excess,
                )
                if through is not None:
                    cut = max(cut, int(through))
        cut = min(cut, newest - 1)
        return cut if cut >= first else None
