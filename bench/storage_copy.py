"""``palyra storage copy``'s rate: an embedded journal copied into PostgreSQL, beside two
baselines measured in the same run on the same rows.

One source journal is made once: ``--events`` webhook-like rows (a 1 KB payload and a
replay key each) in a temp state dir, plus a delivery and an attempt per event. Each round
then times, interleaved:

- ``read``: reading every row of the source in the copy's batches (``JournalExport``),
  nothing written: the floor the copy cannot beat;
- ``copy``: ``copy_installation`` into a fresh database (journal, deliveries, the chain's
  walk at the end), as ``palyra storage copy`` runs it; also the journal's part alone
  (the rate its progress bar shows);
- ``append``: the same rows appended through the PostgreSQL journal engine with its group
  commit (64 concurrent appenders): what replaying the journal through a daemon would
  cost instead.

Figures per phase, medians over rounds: events/s, and CPU ms per event summed over this
process (the event loop and SQLite's threads) and every process of the PostgreSQL server
(tests/pg.py: a throwaway cluster on a Unix socket, fsync on). Ratios are against ``read``
and ``append``.

    flock /tmp/bench.lock .venv/bin/python bench/storage_copy.py [--rounds 3] [--events 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import ulid  # noqa: E402
from pg_journal import rows as pending_rows  # noqa: E402
from pg_journal import server_cpu_s  # noqa: E402

from palyra_py.delivery.store import DeliveryStore  # noqa: E402
from palyra_py.journal.postgres_journal import PostgresJournal  # noqa: E402
from palyra_py.journal.sqlite_export import JournalExport  # noqa: E402
from palyra_py.journal.sqlite_journal import SqliteJournal  # noqa: E402
from palyra_py.journal.transfer import BATCH_ROWS  # noqa: E402
from palyra_py.server.store_catalog import copy_installation  # noqa: E402
from tests.pg import PgServer, find_binaries  # noqa: E402


async def make_source(state: Path, events: int) -> None:
    journal = SqliteJournal(state / "journal.db", start_check_s=0)
    await journal.start()
    try:
        todo = pending_rows(events, "src")
        for start in range(0, events, 1000):
            await asyncio.gather(*(journal.append(row) for row in todo[start:start + 1000]))
    finally:
        await journal.close()
    # Deliveries: one a row, each with one attempt (the store's own schema).
    store = DeliveryStore(state / "deliveries.db")
    await store.start()
    await store.close()
    conn = sqlite3.connect(state / "deliveries.db")
    with conn:
        now = int(time.time() * 1000)
        conn.executemany(
            "INSERT INTO deliveries (delivery_id, subscription_id, event_seq, event_id,"
            " event_type, status, attempts, next_attempt_ms, created_ms, updated_ms,"
            " last_status_code, last_error_class) VALUES (?, 'sub', ?, ?, 'github.push',"
            " 'succeeded', 1, NULL, ?, ?, 200, NULL)",
            [(str(ulid.ULID()), seq, f"ev{seq}", now, now) for seq in range(1, events + 1)])
        conn.execute("INSERT INTO attempts SELECT delivery_id, 1, created_ms, 12, 200, NULL,"
                     " NULL, 'ok' FROM deliveries")
        conn.execute("INSERT INTO cursors VALUES ('sub', ?)", (events,))
    conn.close()


def timed(server: PgServer | None) -> tuple[float, float]:
    return time.perf_counter(), time.process_time() + server_cpu_s(server)


def figures(events: int, start: tuple[float, float], server: PgServer | None
            ) -> dict[str, float]:
    wall = time.perf_counter() - start[0]
    cpu = time.process_time() + server_cpu_s(server) - start[1]
    return {"events_per_s": events / wall, "cpu_ms_per_event": cpu / events * 1000}


async def read_all(state: Path, server: PgServer) -> int:
    source = JournalExport(state / "journal.db")
    try:
        after, count = 0, 0
        while rows := await source.rows_after(after, BATCH_ROWS):
            after, count = rows[-1].seq, count + len(rows)
        return count
    finally:
        source.close()


async def copy_phase(state: Path, server: PgServer, events: int) -> dict[str, float]:
    dsn = server.new_database("copy")
    marks: list[tuple[str, float]] = []

    def progress(store: str, unit: str, total: int) -> Any:
        marks.append((store, time.perf_counter()))
        return lambda n: None

    start = timed(server)
    report = await copy_installation(state, dsn, keys=None, resolve=lambda ref: "",
                                     now_ms=lambda: 0, progress=progress)
    out = figures(events, start, server)
    assert report.chain.first_broken_seq is None and report.chain.checked == events
    # The journal's own part: from its start to the next store's (the bar's rate).
    stamps = dict(marks)
    out["journal_events_per_s"] = events / (stamps["deliveries"] - stamps["journal"])
    return out


async def append_phase(server: PgServer, events: int) -> dict[str, float]:
    backend = PostgresJournal(server.new_database("append"))
    await backend.start()
    try:
        queue = iter(pending_rows(events, "app"))

        async def appender() -> None:
            for row in queue:
                await backend.append(row)

        start = timed(server)
        await asyncio.gather(*(appender() for _ in range(64)))
        return figures(events, start, server)
    finally:
        await backend.close()


async def one_round(state: Path, server: PgServer, events: int, order: list[str]
                    ) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for phase in order:
        if phase == "read":
            start = timed(server)
            assert await read_all(state, server) == events
            out[phase] = figures(events, start, server)
        elif phase == "copy":
            out[phase] = await copy_phase(state, server, events)
        else:
            out[phase] = await append_phase(server, events)
    return out


async def run(args: argparse.Namespace, server: PgServer, state: Path) -> dict[str, Any]:
    await make_source(state, args.events)
    phases = ["read", "copy", "append"]
    per: dict[str, list[dict[str, float]]] = {p: [] for p in phases}
    for r in range(args.rounds):
        order = phases if r % 2 == 0 else phases[::-1]
        for phase, result in (await one_round(state, server, args.events, order)).items():
            per[phase].append(result)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    summary: dict[str, Any] = {
        p: {k: statistics.median(x[k] for x in results) for k in results[0]}
        for p, results in per.items()
    }
    summary["ratios"] = {
        "copy_over_read_events_per_s":
            summary["copy"]["events_per_s"] / summary["read"]["events_per_s"],
        "copy_over_append_events_per_s":
            summary["copy"]["events_per_s"] / summary["append"]["events_per_s"],
        "copy_over_append_cpu_per_event":
            summary["copy"]["cpu_ms_per_event"] / summary["append"]["cpu_ms_per_event"],
    }
    summary["params"] = {"rounds": args.rounds, "events": args.events,
                         "batch_rows": BATCH_ROWS, "cpus": os.cpu_count()}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    bin_dir = find_binaries()
    if bin_dir is None:
        sys.exit("PostgreSQL binaries not installed: apt-get install postgresql")
    server = PgServer.create(bin_dir)
    state = Path(tempfile.mkdtemp(prefix="palyra-bench-copy-"))
    try:
        summary = asyncio.run(run(args, server, state))
    finally:
        server.remove()
        shutil.rmtree(state, ignore_errors=True)
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{'':8} {'events/s':>10} {'CPU ms/event':>13}")
    for phase in ("read", "copy", "append"):
        f = summary[phase]
        print(f"{phase:8} {f['events_per_s']:10,.0f} {f['cpu_ms_per_event']:13.3f}")
    print(f"copy, the journal's part alone: {summary['copy']['journal_events_per_s']:,.0f}"
          " events/s")
    for key, value in summary["ratios"].items():
        print(f"{key}: {value:.2f}")
    print(f"({summary['params']})")


if __name__ == "__main__":
    main()
