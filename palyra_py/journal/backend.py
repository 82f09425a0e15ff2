"""What the ``Journal`` facade needs from a storage engine (``JournalBackend``), the rows an
engine takes and returns, and the errors it raises: never a driver's own (``sqlite3.Error``
and the like stay inside the engine module).

The facade checks and encodes each ``NewEvent`` into a ``PendingRow``, bounds the appends
waiting, decodes ``EventRow``s into ``JournalEvent``s and applies the filter rules in
Python. The engine makes appends durable (group commit, the hash chain and the replay keys
in the same transaction: ``journal.chain`` has the pure rules), reads rows by seq, walks
the chain and applies retention. SQLite: ``journal.sqlite_journal``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Literal, NamedTuple, Protocol

from palyra_py.events import AppendResult, EventFilter

__all__ = [
    "ChainHead",
    "ChainWalk",
    "DuplicateEventId",
    "EventRow",
    "JournalBackend",
    "JournalDamaged",
    "JournalUnavailable",
    "PendingRow",
    "Stored",
]


class JournalUnavailable(Exception):
    """The journal could not make an append durable or could not read (disk full, locked,
    removed, closed, the server unreachable...). Nothing of the failed batch was
    committed."""


class JournalDamaged(JournalUnavailable):
    """The journal's storage is damaged (SQLite: SQLITE_CORRUPT, SQLITE_NOTADB, a truncated
    or overwritten file): nothing more is acknowledged until it is dealt with. The message
    says what happened and what to do."""


class DuplicateEventId(ValueError):
    """A caller-supplied ``event_id`` is already in the journal; nothing was written."""


class ChainHead(NamedTuple):
    """Where the next append chains on: the newest row's seq and hash, else the retention
    checkpoint's, else ``(0, ZERO_HASH)``."""

    seq: int
    hash: str


class PendingRow(NamedTuple):
    """One append as an engine takes it: every column but seq, ts and the hashes."""

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
    content_key: str | None = None
    """A second delivery id under ``replay_key``'s integration and window (a digest of the
    signed content): the row is a duplicate when either key is live, and both are stored."""


class EventRow(NamedTuple):
    """One stored journal row, every column in ``chain.EVENT_COLUMNS`` order."""

    seq: int
    event_id: str
    ts_unix_ms: int
    kind: str
    source: str
    actor: str | None
    integration_id: str | None
    event_type: str | None
    severity: str
    payload_json: str
    redacted: int
    prev_hash: str
    hash: str


class Stored(NamedTuple):
    """What became of one ``PendingRow``: ``new`` (written), ``duplicate`` (a live replay
    key: seq/event_id are the original's) or ``id_conflict`` (event_id taken: seq is 0)."""

    seq: int
    event_id: str
    status: Literal["new", "duplicate", "id_conflict"]


class ChainWalk(NamedTuple):
    """The outcome of walking the whole chain (see ``VerifyResult``)."""

    checked: int
    first_seq: int | None
    last_seq: int | None
    first_broken_seq: int | None
    reason: str


class JournalBackend(Protocol):
    """A journal storage engine. Used from the event loop that ran ``start``; every method
    raises ``JournalUnavailable`` (or ``JournalDamaged``) for a storage failure, never the
    driver's error."""

    @property
    def unavailable_reason(self) -> str | None:
        """Why every append is refused until a restart, else ``None``."""
        ...

    @property
    def damaged(self) -> bool:
        """Whether the refusal is for damaged storage."""
        ...

    @property
    def commits(self) -> int:
        """Append transactions committed so far."""
        ...

    @property
    def failed_batches(self) -> int:
        """Append batches refused with ``JournalUnavailable`` so far."""
        ...

    @property
    def start_check(self) -> str:
        """The integrity check run by ``start``: ``ok``, ``incomplete``, ``skipped`` or
        ``not run``."""
        ...

    async def start(self) -> None:
        """Open (create if missing) the storage and start taking appends."""
        ...

    async def close(self) -> None:
        """Commit every append already queued, then release the storage. Also when
        ``start`` never ran."""
        ...

    def check_file(self) -> str | None:
        """Check now that the storage is still the one opened and sound; the reason appends
        are refused, if any."""
        ...

    def append(self, row: PendingRow) -> Awaitable[AppendResult]:
        """Queue ``row``; the awaitable settles once the transaction holding it (and the
        rows queued with it: group commit) is durable, with its seq, or the original's for a
        live replay key, or raises ``JournalUnavailable`` (nothing of its batch written) or
        ``DuplicateEventId``; when the engine is closed or not started, raises
        ``JournalUnavailable`` at once. Seqs are gap-free and each row chains onto the one
        before, whatever other appenders share the storage."""
        ...

    async def apply_retention(self, *, max_age_s: float | None, max_bytes: int | None) -> int:
        """Remove the oldest rows (never the newest) as ``Journal.apply_retention`` says;
        return how many."""
        ...

    def filters_exactly(self, types: Sequence[str]) -> bool:
        """Whether ``read_events`` narrows by these type globs exactly (else it returns a
        superset the caller filters)."""
        ...

    async def read_events(
        self, flt: EventFilter, *, after_seq: int, limit: int
    ) -> list[EventRow]:
        """Rows with ``seq > after_seq`` in seq order, at most ``limit``: those matching
        ``flt``'s types (a superset unless ``filters_exactly``), integration, source and
        time bounds. ``flt.visible`` is the caller's to apply."""
        ...

    async def last_seq(self) -> int:
        """The newest seq (0 for an empty journal)."""
        ...

    async def verify(self) -> ChainWalk:
        """Walk the whole chain in one snapshot while appends go on; works after ``close``
        too."""
        ...

    def size_bytes(self) -> int:
        """Bytes the journal takes on its storage."""
        ...
