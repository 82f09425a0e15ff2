"""The journal's batch write as the writer thread runs it: a few statements per batch (one
replay-key lookup, multi-row INSERTs), the same outcomes and hash chain as row by row."""

from __future__ import annotations

import asyncio
import sqlite3
import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from palyra_py.journal.backend import PendingRow
from palyra_py.journal.chain import chain_hash, new_row_hash
from palyra_py.journal.journal import Journal, NewEvent, ReplayKey
from palyra_py.journal.sqlite import _PRUNE_EVERY, JournalStore
from palyra_py.journal.sqlite_journal import SqliteJournal
from palyra_py.testing import ManualClock

# Any text SQLite can store: no lone surrogates; control characters, quotes, backslashes,
# U+2028 and astral characters included.
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    seq=st.integers(1, 2**62), event_id=texts, ts=st.integers(0, 2**50), kind=texts,
    source=texts, actor=st.none() | texts, integration_id=st.none() | texts,
    event_type=st.none() | texts, severity=texts,
    payload=st.text(max_size=5000) | st.just("é" * 3000), redacted=st.sampled_from([0, 1]),
    prev_hash=st.text(alphabet=string.hexdigits.lower(), min_size=64, max_size=64),
)
def test_new_row_hash_is_chain_hash(
    seq: int, event_id: str, ts: int, kind: str, source: str, actor: str | None,
    integration_id: str | None, event_type: str | None, severity: str, payload: str,
    redacted: int, prev_hash: str,
) -> None:
    # verify (chain_hash over the stored columns) must accept what the writer hashed.
    record = {
        "seq": seq, "event_id": event_id, "ts_unix_ms": ts, "kind": kind, "source": source,
        "actor": actor, "integration_id": integration_id, "event_type": event_type,
        "severity": severity, "payload_json": payload, "redacted": redacted,
        "prev_hash": prev_hash,
    }
    assert new_row_hash(
        prev_hash, seq, event_id, ts, kind, source, actor, integration_id, event_type,
        severity, payload, redacted,
    ) == chain_hash(prev_hash, record)


def row(event_id: str, key: str | None = None, window_ms: int = 60_000) -> PendingRow:
    return PendingRow(
        event_id=event_id, kind="webhook.received", source="gh", actor="github",
        integration_id="gh", event_type="push", severity="info",
        payload_json='{"n":"' + event_id + '"}', redacted=False,
        replay_key=None if key is None else ("gh", key, window_ms),
    )


@pytest.fixture
def store(tmp_path: Path) -> JournalStore:
    opened = JournalStore.open(tmp_path / "journal.db", busy_timeout_ms=1000, create=True)
    opened.ensure_schema()
    return opened


def replay_rows(path: Path) -> dict[str, tuple[int, str, int]]:
    with sqlite3.connect(path) as conn:
        return {d: (s, e, x) for d, s, e, x in conn.execute(
            "SELECT delivery_id, seq, event_id, expires_at_ms FROM replay_keys")}


def test_big_batch_mixes_live_expired_repeated_and_new_keys(
    store: JournalStore, tmp_path: Path
) -> None:
    # 300 earlier keys: 0-149 expire at 11_000, 150-299 live on.
    first = [row(f"E{i}", f"k{i}", 10_000 if i < 150 else 10**9) for i in range(300)]
    stored, head = store.append_batch(first, now_ms=1000, head=None)
    assert [s.seq for s in stored] == list(range(1, 301)) and head[0] == 300

    # 600 rows at 20_000: every earlier key again (half expired, half live), 200 fresh
    # keys each delivered twice in the batch, and 100 rows without a key.
    batch = [row(f"A{i}", f"k{i}") for i in range(300)]
    batch += [row(f"B{i}", f"f{i % 200}") for i in range(400)]
    batch += [row(f"C{i}") for i in range(100)]
    stored, head = store.append_batch(batch, now_ms=20_000, head=head)
    store.close()

    by_id = {r.event_id: s for r, s in zip(batch, stored, strict=True)}
    for i in range(150):  # expired: journaled again, the key now points at the new row
        assert by_id[f"A{i}"].status == "new"
    for i in range(150, 300):  # live: the original answers
        assert (by_id[f"A{i}"].status, by_id[f"A{i}"].event_id) == ("duplicate", f"E{i}")
        assert by_id[f"A{i}"].seq == i + 1
    for i in range(200, 400):  # the second delivery of a fresh key inside the batch
        assert by_id[f"B{i}"].status == "duplicate"
        assert by_id[f"B{i}"].event_id == f"B{i - 200}"
    written = [s for s in stored if s.status == "new"]
    assert [s.seq for s in written] == list(range(301, 301 + 150 + 200 + 100))
    assert head == (written[-1].seq, head[1])

    keys = replay_rows(tmp_path / "journal.db")
    assert keys["k0"][1] == "A0" and keys["k0"][2] == 20_000 + 60_000
    assert keys["k299"][1] == "E299" and keys["f7"][1] == "B7"


