"""The journal, the spine: append-only events with a contiguous, increasing ``seq``, a SHA-256
hash chain, replay keys in the same commit, retention with a checkpoint, over one storage
engine (``JournalBackend``; SQLite: ``journal.sqlite_journal``).

When ``append`` returns, the event is durable (its commit was fsync'd, or committed by the
server). This facade checks and encodes events on the caller's side, bounds the appends
waiting, and turns stored rows into ``JournalEvent``s; every public name of the journal can
be imported from here.
"""

from __future__ import annotations

import json
import re

import orjson

from palyra_py.events import (
    AppendResult,
    EncodedPayload,
    EventFilter,
    JournalEvent,
    NewEvent,
    ReplayKey,
    VerifyResult,
)
from palyra_py.ids import new_ulid
from palyra_py.journal.backend import (
    DuplicateEventId,
    EventRow,
    JournalBackend,
    JournalDamaged,
    JournalUnavailable,
    PendingRow,
)
from palyra_py.journal.chain import encode_payload, is_storable_text

__all__ = [
    "DEFAULT_MAX_PENDING",
    "AppendResult",
    "DuplicateEventId",
    "EncodedPayload",
    "EventFilter",
    "Journal",
    "JournalBackend",
    "JournalDamaged",
    "JournalEvent",
    "JournalUnavailable",
    "NewEvent",
    "ReplayKey",
    "VerifyResult",
]

DEFAULT_MAX_PENDING = 10_000

_LIST_CHUNK_MIN = 256
_LIST_CHUNK_MAX = 4096


_LONG_DIGITS = re.compile(r"[0-9]{20}")


def _event_from_row(row: EventRow) -> JournalEvent:
    # Unpacked once: the dispatcher and every stream read through here.
    (seq, event_id, ts_unix_ms, kind, source, actor, integration_id, event_type, severity,
     text, redacted, prev_hash, row_hash) = row
    try:
        # orjson turns integers past 64 bits into floats; a run of 20 digits may be one, so
        # such payloads take the exact (slower) parser.
        payload = json.loads(text) if _LONG_DIGITS.search(text) else orjson.loads(text)
    except (TypeError, ValueError):
        try:  # orjson refuses escaped lone surrogates, which encode_payload may keep
            payload = json.loads(text)
        except (TypeError, ValueError):
            payload = None
    if not isinstance(payload, dict):
        # Only a row altered behind the daemon's back gets here; verify names it.
        payload = {"_unreadable_payload": True}
    return JournalEvent(
        int(seq), str(event_id), int(ts_unix_ms), str(kind), str(source), actor,
        integration_id, event_type, str(severity), payload, bool(redacted), str(prev_hash),
        str(row_hash),
    )


_TEXT_FIELDS = ("kind", "source", "actor", "integration_id", "event_type", "severity")


def _storable(value: object) -> bool:
    return isinstance(value, str) and (value.isascii() or is_storable_text(value))


def _pending_row(event: NewEvent) -> PendingRow:
    """Check and serialize on the caller's side, so that a bad event fails its own append
    and never the batch it would have joined."""
    texts = (event.kind, event.source, event.actor, event.integration_id, event.event_type,
             event.severity)
    try:
        plain = "".join([text for text in texts if text is not None]).isascii()
    except TypeError:  # not all text: the loop below names the field
        plain = False
    if not plain:
        for name, value in zip(_TEXT_FIELDS, texts, strict=True):
            if value is not None and not _storable(value):
                raise ValueError(f"NewEvent.{name} must be valid Unicode text")
    key = event.replay_key
    replay_key = None
    content_key = None
    if key is not None:
        # Checked here too: the writer binds them, and a bad one would fail the batch.
        if not (_storable(key.integration_id) and _storable(key.delivery_id)
                and (key.content_key is None or _storable(key.content_key))):
            raise ValueError("NewEvent.replay_key must be valid Unicode text")
        replay_key = (key.integration_id, key.delivery_id, int(key.window_s * 1000))
        if key.content_key is not None and key.content_key != key.delivery_id:
            content_key = key.content_key
    return PendingRow(
        event.event_id if event.event_id is not None else new_ulid(),
        event.kind,
        event.source,
        event.actor,
        event.integration_id,
        event.event_type,
        event.severity,
        (event.payload.text if isinstance(event.payload, EncodedPayload)
         else encode_payload(event.payload)),
        event.redacted,
        replay_key,
        content_key,
    )


# -- the journal ----------------------------------------------------------------------


