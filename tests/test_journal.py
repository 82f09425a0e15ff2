"""The journal on real SQLite files: group commit, durability, hash chain, replay keys,
append-only triggers, retention, failure and recovery, listing."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from palyra_py.journal.backend import PendingRow
from palyra_py.journal.journal import (
    DEFAULT_MAX_PENDING,
    DuplicateEventId,
    EventFilter,
    Journal,
    JournalEvent,
    JournalUnavailable,
    NewEvent,
    ReplayKey,
)
from palyra_py.journal.sqlite import (
    ZERO_HASH,
    JournalStore,
    chain_hash,
    glob_for_fnmatch,
)
from palyra_py.journal.sqlite_journal import SqliteJournal
from palyra_py.testing import ManualClock

JournalFactory = Callable[..., Journal]


@pytest.fixture
async def make_journal(tmp_path: Path, clock: ManualClock) -> AsyncIterator[JournalFactory]:
    opened: list[Journal] = []

    def make(path: Path | None = None, **kwargs: object) -> Journal:
        kwargs.setdefault("clock", clock)
        max_pending = kwargs.pop("max_pending", DEFAULT_MAX_PENDING)
        backend = SqliteJournal(path or tmp_path / "journal.db", **kwargs)  # type: ignore[arg-type]
        journal = Journal(backend, max_pending=max_pending)  # type: ignore[arg-type]
        opened.append(journal)
        return journal

    yield make
    for journal in opened:
        await journal.close()


@pytest.fixture
async def journal(make_journal: JournalFactory) -> Journal:
    j = make_journal()
    await j.start()
    return j


def event(n: int = 0, **fields: object) -> NewEvent:
    fields.setdefault("kind", "test.event")
    fields.setdefault("source", "test")
    fields.setdefault("payload", {"n": n})
    return NewEvent(**fields)  # type: ignore[arg-type]


def raw(path: Path) -> sqlite3.Connection:
    """A connection of its own, behind the journal's back."""
    return sqlite3.connect(path, isolation_level=None)


async def test_append_and_list_round_trip(journal: Journal, clock: ManualClock) -> None:
    clock.now = 1_700_000_000.123
    first = await journal.append(
        event(
            kind="webhook.received",
            source="gh",
            payload={"b": [1, 2], "a": "é"},
            actor="github",
            integration_id="gh",
            event_type="push",
            severity="warn",
            redacted=True,
        )
    )
    second = await journal.append(event(1))
    assert (first.seq, second.seq) == (1, 2)
    assert not first.duplicate and len(first.event_id) == 26

    got = await journal.list(EventFilter())
    assert [e.seq for e in got] == [1, 2]
    e = got[0]
    assert (e.event_id, e.kind, e.source) == (first.event_id, "webhook.received", "gh")
    assert e.actor == "github"
    assert (e.integration_id, e.event_type, e.severity, e.redacted) == ("gh", "push", "warn", True)
    assert e.payload == {"a": "é", "b": [1, 2]}
    assert e.ts_unix_ms == 1_700_000_000_123
    assert e.prev_hash == ZERO_HASH and got[1].prev_hash == e.hash
    assert await journal.last_seq() == 2

    d = e.to_dict()
    assert d["time"] == "2023-11-14T22:13:20.123Z"
    assert set(d) == {
        "seq", "event_id", "time", "ts_unix_ms", "kind", "source", "actor", "integration_id",
        "event_type", "severity", "payload", "redacted", "hash", "prev_hash",
    }
    json.dumps(d)  # JSON-ready


async def test_payload_json_is_compact_and_sorted(journal: Journal, tmp_path: Path) -> None:
    await journal.append(event(payload={"z": 1, "a": {"y": 2, "b": 3}}))
    with raw(tmp_path / "journal.db") as conn:
        stored = conn.execute("SELECT payload_json FROM journal_events").fetchone()[0]
    assert stored == '{"a":{"b":3,"y":2},"z":1}'


