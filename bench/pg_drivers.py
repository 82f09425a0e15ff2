"""Which PostgreSQL driver for the PostgreSQL engine: asyncpg or psycopg 3 (async)?

One run starts a throwaway PostgreSQL (tests/pg.py: Debian's binaries, a temp directory,
Unix socket only, fsync on) and measures both drivers on it, in interleaved rounds:

- ``single``: one-row INSERT, each its own transaction (one commit, one fsync each),
  sequentially on one connection: the latency of a round trip plus a commit.
- ``batch``: 100 rows INSERTed in one transaction with the driver's bulk call
  (``executemany``), then COMMIT: what a group commit of 100 appends costs.
- ``notify``: ``pg_notify`` on one connection until the listener on another has it: the
  bus's latency across nodes.

Each figure is the median over the rounds of each round's median; the ratio is psycopg's
over asyncpg's, measured in the same run. ``cpu/op`` is this process's CPU (the driver's
side: the server's is the same SQL for both) per operation.

    flock /tmp/bench.lock .venv/bin/python bench/pg_drivers.py [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import asyncpg  # noqa: E402

try:
    import psycopg
except ImportError:
    sys.exit("psycopg 3 is not installed (only this comparison needs it):"
             " .venv/bin/pip install 'psycopg[binary]'")

from tests.pg import PgServer, find_binaries  # noqa: E402

PAYLOAD = json.dumps({"action": "opened", "body": "x" * 900, "number": 7})
SCHEMA = "CREATE TABLE bench (id bigserial PRIMARY KEY, n int NOT NULL, payload text NOT NULL)"
INSERT_PG = "INSERT INTO bench (n, payload) VALUES ($1, $2)"
INSERT_PSY = "INSERT INTO bench (n, payload) VALUES (%s, %s)"

Timed = tuple[list[float], float]
"""Per-operation wall times (s) and the process CPU (s) for all of them."""


async def timed(ops: int, op: Callable[[int], Awaitable[None]]) -> Timed:
    walls: list[float] = []
    cpu0 = time.process_time()
    for i in range(ops):
        t0 = time.perf_counter()
        await op(i)
        walls.append(time.perf_counter() - t0)
    return walls, time.process_time() - cpu0


# -- asyncpg ---------------------------------------------------------------------------


async def asyncpg_round(dsn: str, singles: int, batches: int, notifies: int
                        ) -> dict[str, Timed]:
    conn = await asyncpg.connect(dsn)
    listener = await asyncpg.connect(dsn)
    try:
        async def single(i: int) -> None:
            await conn.execute(INSERT_PG, i, PAYLOAD)

        async def batch(i: int) -> None:
            async with conn.transaction():
                await conn.executemany(INSERT_PG, [(i * 100 + k, PAYLOAD) for k in range(100)])

        got: asyncio.Queue[str] = asyncio.Queue()
        await listener.add_listener("bench", lambda _c, _p, _ch, payload: got.put_nowait(
            payload))

        async def notify(i: int) -> None:
            await conn.execute("SELECT pg_notify('bench', $1)", str(i))
            while await got.get() != str(i):
                pass

        return {
            "single": await timed(singles, single),
            "batch": await timed(batches, batch),
            "notify": await timed(notifies, notify),
        }
    finally:
        await listener.close()
        await conn.close()


# -- psycopg 3 -------------------------------------------------------------------------


async def psycopg_round(dsn: str, singles: int, batches: int, notifies: int
                        ) -> dict[str, Timed]:
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    listener = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    try:
        async def single(i: int) -> None:
            await conn.execute(INSERT_PSY, (i, PAYLOAD), prepare=True)

        async def batch(i: int) -> None:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.executemany(INSERT_PSY, [(i * 100 + k, PAYLOAD) for k in range(100)])

        await listener.execute("LISTEN bench")
        notices = listener.notifies()

        async def notify(i: int) -> None:
            await conn.execute("SELECT pg_notify('bench', %s)", (str(i),))
            async for notice in notices:
                if notice.payload == str(i):
                    break

        return {
            "single": await timed(singles, single),
            "batch": await timed(batches, batch),
            "notify": await timed(notifies, notify),
        }
    finally:
        await listener.close()
        await conn.close()


DRIVERS = {"asyncpg": asyncpg_round, "psycopg": psycopg_round}


async def run(server: PgServer, rounds: int, singles: int, batches: int, notifies: int
              ) -> dict[str, Any]:
    dsn = server.new_database("bench")
    setup = await asyncpg.connect(dsn)
    await setup.execute(SCHEMA)
    await setup.close()
    per: dict[str, dict[str, list[tuple[float, float]]]] = {
        name: {"single": [], "batch": [], "notify": []} for name in DRIVERS
    }
    for r in range(rounds):
        order = list(DRIVERS) if r % 2 == 0 else list(reversed(DRIVERS))
        for name in order:
            result = await DRIVERS[name](dsn, singles, batches, notifies)
            for kind, (walls, cpu) in result.items():
                per[name][kind].append((statistics.median(walls), cpu / len(walls)))
        print(f"round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    summary: dict[str, Any] = {}
    for name, kinds in per.items():
        summary[name] = {
            kind: {
                "median_ms": statistics.median(w for w, _ in values) * 1000,
                "cpu_per_op_ms": statistics.median(c for _, c in values) * 1000,
            }
            for kind, values in kinds.items()
        }
    summary["ratio_psycopg_over_asyncpg"] = {
        kind: {
            metric: summary["psycopg"][kind][metric] / summary["asyncpg"][kind][metric]
            for metric in ("median_ms", "cpu_per_op_ms")
        }
        for kind in ("single", "batch", "notify")
    }
    summary["params"] = {"rounds": rounds, "singles": singles, "batches": batches,
                         "notifies": notifies, "asyncpg": asyncpg.__version__,
                         "psycopg": psycopg.__version__,
                         "libpq": psycopg.pq.version()}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--singles", type=int, default=200)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--notifies", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    bin_dir = find_binaries()
    if bin_dir is None:
        sys.exit("PostgreSQL binaries not installed: apt-get install postgresql")
    server = PgServer.create(bin_dir)
    try:
        summary = asyncio.run(run(server, args.rounds, args.singles, args.batches,
                                  args.notifies))
    finally:
        server.remove()
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{'':8} {'asyncpg ms':>11} {'psycopg ms':>11} {'ratio':>6}"
          f" {'asyncpg cpu/op':>15} {'psycopg cpu/op':>15} {'ratio':>6}")
    for kind in ("single", "batch", "notify"):
        a, p = summary["asyncpg"][kind], summary["psycopg"][kind]
        ratio = summary["ratio_psycopg_over_asyncpg"][kind]
        print(f"{kind:8} {a['median_ms']:11.3f} {p['median_ms']:11.3f}"
              f" {ratio['median_ms']:6.2f} {a['cpu_per_op_ms']:15.3f}"
              f" {p['cpu_per_op_ms']:15.3f} {ratio['cpu_per_op_ms']:6.2f}")
    print(f"({summary['params']})")


if __name__ == "__main__":
    main()
