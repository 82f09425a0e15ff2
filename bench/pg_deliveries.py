"""Delivery with the delivery store on PostgreSQL, next to SQLite, in the same run.

Each round runs ``palyra daemon run`` (a child process, ``--workers 1`` unless told) once
per engine, in an order that alternates between rounds: a fresh state dir, and for
PostgreSQL a fresh database on a throwaway server (tests/pg.py: Unix socket, fsync and
synchronous_commit on, ``pg_stat_statements`` loaded). M subscriptions are made disabled,
N events published, then every subscription is enabled with catch-up, and the run is timed
until the receiver (bench/deliveries.py's, a child process answering 200 at once) has all
N x M deliveries: the dispatcher alone, from a durable backlog.

Engines: ``sqlite``; ``postgres`` (the store as shipped: ``plan_cache_mode =
force_custom_plan`` on its sessions); and with ``--generic-plans`` also ``postgres-auto``,
the same with ``?plan_cache_mode=auto`` in the URI (PostgreSQL's default, which may keep a
generic plan after five runs of a prepared statement).

Figures per engine, medians over rounds: deliveries/s; CPU ms per delivery summed over the
daemon's processes, and the PostgreSQL server's (every backend of the cluster) apart; and
for PostgreSQL the statements that took the most server time during the delivery
(``pg_stat_statements``: calls per delivery, mean ms). Ratios are PostgreSQL's over
SQLite's; the issue-11 target is deliveries/s >= 0.7x.

    flock /tmp/bench.lock .venv/bin/python bench/pg_deliveries.py [--rounds 5]
        [--events 3000] [--subscriptions 4] [--in-flight 10] [--generic-plans] [--json]

Results are printed and saved under bench/results/ (gitignored).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _common import (  # noqa: E402
    DEFAULT_PALYRA,
    BenchError,
    Children,
    DaemonProc,
    Window,
    admin_ok,
    check_targets,
    free_port,
    local_json,
    log,
    machine,
    medians,
    ms,
    percentile,
    port_open,
    publish_events,
    render_targets,
    run_benchmark,
    start_daemon,
    wait_until,
)
from deliveries import LATENCY_TYPE, THROUGHPUT_TYPE, event_data  # noqa: E402
from pg_journal import server_cpu_s  # noqa: E402

from tests.pg import PgServer, find_binaries  # noqa: E402

TARGETS = {"postgres/sqlite deliveries/s": (0.7, "min"),
           "postgres latency p99 ms": (50.0, "max")}  # issue 10: p99 at 1,000 events/s
TOP_STATEMENTS = 6
ENGINES = ("sqlite", "postgres", "postgres-3")


class Run:
    def __init__(self, args: argparse.Namespace, work: Path, children: Children,
                 server: PgServer, receiver_port: int) -> None:
        self.args = args
        self.work = work
        self.children = children
        self.server = server
        self.port = receiver_port
        key = work / "secrets.key"
        key.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
        key.chmod(0o600)
        self.key_ref = f"file:{key}"

    def settings(self, engine: str, tag: str) -> tuple[dict[str, str], str | None]:
        settings = {
            "PALYRA_DELIVERY_ALLOW_PRIVATE_NETWORKS": "1",
            "PALYRA_DELIVERY_MAX_SUBSCRIPTIONS_PER_OWNER": str(max(5, self.args.subscriptions)),
        }
        if engine == "sqlite":
            return settings, None
        dsn = self.server.new_database(f"bench_{tag.replace('-', '_')}")
        if engine == "postgres-auto":
            dsn += "&plan_cache_mode=auto"
        # The nodes' shared [secrets] key: the subscriptions' signing secrets are db: refs
        # then, which every node can read (a keyring secret is per node).
        settings |= {"PALYRA_STORAGE_BACKEND": "postgres", "PALYRA_STORAGE_DSN": dsn,
                     "PALYRA_SECRETS_KEY_REF": self.key_ref}
        return settings, self.server.databases[-1]

    def wait_received(self, expected: int) -> dict[str, Any]:
        start = time.monotonic()
        while True:
            stats: dict[str, Any] = local_json(self.port, "GET", "/_stats")
            if stats["unique"] >= expected or time.monotonic() - start > self.args.deadline:
                return stats
            time.sleep(0.05)

    def start_nodes(self, engine: str, tag: str, nodes: list[DaemonProc]) -> str | None:
        """Start the engine's daemons (three for ``postgres-3``) into ``nodes``; the
        database's name (None: SQLite)."""
        settings, database = self.settings(engine, tag)
        for n in range(3 if engine == "postgres-3" else 1):
            node = {"PALYRA_CLUSTER_NODE_ID": f"n{n + 1}"} if database else {}
            nodes.append(start_daemon(
                self.children, self.args.palyra, self.work / f"state-{tag}-n{n + 1}",
                self.work / f"palyra-{tag}-n{n + 1}.log", settings=settings | node,
                many_files=True, workers=self.args.workers))
        return database

    def latency(self, engine: str, tag: str) -> dict[str, Any]:
        """``--rate`` events/s for ``--latency`` s published on node 1 to one subscription
        (with three nodes, delivered by whichever holds its lease); publish -> arrival."""
        args = self.args
        nodes: list[DaemonProc] = []
        try:
            self.start_nodes(engine, tag, nodes)
            admin_ok(nodes[0].socket, "POST", "/v1/subscriptions", {
                "subscription_id": "latency", "url": f"http://127.0.0.1:{self.port}/r/lat",
                "events": [LATENCY_TYPE], "max_in_flight": args.in_flight, "enabled": True},
                expect=201)
            holder = None
            deadline = time.monotonic() + 20
            while holder is None and time.monotonic() < deadline:  # its lease is taken
                for i, n in enumerate(nodes):
                    info = admin_ok(n.socket, "GET", "/v1/status")
                    if "cluster" not in info or "latency" in info["cluster"]["leases_held"]:
                        holder = i
                if holder is None:
                    time.sleep(0.1)
            if holder is None:
                raise BenchError(f"{engine}: no node took the latency subscription's lease")
            local_json(self.port, "POST", "/_reset", {"capture": False})
            count = int(args.rate * args.latency)
            published = asyncio.run(publish_events(
                nodes[0].socket, LATENCY_TYPE, count, event_data(args.pad), rate=args.rate,
                concurrency=256, deadline_s=args.latency + args.deadline))
            stats = self.wait_received(len(published.seqs))
            ordered = sorted(local_json(self.port, "GET", "/_samples")["latency_ms"])
            out: dict[str, Any] = {
                "published": len(published.seqs), "received": stats["unique"],
                "duplicates": stats["duplicates"], "publish_per_s": published.rate,
                "delivering_node": holder + 1,
                **{f"latency_p{q}_ms": percentile(ordered, q) for q in (50, 90, 99)},
                "latency_max_ms": ordered[-1] if ordered else None,
            }
            out["problems"] = [p for p in (
                f"received {stats['unique']} of {count}" if stats["unique"] != count else "",
                f"{stats['duplicates']} duplicates" if stats["duplicates"] else "",
                f"publish failures {published.failures}" if published.failures else "") if p]
            return out
        finally:
            for n in nodes:
                self.children.stop(n.proc)

    def one(self, engine: str, tag: str) -> dict[str, Any]:
        args = self.args
        nodes: list[DaemonProc] = []
        try:
            database = self.start_nodes(engine, tag, nodes)
            daemon = nodes[0]
            subs = [f"bench-{k}" for k in range(args.subscriptions)]
            for sub in subs:
                admin_ok(daemon.socket, "POST", "/v1/subscriptions", {
                    "subscription_id": sub, "url": f"http://127.0.0.1:{self.port}/r/{sub}",
                    "events": [THROUGHPUT_TYPE], "max_in_flight": args.in_flight,
                    "enabled": False,
                }, expect=201)
            published = asyncio.run(publish_events(
                daemon.socket, THROUGHPUT_TYPE, args.events, event_data(args.pad),
                concurrency=32))
            if len(published.seqs) != args.events:
                raise BenchError(f"publishing: {published.failures}")
            expected = args.events * args.subscriptions
            local_json(self.port, "POST", "/_reset", {"capture": False})
            if database is not None:
                self.server.psql("postgres", "SELECT pg_stat_statements_reset()")
            server = self.server if database is not None else None
            windows = [Window(n.pid) for n in nodes]
            srv0, started = server_cpu_s(server), time.time()
            for sub in subs:
                admin_ok(daemon.socket, "POST", f"/v1/subscriptions/{sub}/enable",
                         {"catch_up": True})
            stats = self.wait_received(expected)
            closed = [w.close() for w in windows]
            used = {"cpu_s": sum(c["cpu_s"] for c in closed), **{
                key: closed[0][key] for key in ("loop_on_cpu", "loop_waiting_for_cpu")}}
            server_s = server_cpu_s(server) - srv0
            done = max(1, stats["unique"])
            elapsed = stats["last_at"] - started if stats["unique"] else float("nan")
            out: dict[str, Any] = {
                "per_s": stats["unique"] / elapsed, "elapsed_s": elapsed,
                "received": stats["unique"], "expected": expected,
                "duplicates": stats["duplicates"],
                "cpu_ms_per_delivery": used["cpu_s"] * 1000 / done,
                "server_cpu_ms_per_delivery": server_s * 1000 / done,
                "total_cpu_ms_per_delivery": (used["cpu_s"] + server_s) * 1000 / done,
                "loop_on_cpu": used["loop_on_cpu"],
                "loop_waiting_for_cpu": used["loop_waiting_for_cpu"],
                "publish_per_s": published.rate,
                "node_cpu_shares": [c["cpu_s"] / max(1e-9, used["cpu_s"]) for c in closed],
            }
            if len(nodes) > 1:  # how the leases spread over the nodes
                out["leases_by_node"] = [
                    len(admin_ok(n.socket, "GET", "/v1/status")["cluster"]["leases_held"])
                    for n in nodes]
            if database is not None:
                out["statements"] = self.statements(database, done)
            out["problems"] = self.check(daemon.socket, stats, expected,
                                         [n.log_path for n in nodes])
            return out
        finally:
            for n in nodes:
                self.children.stop(n.proc)

    def statements(self, database: str, deliveries: int) -> list[dict[str, Any]]:
        """The statements that took the most server time since the reset."""
        rows = self.server.psql("postgres", (
            "SELECT queryid, calls, round(total_exec_time::numeric, 3),"
            " round(mean_exec_time::numeric, 4), regexp_replace(left(query, 48) || ' ... '"
            " || right(query, 60), E'\\\\s+', ' ', 'g')"
            " FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database"
            f" WHERE datname = '{database}') ORDER BY total_exec_time DESC"
            f" LIMIT {TOP_STATEMENTS}"))
        found = []
        for line in rows.splitlines():
            queryid, calls, total, mean, query = line.split("|", 4)
            found.append({"queryid": queryid, "calls_per_delivery": int(calls) / deliveries,
                          "total_ms": float(total), "mean_ms": float(mean), "query": query})
        return found

    def check(self, sock: Path, stats: dict[str, Any], expected: int,
              log_paths: list[Path]) -> list[str]:
        problems = []
        if stats["unique"] != expected:
            problems.append(f"received {stats['unique']} of {expected} events")
        if stats["duplicates"]:
            problems.append(f"{stats['duplicates']} events delivered more than once")
        start = time.monotonic()
        while True:  # the last outcomes may still be on their way to the store
            db = admin_ok(sock, "GET", "/v1/deliveries/stats")["deliveries"]
            if not db.get("pending") or time.monotonic() - start > 10:
                break
            time.sleep(0.1)
        if db.get("succeeded") != expected or db.get("failed") or db.get("pending"):
            problems.append(f"delivery store: {db}")
        text = "".join(p.read_text(errors="replace") for p in log_paths)
        for event in ("delivery_attempt_crashed", "delivery_attempt_unrecorded",
                      "delivery_paused"):
            if text.count(event):
                problems.append(f"{text.count(event)} {event} in the daemon log")
        return problems