async def test_concurrent_appends_share_commits(make_journal: JournalFactory) -> None:
    commits: list[tuple[int, int]] = []
    journal = make_journal(on_commit=lambda seq, events: commits.append((seq, events)))
    await journal.start()

    results = await asyncio.gather(*(journal.append(event(i)) for i in range(200)))

    assert sorted(r.seq for r in results) == list(range(1, 201))
    assert len({r.event_id for r in results}) == 200
    assert journal.commits < 20, journal.commits  # group commit: far fewer fsyncs than appends
    await asyncio.sleep(0)  # on_commit is scheduled with call_soon_threadsafe
    committed = [seq for seq, _ in commits]
    assert committed and committed[-1] == 200 and committed == sorted(committed)
    assert len(committed) == journal.commits
    assert (await journal.verify()).ok


async def test_everything_appended_survives_close_and_reopen(
    make_journal: JournalFactory, tmp_path: Path
) -> None:
    journal = make_journal()
    await journal.start()
    pending = [asyncio.create_task(journal.append(event(i))) for i in range(50)]
    await asyncio.sleep(0)  # queued, not yet answered
    await journal.close()  # drains what is queued
    assert [t.result().seq for t in pending] == list(range(1, 51))
    with pytest.raises(JournalUnavailable):
        await journal.append(event())

    again = make_journal()
    await again.start()
    listed = await again.list(EventFilter(), limit=1000)
    assert [e.payload["n"] for e in listed] == list(range(50))
    nxt = await again.append(event(50))
    assert nxt.seq == 51
    result = await again.verify()
    assert (result.ok, result.checked, result.first_seq, result.last_seq) == (True, 51, 1, 51)


