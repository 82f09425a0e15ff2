"""The journal's rules every engine applies inside its transactions, pure (no I/O, no
clock): the payload's stored text, the SHA-256 hash chain (how a row's hash is made and how
the chain is checked), and the plan of one append batch (seqs, hashes, replay keys).

Each row's ``hash`` covers its other columns and the previous row's hash, so a row changed,
removed or inserted behind the daemon's back breaks the chain at that row. Retention removes
a prefix of the chain and records the last removed row's ``(seq, hash)`` as the checkpoint
the chain then starts from. The SQLite side (reading rows for these rules, retention's
cut) is ``journal.sqlite_chain``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from json.encoder import encode_basestring
from typing import Any, NamedTuple

from palyra_py.journal.backend import ChainHead, ChainWalk, EventRow, PendingRow, Stored

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
"""Column order of every row the journal store returns or accepts (``EventRow``); the
hash covers every column but the last, in this order."""



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


def row_hash(row: EventRow) -> str:
    """The hash a stored row should carry, recomputed from its other columns."""
    record = row._asdict()
    del record["hash"]
    return chain_hash(str(row.prev_hash), record)


# -- verification ----------------------------------------------------------------------


class ChainCheck:
    """Checks a chain fed in seq order, from the checkpoint (or seq 1 and ``ZERO_HASH``):
    contiguous seqs, each ``prev_hash`` equal to the previous row's hash, each hash
    recomputed from the stored columns. Feed every row of one consistent snapshot."""

    def __init__(self, checkpoint: ChainHead | None) -> None:
        expected, self._prev_hash = checkpoint or (0, ZERO_HASH)
        self._expected = expected + 1
        self._checked = 0
        self._first: int | None = None
        self._last: int | None = None
        self.broken: ChainWalk | None = None
        """The outcome once a row broke the chain; feed no more rows then."""

    def feed(self, rows: Sequence[EventRow]) -> ChainWalk | None:
        """Check ``rows`` (the next ones in seq order); the outcome if one broke the
        chain, else ``None``."""
        for row in rows:
            seq = int(row.seq)
            self._first = seq if self._first is None else self._first
            if seq != self._expected:
                # The first missing seq (or a row that sits before the checkpoint).
                return self._break(min(seq, self._expected), "seq gap")
            if row.prev_hash != self._prev_hash:
                return self._break(seq, "prev_hash does not link")
            if row_hash(row) != row.hash:
                return self._break(seq, "hash mismatch")
            self._checked, self._last = self._checked + 1, seq
            self._prev_hash, self._expected = str(row.hash), seq + 1
        return None

    def _break(self, seq: int, reason: str) -> ChainWalk:
        self.broken = ChainWalk(self._checked, self._first, self._last, seq, reason)
        return self.broken

    def result(self) -> ChainWalk:
        """The outcome after the last row."""
        if self.broken is not None:
            return self.broken
        return ChainWalk(self._checked, self._first, self._last, None, "ok")


# -- the plan of one append batch ------------------------------------------------------

KeyPair = tuple[str, str]
"""A replay key as stored: ``(integration_id, delivery_id)``."""


def key_pairs(row: PendingRow) -> tuple[KeyPair, ...]:
    """The replay keys a row is checked and stored under: its delivery id and, when it
    differs, its content key, both under its integration."""
    if row.replay_key is None:
        return ()
    integration_id, delivery_id, _ = row.replay_key
    if row.content_key is None or row.content_key == delivery_id:
        return ((integration_id, delivery_id),)
    return ((integration_id, delivery_id), (integration_id, row.content_key))


class BatchPlan(NamedTuple):
    """What one append transaction writes: ``events`` (parameter tuples in
    ``EVENT_COLUMNS`` order), ``keys`` (``(integration_id, delivery_id, seq, event_id,
    expires_at_ms)``), one ``Stored`` per row given, and the head after it."""

    stored: list[Stored]
    events: list[tuple[Any, ...]]
    keys: list[tuple[Any, ...]]
    head: ChainHead


def plan_batch(
    rows: Sequence[PendingRow],
    *,
    head: tuple[int, str],
    now_ms: int,
    live: dict[KeyPair, Stored],
    id_taken: Callable[[str], bool] | None = None,
) -> BatchPlan:
    """Plan appending ``rows`` after ``head`` (read inside the transaction), all stamped
    ``now_ms``: a row with a key in ``live`` (the keys present and unexpired, as
    ``duplicate``) is that original's duplicate, and so is a second row of the batch with
    one of the same keys; with ``id_taken``, a row whose event id is taken (or repeats one
    of the batch) is an ``id_conflict``; every other row gets the next seq and chains on.
    ``live`` is updated with the keys planned."""
    seq, prev_hash = head
    stored: list[Stored] = []
    events: list[tuple[Any, ...]] = []
    keys: list[tuple[Any, ...]] = []
    batch_ids: set[str] = set()
    for row in rows:
        key = row.replay_key
        pairs = key_pairs(row)
        seen = next((live[pair] for pair in pairs if pair in live), None)
        if seen is not None:
            stored.append(seen)
            continue
        if id_taken is not None and (row.event_id in batch_ids or id_taken(row.event_id)):
            stored.append(Stored(0, row.event_id, "id_conflict"))
            continue
        seq += 1
        redacted = int(row.redacted)
        new_hash = new_row_hash(
            prev_hash, seq, row.event_id, now_ms, row.kind, row.source, row.actor,
            row.integration_id, row.event_type, row.severity, row.payload_json, redacted,
        )
        events.append((
            seq, row.event_id, now_ms, row.kind, row.source, row.actor, row.integration_id,
            row.event_type, row.severity, row.payload_json, redacted, prev_hash, new_hash,
        ))
        prev_hash = new_hash
        if key is not None:
            _, _, window_ms = key
            for pair in pairs:
                keys.append((*pair, seq, row.event_id, now_ms + window_ms))
                # A second delivery of the same key in this batch is its duplicate.
                live[pair] = Stored(seq, row.event_id, "duplicate")
        if id_taken is not None:
            batch_ids.add(row.event_id)
        stored.append(Stored(seq, row.event_id, "new"))
    return BatchPlan(stored, events, keys, ChainHead(seq, prev_hash))



def fnmatch_class_end(pattern: str, start: int) -> int | None:
    """Where the ``[...]`` class whose ``[`` is just before ``start`` ends (the index of
    its ``]``), found the way ``fnmatch`` does (a leading ``!`` and a leading ``]`` belong
    to the class); ``None`` when it is not closed (``fnmatch`` then takes ``[`` literally).
    For the engines' translations of type globs into their own pattern syntax."""
    j, n = start, len(pattern)
    if j < n and pattern[j] == "!":
        j += 1
    if j < n and pattern[j] == "]":
        j += 1
    while j < n and pattern[j] != "]":
        j += 1
    return None if j >= n else j
