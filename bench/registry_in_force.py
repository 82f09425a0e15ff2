"""The registry in cluster mode: how soon an edit made on node A is in force on node B.

Two real daemons (``palyra daemon run``; node B with ``--workers 2``) share one throwaway
PostgreSQL (tests/pg.py: Unix socket, fsync and synchronous_commit on). Each round adds
``--edits`` integrations on A, one at a time through A's admin socket, and for each one
notes when A's call returned (the edit is then in force on every process of A) and when
B logged ``registry_version_in_force`` for its version (in force on every process of B,
workers included: B's control process learnt it from NOTIFY or from its 0.25 s poll, read
the document, and every worker read it and acknowledged).

Figures, medians over rounds of per-round medians: the edit's own duration on A (the
baseline of the same run: one optimistic write plus A's workers' acknowledgements) and
the delay from A's answer to B's log line, p50 and max, and their ratio.

    flock /tmp/bench.lock .venv/bin/python bench/registry_in_force.py [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402

from tests.daemon_process import DaemonProcess  # noqa: E402
from tests.pg import PgServer, find_binaries  # noqa: E402


async def one_round(server: PgServer, edits: int, root: Path, n: int) -> dict[str, float]:
    dsn = server.new_database(f"bench{n}")
    env = {"PALYRA_STORAGE_BACKEND": "postgres", "PALYRA_STORAGE_DSN": dsn,
           "GH_SECRET": "bench-secret"}
    dir_a, dir_b = root / f"a{n}", root / f"b{n}"
    a = await DaemonProcess(dir_a, env=env, workers="1").start()
    b = await DaemonProcess(dir_b, env=env, workers="2").start()
    durations: list[float] = []
    delays: list[float] = []
    try:
        connector = aiohttp.UnixConnector(path=str(dir_a / "palyra.sock"))
        async with aiohttp.ClientSession(connector=connector, base_url="http://admin") as admin:
            for i in range(edits):
                mark = len(b.log)
                started = time.monotonic()
                async with admin.post("/v1/webhooks", json={
                        "integration_id": f"bench-{i}", "provider": "github",
                        "secret": {"ref": "env:GH_SECRET"}}) as resp:
                    assert resp.status == 201, await resp.text()
                answered = time.monotonic()
                version = i + 2  # the seed is version 1
                while True:
                    record = await b.wait_for_log(("registry_version_in_force",), mark)
                    mark = b.log.index(record) + 1
                    if int(record["version"]) >= version:
                        break
                seen = time.monotonic()
                durations.append(answered - started)
                delays.append(seen - answered)
    finally:
        await b.stop()
        await a.stop()
    return {"edit_ms_p50": 1000 * statistics.median(durations),
            "in_force_on_b_ms_p50": 1000 * statistics.median(delays),
            "in_force_on_b_ms_max": 1000 * max(delays)}


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--edits", type=int, default=40)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    bin_dir = find_binaries()
    if bin_dir is None:
        print("PostgreSQL binaries not installed: apt-get install postgresql", file=sys.stderr)
        return 2
    server = PgServer.create(bin_dir)
    root = Path(tempfile.mkdtemp(prefix="palyra-regbench-", dir="/tmp"))
    try:
        rounds = []
        for n in range(args.rounds):
            rounds.append(await one_round(server, args.edits, root, n))
            print(f"round {n + 1}: {rounds[-1]}", file=sys.stderr)
    finally:
        server.remove()
        shutil.rmtree(root, ignore_errors=True)
    summary: dict[str, Any] = {key: round(statistics.median(r[key] for r in rounds), 1)
                               for key in rounds[0]}
    summary["b_delay_over_edit"] = round(
        summary["in_force_on_b_ms_p50"] / summary["edit_ms_p50"], 2)
    summary["rounds"] = rounds
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            if key != "rounds":
                print(f"{key:28} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