def test_taken_event_id_in_a_big_batch_fails_only_that_row(
    store: JournalStore, tmp_path: Path
) -> None:
    _, head = store.append_batch([row("TAKEN", "k-old")], now_ms=1000, head=None)
    batch = [row(f"R{i}", f"k{i}") for i in range(100)]
    batch[40] = row("TAKEN", "k40")  # its key must not be written either
    stored, head = store.append_batch(batch, now_ms=2000, head=head)
    store.close()
    assert stored[40].status == "id_conflict" and stored[40].seq == 0
    assert [s.seq for s in stored if s.status == "new"] == list(range(2, 101))
    keys = replay_rows(tmp_path / "journal.db")
    assert "k40" not in keys and keys["k41"][1] == "R41" and len(keys) == 100


async def test_batched_writes_verify_and_read_back(tmp_path: Path, clock: ManualClock) -> None:
    journal = Journal(SqliteJournal(tmp_path / "journal.db", clock=clock))
    await journal.start()
    try:
        results = await asyncio.gather(*(
            journal.append(NewEvent(
                kind="webhook.received", source="gh", payload={"i": i, "t": "\u2028\"\\"},
                integration_id="gh", event_type="push",
                replay_key=ReplayKey("gh", f"d{i % 150}", 60),
            ))
            for i in range(300)
        ))
        assert sorted({r.seq for r in results}) == list(range(1, 151))
        assert sum(r.duplicate for r in results) == 150
        assert (await journal.verify()).ok
    finally:
        await journal.close()


async def test_unstorable_replay_key_fails_its_own_append(
    tmp_path: Path, clock: ManualClock
) -> None:
    journal = Journal(SqliteJournal(tmp_path / "journal.db", clock=clock))
    await journal.start()
    try:
        with pytest.raises(ValueError, match="replay_key"):
            await journal.append(NewEvent(kind="k", source="s", payload={},
                                          replay_key=ReplayKey("gh", "bad\udc80", 60)))
        assert (await journal.append(NewEvent(kind="k", source="s", payload={}))).seq == 1
    finally:
        await journal.close()


def test_keys_another_writer_left_to_expire_are_pruned_within_a_bound(
    store: JournalStore, tmp_path: Path
) -> None:
    # Another process's store writes short-lived keys; this one, whose own keys live long,
    # still prunes them within _PRUNE_EVERY batches, and reads the head the other wrote.
    other = JournalStore.open(tmp_path / "journal.db", busy_timeout_ms=1000, create=True)
    _, head = store.append_batch([row("L0", "long", 10**9)], now_ms=1000, head=None)
    _, head = other.append_batch([row(f"S{i}", f"short{i}", 100) for i in range(5)],
                                 now_ms=1000, head=None)
    other.close()
    assert head[0] == 6
    for n in range(_PRUNE_EVERY):
        stored, head = store.append_batch([row(f"M{n}", f"m{n}", 10**9)], now_ms=5000,
                                          head=None)
        assert stored[0].seq == 7 + n  # chained on the other writer's rows
    store.close()
    keys = replay_rows(tmp_path / "journal.db")
    assert not [k for k in keys if k.startswith("short")]
    assert "long" in keys and len(keys) == 1 + _PRUNE_EVERY


def test_big_rows_in_one_batch_keep_their_statement_journal_in_memory(
    store: JournalStore, tmp_path: Path
) -> None:
    # 60 rows of 8 KB with keys: the batch's statement journal is past SQLite's 64 KiB
    # spill; the writer keeps it in memory (temp_store 2), and the chain and keys are as
    # for small rows.
    assert store._conn.execute("PRAGMA temp_store").fetchone() == (2,)
    rows = [row(f"B{i}", f"k{i}")._replace(payload_json='{"p":"' + "y" * 8000 + '"}')
            for i in range(60)]
    stored, head = store.append_batch(rows, now_ms=1000, head=None)
    assert [s.seq for s in stored] == list(range(1, 61)) and head[0] == 60
    assert store.walk_chain().first_broken_seq is None
    store.close()
    assert len(replay_rows(tmp_path / "journal.db")) == 60


async def test_appends_of_one_loop_pass_commit_together_within_batch_max(
    tmp_path: Path, clock: ManualClock
) -> None:
    # 50 appends made in one pass of the event loop reach the writer as one item: one
    # commit, or ceil(50 / batch_max) with a smaller bound, seqs gap-free either way.
    for batch_max, commits in ((512, 1), (8, 7)):
        journal = Journal(SqliteJournal(tmp_path / f"j{batch_max}.db", clock=clock,
                                        batch_max=batch_max))
        await journal.start()
        try:
            results = await asyncio.gather(*(
                journal.append(NewEvent(kind="k", source="s", payload={"i": i},
                                        replay_key=ReplayKey("gh", f"d{i % 40}", 60)))
                for i in range(50)
            ))
            assert journal.commits == commits
            assert sorted({r.seq for r in results}) == list(range(1, 41))
            assert sum(r.duplicate for r in results) == 10
            assert (await journal.verify()).ok
        finally:
            await journal.close()


async def test_close_commits_the_appends_of_the_current_pass(
    tmp_path: Path, clock: ManualClock
) -> None:
    backend = SqliteJournal(tmp_path / "journal.db", clock=clock)
    await backend.start()
    # Queued in this pass (the writer has not been handed them yet), then closed at once.
    futures = [backend.append(row(f"E{i}", f"k{i}")) for i in range(5)]
    await backend.close()
    async with asyncio.timeout(10):
        assert [(await f).seq for f in futures] == [1, 2, 3, 4, 5]
