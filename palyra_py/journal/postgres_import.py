"""Writing a copied journal into PostgreSQL (``journal.transfer``): rows exactly as the
source stored them (COPY, the fastest way in), and the head moved in the same
transaction, which is also the copy's progress. The append-only trigger refuses UPDATE
and DELETE only; rows come in by INSERT like any append."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from palyra_py.journal.backend import ChainHead, EventRow
from palyra_py.journal.chain import EVENT_COLUMNS, ZERO_HASH
from palyra_py.journal.transfer import ReplayKeyRow
from palyra_py.storage.copying import CopyRefused
from palyra_py.storage.postgres import DRIVER_ERRORS, copy_error

__all__ = ["JournalImport"]

_KEY_BATCH = 5000


class JournalImport:
    """The ``JournalTarget`` of a copy, over one connection the caller owns (migrated)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def head(self) -> ChainHead:
        try:
            found = await self._conn.fetchrow("SELECT seq, hash FROM journal_head WHERE id = 1")
        except DRIVER_ERRORS as exc:
            raise copy_error(exc, "the journal", "read") from None
        if found is None:
            return ChainHead(0, ZERO_HASH)
        return ChainHead(int(found["seq"]), str(found["hash"]))

    async def write(self, rows: Sequence[EventRow], *, after: ChainHead,
                    checkpoint: ChainHead | None) -> ChainHead:
        conn = self._conn
        new = ChainHead(int(rows[-1].seq), str(rows[-1].hash)) if rows else (
            checkpoint or after)
        try:
            async with conn.transaction():
                found = await conn.fetchrow(
                    "SELECT seq, hash FROM journal_head WHERE id = 1 FOR UPDATE")
                if found is None or (int(found["seq"]), str(found["hash"])) != tuple(after):
                    raise CopyRefused(
                        "the target's journal moved while copying (is a daemon running on"
                        " it?): stop it and run the copy again")
                if checkpoint is not None:
                    await conn.execute(
                        "INSERT INTO journal_checkpoint (id, seq, hash) VALUES (1, $1, $2)",
                        checkpoint.seq, checkpoint.hash)
                if rows:
                    await conn.copy_records_to_table(
                        "journal_events", records=[tuple(row) for row in rows],
                        columns=list(EVENT_COLUMNS))
                await conn.execute("UPDATE journal_head SET seq = $1, hash = $2 WHERE id = 1",
                                   new.seq, new.hash)
        except DRIVER_ERRORS as exc:
            raise copy_error(exc, "the journal", "copy") from None
        return new

    async def write_keys(self, keys: Sequence[ReplayKeyRow]) -> None:
        conn = self._conn
        try:
            for start in range(0, len(keys), _KEY_BATCH):
                chunk = keys[start:start + _KEY_BATCH]
                await conn.execute(
                    "INSERT INTO replay_keys (integration_id, delivery_id, seq, event_id,"
                    " expires_at_ms) SELECT * FROM unnest($1::text[], $2::text[],"
                    " $3::bigint[], $4::text[], $5::bigint[])"
                    " ON CONFLICT (integration_id, delivery_id) DO UPDATE SET"
                    " seq = EXCLUDED.seq, event_id = EXCLUDED.event_id,"
                    " expires_at_ms = EXCLUDED.expires_at_ms",
                    *([getattr(k, f) for k in chunk] for f in ReplayKeyRow._fields))
        except DRIVER_ERRORS as exc:
            raise copy_error(exc, "the journal's replay keys", "copy") from None