async def test_files_are_private_whatever_the_umask(
    make_journal: JournalFactory, tmp_path: Path
) -> None:
    old = os.umask(0)
    try:
        journal = make_journal()
        await journal.start()
        await journal.append(event())
    finally:
        os.umask(old)
    for name in ("journal.db", "journal.db-wal", "journal.db-shm"):
        mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))
    with raw(tmp_path / "journal.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert journal.size_bytes() > 0


async def test_start_is_idempotent_on_an_existing_file(make_journal: JournalFactory) -> None:
    first = make_journal()
    await first.start()
    await first.start()
    await first.append(event())
    await first.close()
    second = make_journal()
    await second.start()
    assert await second.last_seq() == 1


async def test_replay_key_duplicate_and_expiry(journal: Journal, clock: ManualClock) -> None:
    key = ReplayKey("gh", "delivery-1", window_s=60)
    original = await journal.append(event(1, replay_key=key))
    again = await journal.append(event(2, replay_key=key))
    assert again.duplicate
    assert (again.seq, again.event_id) == (original.seq, original.event_id)
    other = await journal.append(event(3, replay_key=ReplayKey("other", "delivery-1", 60)))
    assert not other.duplicate
    assert await journal.last_seq() == 2  # the duplicate wrote nothing

    clock.advance(59.9)
    assert (await journal.append(event(4, replay_key=key))).duplicate
    clock.advance(0.2)  # the window has passed: a redelivery is journaled again
    fresh = await journal.append(event(5, replay_key=key))
    assert not fresh.duplicate and fresh.seq == 3
    later = await journal.append(event(6, replay_key=key))
    assert later.duplicate and later.seq == fresh.seq  # the key now points at the new row


async def test_a_content_key_is_a_second_key_checked_and_stored_with_the_event(
    journal: Journal, clock: ManualClock, tmp_path: Path
) -> None:
    first = await journal.append(event(1, replay_key=ReplayKey("gh", "d-1", 60, "sha256:c")))
    assert not first.duplicate
    # Another delivery id, the same signed content: the content key answers.
    other_id = await journal.append(event(2, replay_key=ReplayKey("gh", "d-2", 60, "sha256:c")))
    # The same delivery id, other content: the delivery id answers.
    other_body = await journal.append(event(3, replay_key=ReplayKey("gh", "d-1", 60, "sha256:x")))
    no_id = await journal.append(event(4, replay_key=ReplayKey("gh", "sha256:c", 60)))
    assert [(r.duplicate, r.seq) for r in (other_id, other_body, no_id)] == [(True, 1)] * 3
    with raw(tmp_path / "journal.db") as conn:
        keys = conn.execute("SELECT delivery_id, seq FROM replay_keys ORDER BY 1").fetchall()
    assert keys == [("d-1", 1), ("sha256:c", 1)]  # both stored, nothing for the duplicates
    clock.advance(60)  # both expired together
    again = await journal.append(event(5, replay_key=ReplayKey("gh", "d-2", 60, "sha256:c")))
    assert not again.duplicate and again.seq == 2


async def test_same_replay_key_twice_concurrently(journal: Journal) -> None:
    key = ReplayKey("gh", "d", window_s=60)
    a, b = await asyncio.gather(
        journal.append(event(1, replay_key=key)), journal.append(event(2, replay_key=key))
    )
    assert (a.duplicate, b.duplicate) == (False, True)
    assert b.seq == a.seq and b.event_id == a.event_id
    assert await journal.last_seq() == 1


def pending_row(event_id: str, key: tuple[str, str, int] | None = None,
                content_key: str | None = None) -> PendingRow:
    return PendingRow(
        event_id=event_id, kind="k", source="s", actor=None, integration_id=None,
        event_type=None, severity="info", payload_json="{}", redacted=False, replay_key=key,
        content_key=content_key,
    )


async def test_same_replay_key_inside_one_batch(journal: Journal, tmp_path: Path) -> None:
    # One batch, deterministically: the store's batch write itself.
    store = JournalStore.open(tmp_path / "journal.db", busy_timeout_ms=1000, create=True)
    try:
        key = ("gh", "d", 60_000)
        stored, head = store.append_batch(
            [pending_row("A", key), pending_row("B", key), pending_row("C"), pending_row("C")],
            now_ms=1000,
            head=None,
        )
    finally:
        store.close()
    assert [(s.seq, s.event_id, s.status) for s in stored] == [
        (1, "A", "new"), (1, "A", "duplicate"), (2, "C", "new"), (0, "C", "id_conflict"),
    ]
    assert head[0] == 2
    assert (await journal.verify()).ok


def test_one_content_under_two_ids_inside_one_batch(tmp_path: Path) -> None:
    store = JournalStore.open(tmp_path / "journal.db", busy_timeout_ms=1000, create=True)
    try:
        store.ensure_schema()
        stored, _ = store.append_batch(
            [pending_row("A", ("gh", "d-1", 60_000), "sha256:c"),
             pending_row("B", ("gh", "d-2", 60_000), "sha256:c"),
             pending_row("C", ("gh", "d-2", 60_000), "sha256:other")],
            now_ms=1000, head=None,
        )
    finally:
        store.close()
    assert [(s.seq, s.event_id, s.status) for s in stored] == [
        (1, "A", "new"), (1, "A", "duplicate"), (2, "C", "new"),
    ]


async def test_expired_replay_keys_are_pruned(
    journal: Journal, clock: ManualClock, tmp_path: Path
) -> None:
    for i in range(30):
        await journal.append(event(i, replay_key=ReplayKey("gh", f"d{i}", window_s=10)))
    clock.advance(11)
    await journal.append(event(99, replay_key=ReplayKey("gh", "new", window_s=10)))
    with raw(tmp_path / "journal.db") as conn:
        keys = conn.execute("SELECT delivery_id FROM replay_keys").fetchall()
    assert keys == [("new",)]


async def test_caller_event_id_conflict_fails_only_that_append(journal: Journal) -> None:
    await journal.append(event(1, event_id="01HZZZZZZZZZZZZZZZZZZZZZZZ"))
    results = await asyncio.gather(
        journal.append(event(2, event_id="01HZZZZZZZZZZZZZZZZZZZZZZZ")),
        journal.append(event(3)),
        return_exceptions=True,
    )
    assert isinstance(results[0], DuplicateEventId)
    assert not isinstance(results[1], BaseException) and results[1].seq == 2


async def test_unstorable_events_fail_at_the_caller(journal: Journal) -> None:
    with pytest.raises(ValueError):
        await journal.append(event(payload={"x": float("nan")}))
    with pytest.raises(ValueError):
        await journal.append(event(kind="bad\udc80"))
    ok = await journal.append(event(payload={"s": "lone \ud800 surrogate"}))
    [stored] = await journal.list(EventFilter())
    assert stored.seq == ok.seq and stored.payload == {"s": "lone \ud800 surrogate"}
    assert (await journal.verify()).ok


async def test_triggers_refuse_update_and_delete(journal: Journal, tmp_path: Path) -> None:
    await journal.append(event())
    with raw(tmp_path / "journal.db") as conn:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE journal_events SET payload_json = '{}' WHERE seq = 1")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM journal_events WHERE seq = 1")
    assert [e.payload for e in await journal.list(EventFilter())] == [{"n": 0}]