def summarize(rounds: list[dict[str, Any]], engines: Sequence[str]) -> dict[str, Any]:
    by_engine = {engine: medians([r[engine] for r in rounds]) for engine in engines}
    base = by_engine.get("sqlite", {})
    ratios = {
        engine: {key: (None if not base.get(key) or by_engine[engine].get(key) is None
                       else by_engine[engine][key] / base[key])  # type: ignore[operator]
                 for key in ("per_s", "cpu_ms_per_delivery", "total_cpu_ms_per_delivery")}
        for engine in engines if engine != "sqlite" and base
    }
    statements = {}
    for engine in engines:
        if engine == "sqlite":
            continue
        last = rounds[-1][engine]["statements"]
        statements[engine] = [
            {**item, "mean_ms": statistics.median(
                next((s["mean_ms"] for s in r[engine]["statements"]
                      if s["queryid"] == item["queryid"]), item["mean_ms"]) for r in rounds)}
            for item in last]
    latency = {engine: medians([r[f"latency-{engine}"] for r in rounds]) for engine in engines
               if f"latency-{engine}" in rounds[0]}
    values: dict[str, float | None] = {}
    if "postgres" in ratios:
        values["postgres/sqlite deliveries/s"] = ratios["postgres"]["per_s"]
    if "postgres" in latency:
        values["postgres latency p99 ms"] = latency["postgres"]["latency_p99_ms"]
    problems = [f"round {i + 1} {part}: {p}" for i, r in enumerate(rounds)
                for part in r if isinstance(r[part], dict) for p in r[part]["problems"]]
    return {"by_engine": by_engine, "ratios": ratios, "statements": statements,
            "latency": latency, "targets": check_targets(values, TARGETS),
            "problems": problems}