class Journal:
    """The journal of one state root over ``backend``. Use it from the event loop that ran
    ``start``."""

    def __init__(self, backend: JournalBackend, *, max_pending: int = DEFAULT_MAX_PENDING
                 ) -> None:
        """``max_pending`` bounds appends waiting for the engine; beyond it, append raises
        ``JournalUnavailable``."""
        self._backend = backend
        self._max_pending = max_pending
        self._pending = 0
        self._live = False
        self._closed = False

    @property
    def backend(self) -> JournalBackend:
        """The storage engine (the composition root chose it)."""
        return self._backend

    @property
    def start_check(self) -> str:
        """The engine's integrity check at ``start``: ``ok``, ``incomplete``, ``skipped``
        or ``not run``."""
        return self._backend.start_check

    @property
    def unavailable_reason(self) -> str | None:
        """Why every append is refused until a restart (the storage removed, replaced or
        damaged), else ``None``."""
        return self._backend.unavailable_reason

    @property
    def damaged(self) -> bool:
        """Whether the storage was found damaged (see ``unavailable_reason``)."""
        return self._backend.damaged

    def check_file(self) -> str | None:
        """Check now that the storage is still the one opened and sound; the reason
        appends are refused, if any."""
        return self._backend.check_file()

    @property
    def commits(self) -> int:
        """Append transactions committed so far (one fsync each), for tests and metrics."""
        return self._backend.commits

    @property
    def failed_batches(self) -> int:
        """Append batches answered with ``JournalUnavailable`` so far."""
        return self._backend.failed_batches

    async def start(self) -> None:
        """Open (create if missing) the storage and start taking appends. Raises
        ``JournalUnavailable`` (``JournalDamaged``) if it cannot be used."""
        if self._closed:
            raise JournalUnavailable("journal is closed")
        await self._backend.start()
        self._live = True

    async def close(self) -> None:
        """Finish every append already queued and release the storage. Later appends
        raise ``JournalUnavailable``."""
        if self._closed:
            return
        self._closed = True
        self._live = False
        await self._backend.close()

    async def append(self, event: NewEvent) -> AppendResult:
        """Append ``event``; return once it is durable, or is a duplicate of a live replay
        key. Raises ``JournalUnavailable`` (nothing written), ``DuplicateEventId``, or
        ``ValueError``/``TypeError`` for an event that cannot be stored (e.g. NaN)."""
        if not self._live:
            raise JournalUnavailable("journal is closed")
        if self._pending >= self._max_pending:
            raise JournalUnavailable("journal write queue is full")
        committed = self._backend.append(_pending_row(event))
        self._pending += 1
        try:
            return await committed
        finally:
            self._pending -= 1

    async def apply_retention(self, *, max_age_s: float | None, max_bytes: int | None) -> int:
        """Remove the oldest rows older than ``max_age_s`` and/or beyond ``max_bytes`` of
        estimated row size, never the newest row, keeping the chain verifiable through a
        checkpoint. Appends never fail because of it. Returns the number of rows removed."""
        if not self._live:
            raise JournalUnavailable("journal is closed")
        return await self._backend.apply_retention(max_age_s=max_age_s, max_bytes=max_bytes)

    async def list(
        self, flt: EventFilter, *, after_seq: int = 0, limit: int = 100
    ) -> list[JournalEvent]:
        """Events with ``seq > after_seq`` matching ``flt``, in seq order, at most
        ``limit`` (no other cap). Page on with ``after_seq`` = the last seq returned."""
        backend = self._backend
        # An exact filter in the engine reads only what is needed; a coarse one (glob
        # classes) reads bigger chunks and the rest of the filtering happens here.
        exact = flt.visible is None and backend.filters_exactly(flt.types)
        found: list[JournalEvent] = []
        cursor = after_seq
        while len(found) < limit:
            want = limit - len(found)
            chunk = want if exact else min(max(want, _LIST_CHUNK_MIN), _LIST_CHUNK_MAX)
            rows = await backend.read_events(flt, after_seq=cursor, limit=chunk)
            for row in rows:
                event = _event_from_row(row)
                if flt.matches(event):
                    found.append(event)
                    if len(found) >= limit:
                        break
            if len(rows) < chunk:
                break
            cursor = int(rows[-1].seq)
        return found

    async def last_seq(self) -> int:
        """The newest seq (0 for an empty journal; retention never removes the newest)."""
        return await self._backend.last_seq()

    async def verify(self) -> VerifyResult:
        """Walk the whole chain (from the retention checkpoint, if any) recomputing every
        hash, in one snapshot, so appends and listing go on meanwhile. Also works on a
        closed journal."""
        walk = await self._backend.verify()
        return VerifyResult(walk.first_broken_seq is None, *walk)

    def size_bytes(self) -> int:
        """Bytes the journal takes on its storage (SQLite: the file and its WAL)."""
        return self._backend.size_bytes()