async def test_verify_ok_and_empty(journal: Journal) -> None:
    empty = await journal.verify()
    assert (empty.ok, empty.checked, empty.first_seq) == (True, 0, None)
    assert empty.first_broken_seq is None
    # More rows than one verify chunk.
    await asyncio.gather(*(journal.append(event(i)) for i in range(2500)))
    result = await journal.verify()
    assert (result.ok, result.checked, result.last_seq, result.reason) == (True, 2500, 2500, "ok")


async def test_verify_catches_a_tampered_row(journal: Journal, tmp_path: Path) -> None:
    for i in range(5):
        await journal.append(event(i))
    with raw(tmp_path / "journal.db") as conn:
        conn.execute("DROP TRIGGER journal_events_no_update")
        conn.execute("UPDATE journal_events SET payload_json = '{\"n\":99}' WHERE seq = 3")
    result = await journal.verify()
    assert (result.ok, result.first_broken_seq, result.reason) == (False, 3, "hash mismatch")
    assert (result.checked, result.last_seq) == (2, 2)


async def test_verify_catches_a_rehashed_row(journal: Journal, tmp_path: Path) -> None:
    for i in range(5):
        await journal.append(event(i))
    with raw(tmp_path / "journal.db") as conn:
        conn.execute("DROP TRIGGER journal_events_no_update")
        cols = [c[1] for c in conn.execute("PRAGMA table_info(journal_events)")]
        values = conn.execute("SELECT * FROM journal_events WHERE seq = 3").fetchone()
        row = dict(zip(cols, values, strict=True))
        row["payload_json"] = '{"n":99}'
        del row["hash"]
        conn.execute(
            "UPDATE journal_events SET payload_json = ?, hash = ? WHERE seq = 3",
            (row["payload_json"], chain_hash(row["prev_hash"], row)),
        )
    result = await journal.verify()
    assert (result.ok, result.first_broken_seq) == (False, 4)
    assert result.reason == "prev_hash does not link"


async def test_verify_catches_a_deleted_row(journal: Journal, tmp_path: Path) -> None:
    for i in range(5):
        await journal.append(event(i))
    with raw(tmp_path / "journal.db") as conn:
        conn.execute("DROP TRIGGER journal_events_no_delete")
        conn.execute("DELETE FROM journal_events WHERE seq = 4")
    result = await journal.verify()
    assert (result.ok, result.first_broken_seq, result.reason) == (False, 4, "seq gap")


async def test_retention_by_age_keeps_a_verifiable_chain(
    make_journal: JournalFactory, clock: ManualClock, tmp_path: Path
) -> None:
    journal = make_journal()
    await journal.start()
    for i in range(5):
        await journal.append(event(i))
    clock.advance(1000)
    for i in range(5, 10):
        await journal.append(event(i))
    clock.advance(100)

    assert await journal.apply_retention(max_age_s=500, max_bytes=None) == 5
    result = await journal.verify()
    assert (result.ok, result.checked, result.first_seq, result.last_seq) == (True, 5, 6, 10)
    assert [e.seq for e in await journal.list(EventFilter())] == [6, 7, 8, 9, 10]
    assert await journal.apply_retention(max_age_s=500, max_bytes=None) == 0
    with raw(tmp_path / "journal.db") as conn:  # the guard is off again
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM journal_events WHERE seq = 6")

    # Everything is old: all but the newest row go, and the chain goes on from it.
    clock.advance(10_000)
    assert await journal.apply_retention(max_age_s=1, max_bytes=None) == 4
    assert await journal.last_seq() == 10
    assert (await journal.append(event(10))).seq == 11
    await journal.close()

    again = make_journal()
    await again.start()
    result = await again.verify()
    assert (result.ok, result.checked, result.first_seq, result.last_seq) == (True, 2, 10, 11)


