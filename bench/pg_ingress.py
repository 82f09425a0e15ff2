"""Signed-webhook ingest on PostgreSQL, one node and three, next to SQLite, in the same run.

Each round runs, in an order that rotates from round to round, with the same ``--workers``:

- ``sqlite-1``: one ``palyra daemon run`` on its own state dir (the embedded engine);
- ``pg-1``: one daemon on a fresh database of a throwaway PostgreSQL (tests/pg.py: Unix
  socket, fsync and synchronous_commit on, ``pg_stat_statements`` loaded);
- ``pg-3``: three daemons (three state dirs, node ids ``n1``..``n3``) on one fresh database,
  sharing a ``[secrets] key_ref`` so that the integration's ``db:`` secret verifies on all;
- ``pg-1-pglz`` (only when asked): ``pg-1`` with the journal's payloads compressed by
  PostgreSQL's default, pglz, as before journal migration 2 (lz4): the before/after;
- ``pg-1-auto`` (only when asked): ``pg-1`` with ``?plan_cache_mode=auto`` in the URI
  (PostgreSQL's default; the journal's sessions otherwise ask for custom plans).

The load is bench/ingress.py's: wrk with ``wrk_github.lua`` (a GitHub push, the real
``X-Hub-Signature-256``, a distinct ``X-GitHub-Delivery`` and body per request). With
several nodes ``BENCH_ADDRS`` gives wrk thread i node i mod 3, so every node gets the same
number of connections; every variant uses the same ``--threads`` / ``--connections``.

Figures per variant, medians over rounds: req/s, p50/p99 (wrk's histogram), CPU ms per
request summed over our processes (every daemon's tree) and, apart, the PostgreSQL
server's (every process of the cluster), wrk's, the box's busy share of its CPUs; for
PostgreSQL the commits, WAL bytes, WAL writes and fsyncs (``pg_stat_wal``) per request
and per second, and the statements that took the most server time (``pg_stat_statements``:
calls per request, mean ms). Ratios are against ``sqlite-1``; the issue-11 target is
``pg-1`` req/s >= 0.7x ``sqlite-1``.

    flock /tmp/bench.lock .venv/bin/python bench/pg_ingress.py [--rounds 3] [--duration 10]
        [--warmup 2] [--workers 1] [--variants sqlite-1,pg-1,pg-3[,pg-1-pglz,pg-1-auto]]
        [--json]

Results are printed and saved under bench/results/ (gitignored). Everything listens on
127.0.0.1 or a Unix socket; every child process is stopped on exit.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
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
    TreeCpu,
    admin,
    check_targets,
    die_with_parent,
    filesystem_of,
    log,
    machine,
    render_targets,
    run_benchmark,
    start_daemon,
)
from github_push import github_push_payload, github_signature  # noqa: E402
from ingress_servers import INTEGRATION_ID, post, wait_idle  # noqa: E402
from pg_journal import server_cpu_s  # noqa: E402

from tests.pg import PgServer, find_binaries  # noqa: E402

LUA = Path(__file__).resolve().parent / "wrk_github.lua"
VARIANTS = ("sqlite-1", "pg-1", "pg-3", "pg-1-pglz", "pg-1-auto")
TARGETS = {"pg-1/sqlite-1 req/s": (0.7, "min"), "pg-1 p99 ms": (10.0, "max")}
TOP_STATEMENTS = 8
WAL_KEYS = ("wal_records", "wal_fpi", "wal_bytes", "wal_buffers_full", "wal_write",
            "wal_sync")


def box_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return float(sum(fields[:8]) - idle), float(sum(fields[:8]))


@dataclass
class Cluster:
    variant: str
    nodes: list[DaemonProc]
    database: str | None  # None: SQLite

    @property
    def urls(self) -> list[str]:
        return [f"{n.ingress_url}/hooks/{INTEGRATION_ID}" for n in self.nodes]


class Run:
    def __init__(self, args: argparse.Namespace, work: Path, children: Children,
                 server: PgServer) -> None:
        self.args, self.work, self.children, self.server = args, work, children, server
        self.secret = secrets.token_hex(20).encode()
        self.body = github_push_payload()
        self.body_file, self.secret_file = work / "body.json", work / "secret"
        self.body_file.write_bytes(self.body)
        self.secret_file.write_bytes(self.secret)
        self.secret_file.chmod(0o600)
        key = work / "secrets.key"  # the nodes' shared [secrets] key (db: secret refs)
        key.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
        key.chmod(0o600)
        self.key_ref = f"file:{key}"

    # -- starting and checking a variant ---------------------------------------------------

    def start(self, variant: str, tag: str) -> Cluster:
        engine, count = variant.split("-")[:2]
        settings: dict[str, str] = {}
        database = None
        if engine == "pg":
            dsn = self.server.new_database(f"ingest_{tag.replace('-', '_')}")
            database = self.server.databases[-1]
            if variant.endswith("-auto"):  # PostgreSQL's default plan cache mode
                dsn += "&plan_cache_mode=auto"
            settings = {"PALYRA_STORAGE_BACKEND": "postgres", "PALYRA_STORAGE_DSN": dsn,
                        "PALYRA_SECRETS_KEY_REF": self.key_ref}
        nodes: list[DaemonProc] = []
        cluster = Cluster(variant, nodes, database)
        try:
            for i in range(int(count)):
                node = {"PALYRA_CLUSTER_NODE_ID": f"n{i + 1}"} if engine == "pg" else {}
                nodes.append(start_daemon(
                    self.children, self.args.palyra, self.work / f"state-{tag}-n{i + 1}",
                    self.work / f"palyra-{tag}-n{i + 1}.log", settings=settings | node,
                    many_files=True, workers=self.args.workers))
            if variant.endswith("-pglz"):  # before journal migration 2: PostgreSQL's default
                assert database is not None
                self.server.psql(database, "ALTER TABLE journal_events ALTER COLUMN"
                                 " payload_json SET COMPRESSION pglz")
            status, answer = admin(nodes[0].socket, "POST", "/v1/webhooks", {
                "integration_id": INTEGRATION_ID, "provider": "github",
                "secret": {"value": self.secret.decode()}})
            if status != 201:
                raise BenchError(f"adding the integration: {status} {answer}")
            self.verify(cluster)
        except BaseException:
            self.stop(cluster)
            raise
        return cluster

    def stop(self, cluster: Cluster) -> None:
        for node in cluster.nodes:
            self.children.stop(node.proc)

    def headers(self, delivery: str, signature: str) -> dict[str, str]:
        return {"Content-Type": "application/json", "User-Agent": "GitHub-Hookshot/bench",
                "X-GitHub-Event": "push", "X-GitHub-Delivery": delivery,
                "X-Hub-Signature-256": signature}

    def verify(self, cluster: Cluster) -> None:
        """On every node: a wrong signature is refused (401), a good request is accepted
        (202 with an integer seq); a node that has not the integration in force yet (the
        registry is shared, in force within 1 s) is asked again until 10 s have passed."""
        for url in cluster.urls:
            # A body of its own each time: palyra dedupes GitHub deliveries on the signed
            # content across the cluster too.
            body = self.body[:-1] + f',"zz_verify":"{secrets.token_hex(8)}"}}'.encode()
            good = github_signature(self.secret, body)
            bad = github_signature(b"not-the-secret", body)
            deadline = time.monotonic() + 10
            while True:
                status, answer = post(url, body, self.headers(secrets.token_hex(8), good))
                if status == 202 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            doc = json.loads(answer) if status == 202 else {}
            if status != 202 or not isinstance(doc.get("seq"), int):
                raise BenchError(f"{url}: a good request got {status} {answer[:200]!r}")
            status, answer = post(url, body, self.headers(secrets.token_hex(8), bad))
            if status != 401:
                raise BenchError(f"{url}: a bad signature got {status} {answer[:200]!r}")

    # -- the load ---------------------------------------------------------------------------

    def wrk(self, cluster: Cluster, seconds: int) -> dict[str, Any]:
        args = self.args
        tag = secrets.token_hex(4)  # new delivery ids for every run: no replays
        argv = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s",
                "--timeout", "10s", "--latency", "-s", str(LUA), cluster.urls[0], "--",
                str(self.body_file), str(self.secret_file), tag, "202"]
        env = dict(os.environ)
        env["BENCH_ADDRS"] = " ".join(n.ingress_url.split("://", 1)[1] for n in cluster.nodes)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60,
                              check=False, preexec_fn=die_with_parent, env=env)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_RESULT ")),
                    None)
        if done.returncode != 0 or line is None:
            raise BenchError(f"wrk failed ({done.returncode}): {done.stderr[-500:]}")
        result: dict[str, Any] = json.loads(line.split(" ", 1)[1])
        lat = result.pop("latency_us")
        duration = result["duration_us"] / 1e6
        result.update(
            rps=result["requests"] / duration, duration_s=duration,
            p50_ms=lat["p50"] / 1000, p99_ms=lat["p99"] / 1000, max_ms=lat["max"] / 1000,
            socket_errors=sum(v for k, v in result["errors"].items() if k != "status"),
            cpu_s=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime))
        return result

    # -- PostgreSQL's counters ---------------------------------------------------------------

    def wal(self) -> dict[str, float]:
        row = self.server.psql("postgres", "SELECT " + ", ".join(WAL_KEYS) + " FROM pg_stat_wal")
        return dict(zip(WAL_KEYS, (float(x) for x in row.split("|")), strict=True))

    def statements(self, database: str, requests: int) -> list[dict[str, Any]]:
        rows = self.server.psql("postgres", (
            "SELECT queryid, calls, rows, round(total_exec_time::numeric, 3),"
            " round(mean_exec_time::numeric, 4), regexp_replace(left(query, 60) || ' ... '"
            " || right(query, 50), E'\\\\s+', ' ', 'g')"
            " FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database"
            f" WHERE datname = '{database}') ORDER BY total_exec_time DESC"
            f" LIMIT {TOP_STATEMENTS}"))
        found = []
        for line in rows.splitlines():
            queryid, calls, nrows, total, mean, query = line.split("|", 5)
            found.append({"queryid": queryid, "calls": int(calls),
                          "calls_per_request": int(calls) / requests,
                          "rows_per_call": int(nrows) / max(1, int(calls)),
                          "total_ms": float(total), "mean_ms": float(mean), "query": query})
        return found

    def commits(self, database: str) -> int:
        """COMMITs run in ``database`` since the reset (pg_stat_statements counts them at
        once; pg_stat_database's counters may lag a backend's idle flush)."""
        got = self.server.psql("postgres", (
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query ILIKE 'commit'"
            " AND dbid = (SELECT oid FROM pg_database WHERE datname = '"
            f"{database}')"))
        return int(got)

    # -- one variant -------------------------------------------------------------------------

    def one(self, variant: str, tag: str) -> dict[str, Any]:
        cluster = self.start(variant, tag)
        try:
            if self.args.warmup:
                self.wrk(cluster, self.args.warmup)
                for node in cluster.nodes:
                    wait_idle(node.pid, 30)
            before = [admin(n.socket, "GET", "/v1/status")[1] for n in cluster.nodes]
            pg = cluster.database is not None
            if pg:
                self.server.psql("postgres", "SELECT pg_stat_statements_reset()")
                wal0 = self.wal()
                lsn0 = self.server.psql("postgres", "SELECT pg_current_wal_lsn()")
            cpus = [TreeCpu(n.pid) for n in cluster.nodes]
            srv0, box0 = server_cpu_s(self.server if pg else None), box_cpu()
            out: dict[str, Any] = {"wrk": self.wrk(cluster, self.args.duration)}
            box1 = box_cpu()
            used = [c.close() for c in cpus]
            server_s = server_cpu_s(self.server if pg else None) - srv0
            after = [admin(n.socket, "GET", "/v1/status")[1] for n in cluster.nodes]
            w = out["wrk"]
            served = max(1, w["requests"])
            ours = sum(u["cpu_s"] for u in used)
            accepted = sum(a["ingress"]["answers"].get("accepted", 0)
                           - b["ingress"]["answers"].get("accepted", 0)
                           for a, b in zip(after, before, strict=True))
            journal_commits = sum(a["journal"]["commits"] - b["journal"]["commits"]
                                  for a, b in zip(after, before, strict=True))
            out.update(
                rps=w["rps"], p50_ms=w["p50_ms"], p99_ms=w["p99_ms"], non2xx=w["non2xx"],
                unexpected=w["unexpected"], socket_errors=w["socket_errors"],
                accepted=accepted,
                cpu_ms_per_request=ours * 1000 / served,
                server_cpu_ms_per_request=server_s * 1000 / served,
                total_cpu_ms_per_request=(ours + server_s) * 1000 / served,
                wrk_cpu_ms_per_request=w["cpu_s"] * 1000 / served,
                box_busy=(box1[0] - box0[0]) / max(1.0, box1[1] - box0[1]),
                journal_commits=journal_commits,
                events_per_journal_commit=accepted / journal_commits if journal_commits
                else None,
                node_cpu_shares=[u["cpu_s"] / ours if ours else None for u in used],
            )
            if pg:
                assert cluster.database is not None
                lsn1 = self.server.psql("postgres", "SELECT pg_current_wal_lsn()")
                out["statements"] = self.statements(cluster.database, served)
                commits = self.commits(cluster.database)
                out.update(pg_commits_per_s=commits / w["duration_s"],
                           requests_per_pg_commit=served / commits if commits else None)
                out["wal_bytes_per_request"] = float(self.server.psql(
                    "postgres", f"SELECT pg_wal_lsn_diff('{lsn1}', '{lsn0}')")) / served
        finally:
            self.stop(cluster)
        if pg:
            # pg_stat_wal is summed from each backend's own counters when it flushes them
            # (at most every second, and when it exits): read after the nodes are gone.
            wal1 = self.wal()
            d = {k: wal1[k] - wal0[k] for k in WAL_KEYS}
            out.update(wal_sync_per_s=d["wal_sync"] / w["duration_s"],
                       wal_write_per_s=d["wal_write"] / w["duration_s"],
                       requests_per_wal_sync=served / d["wal_sync"] if d["wal_sync"] else None,
                       wal_fpi_per_request=d["wal_fpi"] / served, wal=d)
        return out


def summarize(rounds: list[dict[str, Any]], variants: Sequence[str]) -> dict[str, Any]:
    keys = ("rps", "p50_ms", "p99_ms", "cpu_ms_per_request", "server_cpu_ms_per_request",
            "total_cpu_ms_per_request", "wrk_cpu_ms_per_request", "box_busy",
            "events_per_journal_commit", "pg_commits_per_s", "requests_per_pg_commit",
            "wal_bytes_per_request", "wal_sync_per_s", "wal_write_per_s",
            "requests_per_wal_sync", "wal_fpi_per_request")
    by: dict[str, dict[str, float | None]] = {}
    for v in variants:
        by[v] = {}
        for key in keys:
            found = [r[v][key] for r in rounds if isinstance(r[v].get(key), int | float)]
            by[v][key] = float(statistics.median(found)) if found else None
    base = by.get("sqlite-1", {})
    ratios = {v: {key: (None if not base.get(key) or by[v][key] is None
                        else by[v][key] / base[key])  # type: ignore[operator]
                  for key in ("rps", "cpu_ms_per_request", "total_cpu_ms_per_request")}
              for v in variants if v != "sqlite-1" and base}
    statements = {}
    for v in variants:
        if not v.startswith("pg"):
            continue
        last = rounds[-1][v]["statements"]
        statements[v] = [{**item, **{key: statistics.median(
            next((s[key] for s in r[v]["statements"] if s["queryid"] == item["queryid"]),
                 item[key]) for r in rounds) for key in ("mean_ms", "calls_per_request")}}
            for item in last]
    values: dict[str, float | None] = {}
    if "pg-1" in ratios:
        values["pg-1/sqlite-1 req/s"] = ratios["pg-1"]["rps"]
    if "pg-1" in by:
        values["pg-1 p99 ms"] = by["pg-1"]["p99_ms"]
    problems = [f"round {i + 1} {v}: {r[v][k]} {k}" for i, r in enumerate(rounds)
                for v in variants for k in ("non2xx", "unexpected", "socket_errors")
                if r[v][k]]
    return {"by_variant": by, "ratios": ratios, "statements": statements,
            "targets": check_targets(values, TARGETS), "problems": problems}


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def render(result: dict[str, Any]) -> str:
    cfg, s, rounds = result["config"], result["summary"], result["rounds"]
    lines = [
        f"signed GitHub ingest, PostgreSQL vs SQLite: {cfg['rounds']} rounds (medians), "
        f"wrk -t{cfg['threads']} -c{cfg['connections']} {cfg['duration_s']} s, --workers "
        f"{cfg['workers']}, {result['machine']['nproc']} CPUs, load "
        f"{result['loadavg_start'][0]:.1f} -> {result['loadavg_end'][0]:.1f}",
        "",
        f"  {'variant':<9} {'req/s':>8} {'x sqlite':>8} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'ours':>6} {'PG srv':>6} {'total':>6} {'wrk':>6} {'box':>5}"
        "  (CPU ms per request; box busy)   req/s by round",
    ]
    for v in cfg["variants"]:
        m = s["by_variant"][v]
        ratio = s["ratios"].get(v, {}).get("rps")
        by_round = " / ".join(f"{r[v]['rps']:,.0f}" for r in rounds)
        lines.append(
            f"  {v:<9} {fmt(m['rps'], ',.0f'):>8} {fmt(ratio, '.2f') if ratio else '':>8}"
            f" {fmt(m['p50_ms'], '.2f'):>7} {fmt(m['p99_ms'], '.2f'):>7}"
            f" {fmt(m['cpu_ms_per_request'], '.3f'):>6}"
            f" {fmt(m['server_cpu_ms_per_request'], '.3f'):>6}"
            f" {fmt(m['total_cpu_ms_per_request'], '.3f'):>6}"
            f" {fmt(m['wrk_cpu_ms_per_request'], '.3f'):>6} {fmt(m['box_busy'], '.0%'):>5}"
            f"   {by_round}")
    lines += ["", "  journal and PostgreSQL's counters (medians):"]
    for v in cfg["variants"]:
        m = s["by_variant"][v]
        text = f"    {v:<9} events per journal commit {fmt(m['events_per_journal_commit'], '.1f')}"
        if v.startswith("pg"):
            text += (f"; PG commits/s {fmt(m['pg_commits_per_s'], ',.0f')}, requests per"
                     f" PG commit {fmt(m['requests_per_pg_commit'], '.1f')}; WAL fsyncs/s"
                     f" {fmt(m['wal_sync_per_s'], ',.0f')} (requests per fsync"
                     f" {fmt(m['requests_per_wal_sync'], '.1f')}), WAL writes/s"
                     f" {fmt(m['wal_write_per_s'], ',.0f')}, WAL bytes per request"
                     f" {fmt(m['wal_bytes_per_request'], ',.0f')}")
        lines.append(text)
    for v, items in s["statements"].items():
        lines += ["", f"  {v}: server time by statement (calls per request, rows per call,"
                  " mean ms; medians over rounds)"]
        lines += [f"    {x['calls_per_request']:7.3f} {x['rows_per_call']:7.1f}"
                  f" {x['mean_ms']:8.4f} ms  {x['query']}" for x in items]
    lines += ["", *render_targets(s["targets"])]
    if s["problems"]:
        lines += ["", "PROBLEMS:"] + [f"  {x}" for x in s["problems"]]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=3,
                        help="wrk -t, a multiple of the largest node count (3)")
    parser.add_argument("--connections", type=int, default=33, help="wrk -c (33)")
    parser.add_argument("--workers", default="1", help="palyra's --workers, every node (1)")
    parser.add_argument("--variants", default=",".join(VARIANTS[:3]),
                        help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--palyra", type=Path, default=DEFAULT_PALYRA)
    parser.add_argument("--tmp-dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and logs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not args.variants or not set(args.variants) <= set(VARIANTS):
        parser.error(f"--variants: from {', '.join(VARIANTS)}")
    if args.rounds < 1 or args.duration < 1 or not 0 <= args.warmup <= 60:
        parser.error("--rounds and --duration at least 1, --warmup 0..60")
    nodes = max(int(v.split("-")[1]) for v in args.variants)
    if args.threads % nodes or args.connections < args.threads:
        parser.error(f"--threads must be a multiple of {nodes} and at most --connections")
    return args


def benchmark(args: argparse.Namespace, children: Children) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise BenchError("wrk is missing: apt-get install -y wrk")
    bin_dir = find_binaries()
    if bin_dir is None:
        raise BenchError("PostgreSQL binaries not installed: apt-get install postgresql")
    load_start, started_at = list(os.getloadavg()), datetime.now(UTC)
    work = Path(tempfile.mkdtemp(prefix="palyra-bench-pgingest-", dir=args.tmp_dir))
    server = PgServer.create(bin_dir, settings=[
        "shared_preload_libraries = 'pg_stat_statements'", "pg_stat_statements.track = all"])
    try:
        server.psql("postgres", "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        run = Run(args, work, children, server)
        variants = list(args.variants)
        rounds: list[dict[str, Any]] = []
        for index in range(args.rounds):
            shift = index % len(variants)
            order = variants[shift:] + variants[:shift]
            rnd: dict[str, Any] = {"order": order}
            for v in order:
                out = rnd[v] = run.one(v, f"r{index + 1}-{v}")
                log(f"[round {index + 1}/{args.rounds}] {v:<9} {out['rps']:8,.0f} req/s"
                    f"  p50 {out['p50_ms']:6.2f}  p99 {out['p99_ms']:6.2f} ms  CPU/req ours"
                    f" {out['cpu_ms_per_request']:.3f} + PG {out['server_cpu_ms_per_request']:.3f}"
                    f" ms  box {out['box_busy']:.0%}  non-2xx {out['non2xx']}")
            rounds.append(rnd)
        return {
            "started_at": started_at.isoformat(timespec="seconds"),
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, "bench/pg_ingress.py",
                                 *sys.argv[1:]]),
            "machine": machine(),
            "config": {"duration_s": args.duration, "warmup_s": args.warmup,
                       "rounds": args.rounds, "threads": args.threads,
                       "connections": args.connections, "workers": args.workers,
                       "variants": variants, "payload_bytes": len(run.body),
                       "postgres": bin_dir.parent.name, "state_fs": filesystem_of(work),
                       "pg_fs": filesystem_of(server.data_dir)},
            "rounds": rounds, "summary": summarize(rounds, variants),
            "loadavg_start": load_start, "loadavg_end": list(os.getloadavg()),
        }
    finally:
        server.remove()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    return run_benchmark("pg_ingress", parse_args(argv), benchmark, render)


if __name__ == "__main__":
    sys.exit(main())