def render(result: dict[str, Any]) -> str:
    cfg, summary, rounds = result["config"], result["summary"], result["rounds"]
    lines = [
        f"delivery store on PostgreSQL vs SQLite: {cfg['rounds']} rounds (medians), "
        f"{cfg['events']:,} events x {cfg['subscriptions']} subscriptions from a backlog, "
        f"{cfg['in_flight']} in flight each, --workers {cfg['workers']}, "
        f"{result['machine']['nproc']} CPUs",
        "",
        f"  {'engine':<14} {'deliveries/s':>12} {'x sqlite':>8} {'daemon CPU':>11}"
        f" {'PG server':>10} {'total':>8}  (ms per delivery)   by round",
    ]
    for engine in cfg["engines"]:
        e = summary["by_engine"][engine]
        ratio = summary["ratios"].get(engine, {}).get("per_s")
        per_round = " / ".join(f"{r[engine]['per_s']:,.0f}" for r in rounds)
        lines.append(
            f"  {engine:<14} {e['per_s']:12,.0f} {'' if ratio is None else f'{ratio:.2f}':>8}"
            f" {e['cpu_ms_per_delivery']:11.3f} {e['server_cpu_ms_per_delivery']:10.3f}"
            f" {e['total_cpu_ms_per_delivery']:8.3f}   {per_round}")
    for engine, items in summary["statements"].items():
        lines += ["", f"  {engine}: server time by statement (calls per delivery, mean ms"
                  " over rounds)"]
        lines += [f"    {s['calls_per_delivery']:6.3f}  {s['mean_ms']:8.4f} ms  {s['query']}"
                  for s in items]
    if summary["latency"]:
        lines += ["", f"  publish -> delivery at {cfg['rate']:g} events/s for {cfg['latency']:g} s"
                  " to one subscription (medians):"]
        for engine, lat in summary["latency"].items():
            lines.append(f"    {engine:<14} p50 {ms(lat['latency_p50_ms'])}, p90"
                         f" {ms(lat['latency_p90_ms'])}, p99 {ms(lat['latency_p99_ms'])}, max"
                         f" {ms(lat['latency_max_ms'])}; p99 by round " + " / ".join(
                             ms(r[f'latency-{engine}']['latency_p99_ms']) for r in rounds))
    lines += ["", *render_targets(summary["targets"])]
    if summary["problems"]:
        lines += ["", "PROBLEMS:"] + [f"  {x}" for x in summary["problems"]]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--subscriptions", type=int, default=4)
    parser.add_argument("--in-flight", type=int, default=10)
    parser.add_argument("--pad", type=int, default=200, help="filler chars in each event")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", default="1", help="palyra's --workers (1)")
    parser.add_argument("--generic-plans", action="store_true",
                        help="also run PostgreSQL with plan_cache_mode=auto in the URI")
    parser.add_argument("--deadline", type=float, default=180.0)
    parser.add_argument("--latency", type=float, default=0.0, metavar="S",
                        help="also publish --rate events/s for S seconds to one subscription"
                        " per engine and round: publish -> delivery latency (0: not)")
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s (--latency)")
    parser.add_argument("--palyra", type=Path, default=DEFAULT_PALYRA)
    parser.add_argument("--tmp-dir", type=Path, default=None)
    parser.add_argument("--engines", default="sqlite,postgres",
                        help="comma-separated, from sqlite, postgres, postgres-3 (three"
                        " nodes on one database; use >= 6 subscriptions) (sqlite,postgres)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and logs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not args.engines or not set(args.engines) <= set(ENGINES):
        parser.error(f"--engines: from {', '.join(ENGINES)}")
    for name in ("events", "subscriptions", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if not 1 <= args.in_flight <= 100:
        parser.error("--in-flight is 1..100")
    return args


def benchmark(args: argparse.Namespace, children: Children) -> dict[str, Any]:
    bin_dir = find_binaries()
    if bin_dir is None:
        raise BenchError("PostgreSQL binaries not installed: apt-get install postgresql")
    engines = [*args.engines, *(["postgres-auto"] if args.generic_plans else [])]
    load_start, started_at = list(os.getloadavg()), datetime.now(UTC)
    work = Path(tempfile.mkdtemp(prefix="palyra-bench-pgdeliv-", dir=args.tmp_dir))
    server = PgServer.create(bin_dir, settings=[
        "shared_preload_libraries = 'pg_stat_statements'", "pg_stat_statements.track = all"])
    try:
        server.psql("postgres", "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        port = free_port()
        receiver_log = work / "receiver.log"
        receiver = children.spawn(
            [sys.executable, str(Path(__file__).with_name("deliveries.py")),
             "--serve-receiver", str(port)], receiver_log)
        wait_until(lambda: port_open(port), "receiver", receiver, receiver_log)
        run = Run(args, work, children, server, port)
        rounds: list[dict[str, Any]] = []
        for index in range(args.rounds):
            order = engines if index % 2 == 0 else list(reversed(engines))
            rnd = {engine: run.one(engine, f"r{index + 1}-{engine}") for engine in order}
            if args.latency > 0:
                for engine in order:
                    rnd[f"latency-{engine}"] = run.latency(engine, f"r{index + 1}-lat-{engine}")
                    log(f"[round {index + 1}/{args.rounds}] latency {engine}: p50 "
                        f"{rnd[f'latency-{engine}']['latency_p50_ms']:.1f} ms, p99 "
                        f"{rnd[f'latency-{engine}']['latency_p99_ms']:.1f} ms")
            log(f"[round {index + 1}/{args.rounds}] " + "  ".join(
                f"{engine} {rnd[engine]['per_s']:,.0f}/s"
                f" ({rnd[engine]['total_cpu_ms_per_delivery']:.3f} ms CPU)"
                for engine in engines))
            rounds.append(rnd)
        return {
            "started_at": started_at.isoformat(timespec="seconds"),
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, "bench/pg_deliveries.py",
                                 *sys.argv[1:]]),
            "machine": machine(),
            "config": {"events": args.events, "subscriptions": args.subscriptions,
                       "in_flight": args.in_flight, "pad": args.pad, "rounds": args.rounds,
                       "workers": args.workers, "engines": engines,
                       "latency": args.latency, "rate": args.rate,
                       "postgres": bin_dir.parent.name},
            "rounds": rounds, "summary": summarize(rounds, engines),
            "loadavg_start": load_start, "loadavg_end": list(os.getloadavg()),
        }
    finally:
        server.remove()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    return run_benchmark("pg_deliveries", parse_args(argv), benchmark, render)


if __name__ == "__main__":
    sys.exit(main())