async def test_retention_by_size(journal: Journal) -> None:
    for i in range(50):
        await journal.append(event(payload={"blob": "x" * 1000, "n": i}))
    removed = await journal.apply_retention(max_age_s=None, max_bytes=10_000)
    remaining = await journal.list(EventFilter(), limit=100)
    assert removed == 50 - len(remaining)
    assert 1 <= len(remaining) <= 9
    assert remaining[-1].seq == 50 and remaining[0].seq == removed + 1
    assert (await journal.verify()).ok

    assert await journal.apply_retention(max_age_s=None, max_bytes=1) == len(remaining) - 1
    assert [e.seq for e in await journal.list(EventFilter())] == [50]
    assert (await journal.verify()).ok


async def test_retention_interleaved_with_appends(journal: Journal, clock: ManualClock) -> None:
    for i in range(100):
        await journal.append(event(i))
    clock.advance(3600)
    results = await asyncio.gather(
        *(journal.append(event(i)) for i in range(100)),
        journal.apply_retention(max_age_s=60, max_bytes=None),
        *(journal.append(event(i)) for i in range(100)),
    )
    assert results[100] == 100
    assert sorted(r.seq for r in results if not isinstance(r, int)) == list(range(101, 301))
    assert (await journal.verify()).ok


async def test_failed_commit_then_recovery(make_journal: JournalFactory, tmp_path: Path) -> None:
    journal = make_journal(busy_timeout_ms=50)
    await journal.start()
    await journal.append(event(0))

    blocker = raw(tmp_path / "journal.db")
    blocker.execute("PRAGMA busy_timeout = 0")
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        results = await asyncio.gather(
            *(journal.append(event(i, payload={"api": "tok-SUPERSECRET"})) for i in range(5)),
            return_exceptions=True,
        )
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert all(isinstance(r, JournalUnavailable) for r in results)
    message = str(results[0])
    assert "SQLITE_BUSY" in message and "SUPERSECRET" not in message
    assert journal.failed_batches >= 1

    # The cause is gone: service resumes, the chain continues without a hole.
    assert (await journal.append(event(1))).seq == 2
    assert (await journal.verify()).ok


async def test_batch_failing_half_way_writes_nothing(journal: Journal, tmp_path: Path) -> None:
    await journal.append(event(0))
    with raw(tmp_path / "journal.db") as conn:
        conn.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON journal_events WHEN NEW.kind = 'boom'"
            " BEGIN SELECT RAISE(ABORT, 'simulated failure'); END"
        )
    results = await asyncio.gather(
        journal.append(event(1)),
        journal.append(event(2, kind="boom", replay_key=ReplayKey("gh", "x", 60))),
        journal.append(event(3)),
        return_exceptions=True,
    )
    assert isinstance(results[1], JournalUnavailable)
    committed = [r.seq for r in results if not isinstance(r, BaseException)]
    assert committed == list(range(2, 2 + len(committed)))
    with raw(tmp_path / "journal.db") as conn:
        conn.execute("DROP TRIGGER boom")
        assert conn.execute("SELECT count(*) FROM replay_keys").fetchone()[0] == 0
    nxt = await journal.append(event(4, replay_key=ReplayKey("gh", "x", 60)))
    assert nxt.seq == 2 + len(committed) and not nxt.duplicate
    assert (await journal.verify()).ok


async def test_closed_or_unstarted_journal_refuses(make_journal: JournalFactory) -> None:
    journal = make_journal()
    with pytest.raises(JournalUnavailable):
        await journal.append(event())
    await journal.start()
    await journal.close()
    await journal.close()
    with pytest.raises(JournalUnavailable):
        await journal.append(event())
    with pytest.raises(JournalUnavailable):
        await journal.list(EventFilter())
    assert (await journal.verify()).ok  # verify reads the file on its own


