"""The journal engine alone: appends on PostgreSQL next to SQLite, in the same run.

Each round appends ``--appends`` rows (a 1 KB payload, a replay key each, as webhooks
have) from ``--concurrency`` concurrent appenders through each engine's
``JournalBackend``, both with their group commit: the SQLite journal in a temp dir
(WAL, synchronous=FULL) and the PostgreSQL journal on a throwaway server (tests/pg.py:
Unix socket, fsync and synchronous_commit on). Rounds interleave the engines.

Figures per engine, medians over rounds: appends/s, latency p50/p99 of one append, commits
per second and rows per commit, and CPU per append summed over all the processes doing
the work: this one (event loop, SQLite's writer thread) plus, for PostgreSQL, every server
process of the cluster. Ratios are PostgreSQL's over SQLite's.

    flock /tmp/bench.lock .venv/bin/python bench/pg_journal.py [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import ulid  # noqa: E402
from _common import cpu_seconds, percentile  # noqa: E402

from palyra_py.journal.backend import JournalBackend, PendingRow  # noqa: E402
from palyra_py.journal.chain import encode_payload  # noqa: E402
from palyra_py.journal.postgres_journal import PostgresJournal  # noqa: E402
from palyra_py.journal.sqlite_journal import SqliteJournal  # noqa: E402
from tests.pg import PgServer, find_binaries  # noqa: E402

PAD = "x" * 1000


def rows(n: int, tag: str) -> list[PendingRow]:
    return [
        PendingRow(str(ulid.ULID()), "webhook.received", "gh", None, "gh", "push", "info",
                   encode_payload({"n": i, "pad": PAD}), False,
                   ("gh", f"{tag}-{i}", 7 * 86400 * 1000))
        for i in range(n)
    ]


def server_cpu_s(server: PgServer | None) -> float:
    """CPU of the cluster's postmaster and all its children, live and reaped."""
    if server is None:
        return 0.0
    root = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    total = cpu_seconds(root)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2:].split()[1]) == root:
            total += cpu_seconds(int(entry))
    return total


async def one_round(backend: JournalBackend, server: PgServer | None, appends: int,
                    concurrency: int, tag: str) -> dict[str, float]:
    await backend.start()
    try:
        todo = rows(appends, tag)
        latencies: list[float] = []
        queue = iter(todo)

        async def appender() -> None:
            for row in queue:
                t0 = time.perf_counter()
                await backend.append(row)
                latencies.append(time.perf_counter() - t0)

        commits0 = backend.commits
        cpu0, srv0 = time.process_time(), server_cpu_s(server)
        t0 = time.perf_counter()
        await asyncio.gather(*(appender() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0 + server_cpu_s(server) - srv0
        commits = backend.commits - commits0
    finally:
        await backend.close()
    latencies.sort()
    return {
        "appends_per_s": appends / wall,
        "p50_ms": (percentile(latencies, 50) or 0) * 1000,
        "p99_ms": (percentile(latencies, 99) or 0) * 1000,
        "commits_per_s": commits / wall,
        "rows_per_commit": appends / max(commits, 1),
        "cpu_ms_per_append": cpu / appends * 1000,
    }


async def run(args: argparse.Namespace, server: PgServer, tmp: Path) -> dict[str, Any]:
    per: dict[str, list[dict[str, float]]] = {"sqlite": [], "postgres": []}
    dsn = server.new_database("bench")
    for r in range(args.rounds):
        order = ["sqlite", "postgres"] if r % 2 == 0 else ["postgres", "sqlite"]
        for name in order:
            backend: JournalBackend
            if name == "sqlite":
                backend = SqliteJournal(tmp / f"journal-{r}.db", start_check_s=0)
                srv = None
            else:
                backend = PostgresJournal(dsn)
                srv = server
            per[name].append(await one_round(backend, srv, args.appends, args.concurrency,
                                             f"r{r}"))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    summary: dict[str, Any] = {
        name: {key: statistics.median(x[key] for x in results) for key in results[0]}
        for name, results in per.items()
    }
    summary["ratio_postgres_over_sqlite"] = {
        key: summary["postgres"][key] / summary["sqlite"][key] for key in summary["sqlite"]
    }
    summary["params"] = {"rounds": args.rounds, "appends": args.appends,
                         "concurrency": args.concurrency, "cpus": os.cpu_count()}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--appends", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    bin_dir = find_binaries()
    if bin_dir is None:
        sys.exit("PostgreSQL binaries not installed: apt-get install postgresql")
    server = PgServer.create(bin_dir)
    tmp = Path(tempfile.mkdtemp(prefix="palyra-bench-"))
    try:
        summary = asyncio.run(run(args, server, tmp))
    finally:
        server.remove()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    keys = list(summary["sqlite"])
    print(f"{'':20} {'sqlite':>10} {'postgres':>10} {'ratio':>7}")
    for key in keys:
        print(f"{key:20} {summary['sqlite'][key]:10.3f} {summary['postgres'][key]:10.3f}"
              f" {summary['ratio_postgres_over_sqlite'][key]:7.2f}")
    print(f"({summary['params']})")


if __name__ == "__main__":
    main()