async def test_unusable_path_is_unavailable(make_journal: JournalFactory, tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(JournalUnavailable):
        await make_journal(tmp_path / "dir.db").start()


# -- listing -------------------------------------------------------------------------


async def fill_for_filters(journal: Journal, clock: ManualClock) -> list[JournalEvent]:
    specs = [
        ("webhook.received", "gh", "push", "gh"),
        ("webhook.received", "gh", "pull_request", "gh"),
        ("webhook.received", "stripe", "invoice.paid", "stripe"),
        ("daemon.started", "daemon", None, None),
        ("integration.created", "admin", "integration.created", "gh"),
        ("weird[x", "operator", "star*", None),
    ]
    for kind, source, event_type, integration in specs:
        await journal.append(
            event(kind=kind, source=source, event_type=event_type, integration_id=integration)
        )
        clock.advance(1)
    return await journal.list(EventFilter())


FILTERS = [
    EventFilter(types=["webhook.*"]),
    EventFilter(types=["push"]),
    EventFilter(types=["pull_*", "daemon.*"]),
    EventFilter(types=["[pd]*"]),
    EventFilter(types=["[!w]*"]),
    EventFilter(types=["*.?aid"]),
    EventFilter(types=["weird[x"]),
    EventFilter(types=["star[*]"]),
    EventFilter(types=["integration.created"]),
    EventFilter(integration_id="gh"),
    EventFilter(source="daemon"),
    EventFilter(types=["webhook.*"], integration_id="stripe"),
]


@pytest.mark.parametrize("flt", FILTERS, ids=repr)
async def test_list_filters_agree_with_matches(
    journal: Journal, clock: ManualClock, flt: EventFilter
) -> None:
    everything = await fill_for_filters(journal, clock)
    listed = await journal.list(flt)
    assert listed == [e for e in everything if flt.matches(e)]
    assert listed  # every filter above selects something


async def test_list_filter_examples(journal: Journal, clock: ManualClock) -> None:
    everything = await fill_for_filters(journal, clock)

    async def seqs(**kwargs: object) -> list[int]:
        return [e.seq for e in await journal.list(EventFilter(**kwargs))]  # type: ignore[arg-type]

    assert await seqs(types=["push"]) == [1]
    assert await seqs(types=["webhook.*"]) == [1, 2, 3]
    assert await seqs(types=["[pd]*"]) == [1, 2, 4]
    assert await seqs(types=["weird[x"]) == [6]  # unclosed class: a literal "["
    assert await seqs(types=["star[*]"]) == [6]  # class: a literal "*"
    assert await seqs(types=["nothing*"]) == []
    t0 = everything[0].ts_unix_ms
    assert await seqs(since_ms=t0 + 1000, until_ms=t0 + 3000) == [2, 3]  # [since, until)
    assert await seqs(since_ms=t0 + 5000) == [6]
    assert await seqs(until_ms=t0) == []


async def test_list_pages_with_no_fixed_cap(journal: Journal) -> None:
    for start in range(0, 1500, 500):
        await asyncio.gather(
            *(
                journal.append(event(i, kind="odd" if i % 2 else "even"))
                for i in range(start, start + 500)
            )
        )
    assert len(await journal.list(EventFilter(), limit=5000)) == 1500

    seen: list[int] = []
    after = 0
    while page := await journal.list(EventFilter(), after_seq=after, limit=100):
        assert len(page) <= 100
        seen.extend(e.seq for e in page)
        after = page[-1].seq
    assert seen == list(range(1, 1501))

    # A filter SQL cannot express exactly: paging still honours the limit.
    flt = EventFilter(types=["[o]dd"])
    odd: list[int] = []
    after = 0
    while page := await journal.list(flt, after_seq=after, limit=300):
        odd.extend(e.seq for e in page)
        after = page[-1].seq
    assert odd == list(range(2, 1501, 2))
    assert len(await journal.list(flt, limit=10_000)) == 750
    assert await journal.list(flt, limit=0) == []


@pytest.mark.parametrize(
    ("pattern", "glob", "exact"),
    [
        ("webhook.*", "webhook.*", True),
        ("a?b", "a?b", True),
        ("a[bc]d", "a?d", False),
        ("a[!]]d", "a?d", False),
        ("a[b", "a[[]b", True),
        ("x]y", "x]y", True),
    ],
)
def test_glob_translation(pattern: str, glob: str, exact: bool) -> None:
    assert glob_for_fnmatch(pattern) == (glob, exact)


async def test_pending_appends_are_bounded(make_journal: JournalFactory) -> None:
    journal = make_journal(max_pending=1)
    await journal.start()
    first, second = await asyncio.gather(
        journal.append(event(1)), journal.append(event(2)), return_exceptions=True
    )
    assert not isinstance(first, BaseException) and first.seq == 1
    assert isinstance(second, JournalUnavailable) and "full" in str(second)
    assert (await journal.append(event(3))).seq == 2
