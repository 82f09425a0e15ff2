"""Outbound delivery benchmark: how fast palyra delivers published events to subscriptions,
next to a bare aiohttp client loop posting the same requests to the same receiver; and the
event -> delivery latency at a fixed publish rate.

    .venv/bin/python bench/deliveries.py [--events 5000] [--subscriptions 4] [--rounds 3]
                                         [--rate 1000] [--duration 10] [--json]
                                         [--workers 1,auto]

``--workers LIST``: palyra runs once per item in each round (``palyra daemon run
--workers N``; ``default``: no flag), next to the same round's bare loop; the daemon's CPU
and memory are summed over all its processes (the control process, which dispatches, and
its ingress workers).

What is measured and how to read it: bench/README.md. Results are printed and saved under
bench/results/ (gitignored). Everything runs on 127.0.0.1 and the admin socket; every child
process is stopped on exit (and killed by the kernel if this script dies).
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
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import (
    DEFAULT_PALYRA,
    BenchError,
    Children,
    DaemonProc,
    Window,
    admin_ok,
    check_targets,
    filesystem_of,
    free_port,
    fsync_probe,
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
    tree_memory,
    wait_until,
    workers_list,
)

THROUGHPUT_TYPE = "bench.tick"
LATENCY_TYPE = "bench.latency"
TARGETS = {  # name: (limit, "min" = at least / "max" = at most)
    "palyra/bare deliveries/s": (0.5, "min"),
    "latency p99 ms": (50.0, "max"),
}


def event_data(pad: int) -> Callable[[int], dict[str, Any]]:
    """Each event's ``data``: its index and ``pad`` filler characters."""
    filler = "x" * pad

    def data(i: int) -> dict[str, Any]:
        return {"i": i, "note": filler}

    return data


# -- the receiver (a child process: --serve-receiver PORT) --------------------------------


def serve_receiver(port: int) -> None:
    """Answers every ``POST /r/{name}`` 200 at once, counting it and noting, for the first
    delivery of each (name, event id), its arrival (wall clock), the event's
    ``data.sent_at`` and ``timestamp``; later ones count as duplicates. Control: ``GET /_stats``,
    ``GET /_samples``, ``POST /_reset {capture}``, ``POST /_dump {path}`` (the captured
    requests as JSON lines, for the bare loop to replay)."""
    import orjson
    from aiohttp import web

    state: dict[str, Any] = {}

    def reset(capture: bool) -> None:
        state.update(count=0, by_name={}, seen=set(), duplicates=0, last_at=None,
                     latency=[], from_journal=[], capture=capture, captured=[])

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        name = request.match_info["name"]
        doc = orjson.loads(body)
        key = (name, doc.get("id"))
        state["count"] += 1
        if key in state["seen"]:  # a second delivery of the same event: not a sample
            state["duplicates"] += 1
            return web.Response(status=200)
        state["seen"].add(key)
        state["by_name"][name] = state["by_name"].get(name, 0) + 1
        state["last_at"] = now
        sent_at = doc.get("data", {}).get("sent_at")
        if isinstance(sent_at, float):
            state["latency"].append((now - sent_at) * 1000)
        stamp = doc.get("timestamp")
        if isinstance(stamp, str):
            journal_s = datetime.fromisoformat(stamp).timestamp()
            state["from_journal"].append((now - journal_s) * 1000)
        if state["capture"]:
            headers = {k: v for k, v in request.headers.items()
                       if k.lower() not in ("host", "content-length")}
            state["captured"].append((name, headers, body))
        return web.Response(status=200)

    async def stats(request: web.Request) -> web.Response:
        keys = ("count", "by_name", "duplicates", "last_at")
        return web.json_response({"unique": len(state["seen"])} | {k: state[k] for k in keys})

    async def samples(request: web.Request) -> web.Response:
        return web.json_response({"latency_ms": state["latency"],
                                  "journal_to_arrival_ms": state["from_journal"]})

    async def do_reset(request: web.Request) -> web.Response:
        reset(bool((await request.json()).get("capture")))
        return web.json_response({"ok": True})

    def write(path: Path) -> None:
        with open(path, "w") as out:
            for name, headers, body in state["captured"]:
                out.write(json.dumps({"name": name, "headers": headers,
                                      "body": body.decode()}) + "\n")

    async def dump(request: web.Request) -> web.Response:
        await asyncio.to_thread(write, Path((await request.json())["path"]))
        return web.json_response({"written": len(state["captured"])})

    reset(False)
    app = web.Application()
    app.router.add_post("/r/{name}", hook)
    app.router.add_get("/_stats", stats)
    app.router.add_get("/_samples", samples)
    app.router.add_post("/_reset", do_reset)
    app.router.add_post("/_dump", dump)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# -- one run ------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, children: Children,
                 receiver_port: int) -> None:
        self.args = args
        self.work = work
        self.children = children
        self.port = receiver_port
        self.captured: Path | None = None

    def start_daemon(self, tag: str, workers: str) -> DaemonProc:
        settings = {
            "PALYRA_DELIVERY_ALLOW_PRIVATE_NETWORKS": "1",
            "PALYRA_DELIVERY_MAX_SUBSCRIPTIONS_PER_OWNER": str(max(5, self.args.subscriptions)),
        }
        return start_daemon(self.children, self.args.palyra, self.work / f"state-{tag}",
                            self.work / f"palyra-{tag}.log", settings=settings,
                            many_files=True, workers=workers)

    def subscribe(self, daemon: DaemonProc, sub_id: str, event_type: str,
                  enabled: bool) -> None:
        admin_ok(daemon.socket, "POST", "/v1/subscriptions", {
            "subscription_id": sub_id, "url": f"http://127.0.0.1:{self.port}/r/{sub_id}",
            "events": [event_type], "max_in_flight": self.args.in_flight, "enabled": enabled,
        }, expect=201)

    def wait_received(self, expected: int, deadline_s: float) -> dict[str, Any]:
        """Poll the receiver until it has ``expected`` distinct deliveries (bounded)."""
        start = time.monotonic()
        while True:
            stats: dict[str, Any] = local_json(self.port, "GET", "/_stats")
            if stats["unique"] >= expected or time.monotonic() - start > deadline_s:
                return stats
            time.sleep(0.05)

    def check(self, daemon: DaemonProc, stats: dict[str, Any], expected: int) -> list[str]:
        """What went wrong, if anything: missing or repeated deliveries, deliveries the
        store does not show as succeeded, attempts that crashed in the daemon or whose
        outcome it could not store."""
        problems = []
        if stats["unique"] != expected:
            problems.append(f"received {stats['unique']} of {expected} events")
        if stats["duplicates"]:
            problems.append(f"{stats['duplicates']} events delivered more than once")
        start = time.monotonic()
        while True:  # the last attempts' records may still be on their way to the disk
            db = admin_ok(daemon.socket, "GET", "/v1/deliveries/stats")["deliveries"]
            if not db.get("pending") or time.monotonic() - start > 10:
                break
            time.sleep(0.1)
        if db.get("succeeded") != expected or db.get("failed") or db.get("pending"):
            problems.append(f"delivery store: {db}")
        text = daemon.log_path.read_text(errors="replace")
        for event in ("delivery_attempt_crashed", "delivery_attempt_unrecorded"):
            if text.count(event):
                problems.append(f"{text.count(event)} {event} in the daemon log")
        return problems

    def palyra_throughput(self, tag: str, workers: str) -> dict[str, Any]:
        """Publish N events while M subscriptions are disabled, then enable them all with
        catch-up and time until the receiver has N x M deliveries: the dispatcher alone,
        from a durable backlog, with no publishing competing for the loop."""
        args = self.args
        daemon = self.start_daemon(tag, workers)
        try:
            idle = tree_memory(daemon.pid)
            subs = [f"bench-{k}" for k in range(args.subscriptions)]
            for sub in subs:
                self.subscribe(daemon, sub, THROUGHPUT_TYPE, enabled=False)
            published = asyncio.run(publish_events(
                daemon.socket, THROUGHPUT_TYPE, args.events, event_data(args.pad),
                concurrency=32))
            if len(published.seqs) != args.events:
                raise BenchError(f"publishing: {published.failures}")
            expected = args.events * args.subscriptions
            local_json(self.port, "POST", "/_reset", {"capture": True})
            window, started = Window(daemon.pid), time.time()
            for sub in subs:
                admin_ok(daemon.socket, "POST", f"/v1/subscriptions/{sub}/enable",
                         {"catch_up": True})
            stats = self.wait_received(expected, args.deadline)
            used = window.close()
            elapsed = stats["last_at"] - started if stats["unique"] else float("nan")
            done = max(1, stats["unique"])
            out: dict[str, Any] = {
                "publish_per_s": published.rate,
                "publish_rtt_p50_ms": percentile(sorted(published.rtt_ms), 50),
                "received": stats["unique"], "expected": expected,
                "duplicates": stats["duplicates"], "by_subscription": stats["by_name"],
                "elapsed_s": elapsed, "per_s": stats["unique"] / elapsed, "window": used,
                "cpu_ms_per_delivery": used["cpu_s"] * 1000 / done,
                "cpu_ms_per_delivery_by_role": {
                    role: value * 1000 / done for role, value in used["cpu_by_role_s"].items()},
                "loop_cpu_ms_per_delivery": used["loop_on_cpu"] * used["wall_s"] * 1000 / done,
                "loop_on_cpu": used["loop_on_cpu"],
                "loop_waiting_for_cpu": used["loop_waiting_for_cpu"],
                "processes": idle["count"], "workers": daemon.workers,
                "idle_rss_mb": idle["rss_mb"], "idle_pss_mb": idle["pss_mb"],
                "idle_memory": idle["processes"],
                "rss_after_mb": tree_memory(daemon.pid)["rss_mb"],
            }
            out["problems"] = self.check(daemon, stats, expected)
            self.captured = self.work / "captured.jsonl"
            local_json(self.port, "POST", "/_dump", {"path": str(self.captured)})
            return out
        finally:
            self.children.stop(daemon.proc)

    def bare_throughput(self) -> dict[str, Any]:
        """The same requests (bodies and headers as palyra sent them) from one aiohttp
        client loop with the same number in flight per subscription: the ceiling."""
        assert self.captured is not None
        by_name: dict[str, list[tuple[dict[str, str], bytes]]] = {}
        with open(self.captured) as lines:
            for line in lines:
                item = json.loads(line)
                by_name.setdefault(item["name"], []).append(
                    (item["headers"], item["body"].encode()))
        local_json(self.port, "POST", "/_reset", {"capture": False})
        window, started = Window(os.getpid(), descendants=False), time.time()
        errors = asyncio.run(bare_loop(self.port, by_name, self.args.in_flight,
                                       self.args.deadline))
        used = window.close()
        expected = sum(len(v) for v in by_name.values())
        stats = self.wait_received(expected, 10)
        elapsed = stats["last_at"] - started if stats["unique"] else float("nan")
        return {"received": stats["unique"], "expected": expected, "errors": errors,
                "elapsed_s": elapsed, "per_s": stats["unique"] / elapsed, "window": used,
                "cpu_ms_per_request": used["cpu_s"] * 1000 / max(1, stats["unique"]),
                "loop_on_cpu": used["loop_on_cpu"],
                "loop_waiting_for_cpu": used["loop_waiting_for_cpu"]}

    def latency(self, tag: str, workers: str) -> dict[str, Any]:
        """Publish at a fixed rate to one subscription; the receiver notes each arrival."""
        args = self.args
        daemon = self.start_daemon(tag, workers)
        try:
            self.subscribe(daemon, "latency", LATENCY_TYPE, enabled=True)
            local_json(self.port, "POST", "/_reset", {"capture": False})
            count = int(args.rate * args.duration)
            window = Window(daemon.pid)
            published = asyncio.run(publish_events(
                daemon.socket, LATENCY_TYPE, count, event_data(args.pad), rate=args.rate,
                concurrency=256, deadline_s=args.duration + args.deadline))
            stats = self.wait_received(len(published.seqs), args.deadline)
            used = window.close()  # from the first publish to the last delivery
            samples = local_json(self.port, "GET", "/_samples")
            out: dict[str, Any] = {
                "published": len(published.seqs), "publish_failures": published.failures,
                "publish_per_s": published.rate, "pacer_lag_max_ms": published.lag_max_ms,
                "received": stats["unique"], "duplicates": stats["duplicates"],
                "window": used, "daemon_cpu_share": used["cpu_s"] / used["wall_s"],
                "cpu_ms_per_event": used["cpu_s"] * 1000 / max(1, stats["unique"]),
                "loop_on_cpu": used["loop_on_cpu"],
                "loop_waiting_for_cpu": used["loop_waiting_for_cpu"],
                "rss_after_mb": tree_memory(daemon.pid)["rss_mb"],
            }
            for name, values in (("latency", samples["latency_ms"]),
                                 ("journal_to_arrival", samples["journal_to_arrival_ms"]),
                                 ("publish_rtt", published.rtt_ms)):
                ordered = sorted(values)
                for q in (50, 90, 99):
                    out[f"{name}_p{q}_ms"] = percentile(ordered, q)
                out[f"{name}_max_ms"] = ordered[-1] if ordered else None
            out["problems"] = self.check(daemon, stats, len(published.seqs))
            if published.failures:
                out["problems"].append(f"publish failures {published.failures}")
            return out
        finally:
            self.children.stop(daemon.proc)


async def bare_loop(port: int, by_name: dict[str, list[tuple[dict[str, str], bytes]]],
                    in_flight: int, deadline_s: float) -> dict[str, int]:
    import aiohttp

    errors: dict[str, int] = {}
    # As the daemon's sender: one pooled session, no DNS cache, no redirects, 4 KiB read.
    connector = aiohttp.TCPConnector(limit=256, limit_per_host=0, use_dns_cache=False)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                     trust_env=False) as session:

        async def worker(url: str, items: Any) -> None:
            for headers, body in items:  # a shared iterator: in_flight workers per name
                try:
                    async with session.post(url, data=body, headers=headers,
                                            allow_redirects=False) as resp:
                        await resp.content.read(4096)
                        if resp.status != 200:
                            errors[str(resp.status)] = errors.get(str(resp.status), 0) + 1
                except aiohttp.ClientError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

        workers = []
        for name, items in by_name.items():
            shared = iter(items)
            url = f"http://127.0.0.1:{port}/r/{name}"
            workers += [worker(url, shared) for _ in range(in_flight)]
        try:
            async with asyncio.timeout(deadline_s):
                await asyncio.gather(*workers)
        except TimeoutError:
            errors["deadline"] = 1  # whatever was left is missing at the receiver
    return errors


# -- summary ------------------------------------------------------------------------------


def label(workers: str) -> str:
    return f"palyra N={workers}"


def summarize(rounds: list[dict[str, Any]], workers: Sequence[str]) -> dict[str, Any]:
    bare = medians([r["bare"] for r in rounds])
    assert bare["per_s"] is not None
    by_n: dict[str, Any] = {}
    checked: dict[str, float | None] = {}
    limits: dict[str, tuple[float, str]] = {}
    problems = []
    for n in workers:
        palyra = medians([r[f"palyra-w{n}"] for r in rounds])
        latency = medians([r[f"latency-w{n}"] for r in rounds])
        roles = sorted({role for r in rounds
                        for role in r[f"palyra-w{n}"]["cpu_ms_per_delivery_by_role"]})
        palyra_roles = {role: statistics.median(
            r[f"palyra-w{n}"]["cpu_ms_per_delivery_by_role"].get(role, 0.0) for r in rounds)
            for role in roles}
        assert palyra["per_s"] is not None
        ratio = palyra["per_s"] / bare["per_s"]
        by_n[n] = {"palyra": palyra, "latency": latency, "ratio": ratio,
                   "cpu_ms_per_delivery_by_role": palyra_roles,
                   "cpu_vs_bare": None if not bare["cpu_ms_per_request"]
                   or palyra["cpu_ms_per_delivery"] is None
                   else palyra["cpu_ms_per_delivery"] / bare["cpu_ms_per_request"]}
        for name, key, value in ((f"palyra-w{n}/bare deliveries/s",
                                  "palyra/bare deliveries/s", ratio),
                                 (f"palyra-w{n} latency p99 ms", "latency p99 ms",
                                  latency["latency_p99_ms"])):
            checked[name], limits[name] = value, TARGETS[key]
        problems += [f"round {i + 1} {label(n)} {part}: {p}" for i, r in enumerate(rounds)
                     for part in ("palyra", "latency") for p in r[f"{part}-w{n}"]["problems"]]
    targets = check_targets(checked, limits)
    problems += [f"round {i + 1} bare: errors {r['bare']['errors']}"
                 for i, r in enumerate(rounds) if r["bare"]["errors"]]
    return {"by_workers": by_n, "bare": bare, "targets": targets, "problems": problems}


def render(result: dict[str, Any]) -> str:
    cfg, summary, rounds = result["config"], result["summary"], result["rounds"]
    b = summary["bare"]

    def by_round(part: str, key: str, fmt: str = ",.0f") -> str:
        return " / ".join("n/a" if r[part][key] is None else format(r[part][key], fmt)
                          for r in rounds)

    lines = [
        f"palyra delivery benchmark: {cfg['rounds']} rounds, {result['machine']['nproc']} CPUs,"
        f" Python {result['machine']['python']} (medians of the rounds)",
        "",
        f"throughput: {cfg['events']:,} events x {cfg['subscriptions']} subscriptions = "
        f"{cfg['events'] * cfg['subscriptions']:,} deliveries from a backlog, "
        f"{cfg['in_flight']} in flight per subscription",
        f"  {'bare':<13} {b['per_s']:7,.0f} requests/s    by round {by_round('bare', 'per_s')}; "
        f"client CPU {b['cpu_ms_per_request']:.3f} ms per request; loop on a CPU "
        f"{b['loop_on_cpu']:.0%}, waiting for one {b['loop_waiting_for_cpu']:.0%}",
    ]
    for n in cfg["workers"]:
        s = summary["by_workers"][n]
        p = s["palyra"]
        roles = ", ".join(f"{role} {value:.3f}"
                          for role, value in s["cpu_ms_per_delivery_by_role"].items())
        pss = "n/a" if p["idle_pss_mb"] is None else f"{p['idle_pss_mb']:.0f} MB"
        lines += [
            f"  {label(n):<13} {p['per_s']:7,.0f} deliveries/s  by round "
            f"{by_round(f'palyra-w{n}', 'per_s')}; x{s['ratio']:.2f} bare; published at "
            f"{p['publish_per_s']:,.0f} events/s (POST /v1/events, 32 in flight)",
            f"  {'':<13} CPU {p['cpu_ms_per_delivery']:.3f} ms per delivery over "
            f"{p['processes']:.0f} processes ({roles}; event loop of the first process "
            f"{p['loop_cpu_ms_per_delivery']:.3f}); loop on a CPU {p['loop_on_cpu']:.0%}, "
            f"waiting for one {p['loop_waiting_for_cpu']:.0%}; idle RSS "
            f"{p['idle_rss_mb']:.0f} MB, PSS {pss}",
        ]
    lines += ["", f"latency: {cfg['rate']:g} events/s for {cfg['duration_s']:g} s to 1 "
              "subscription"]
    for n in cfg["workers"]:
        lat = summary["by_workers"][n]["latency"]
        part = f"latency-w{n}"
        lines += [
            f"  {label(n)}: published at {lat['publish_per_s']:,.0f}/s (pacer behind by up to "
            f"{lat['pacer_lag_max_ms']:,.0f} ms)",
            f"    publish -> delivery: p50 {ms(lat['latency_p50_ms'])}, p90 "
            f"{ms(lat['latency_p90_ms'])}, p99 {ms(lat['latency_p99_ms'])}, max "
            f"{ms(lat['latency_max_ms'])}; p99 by round {by_round(part, 'latency_p99_ms')}",
            f"    journal timestamp -> delivery: p50 {ms(lat['journal_to_arrival_p50_ms'])}, "
            f"p99 {ms(lat['journal_to_arrival_p99_ms'])}",
            f"    POST /v1/events round trip: p50 {ms(lat['publish_rtt_p50_ms'])}, p99 "
            f"{ms(lat['publish_rtt_p99_ms'])}; daemon CPU {lat['daemon_cpu_share']:.0%} of one "
            f"core ({lat['cpu_ms_per_event']:.3f} ms per event, every process), loop on a "
            f"CPU {lat['loop_on_cpu']:.0%}, waiting for one {lat['loop_waiting_for_cpu']:.0%}",
        ]
    lines += ["", *render_targets(summary["targets"])]
    if summary["problems"]:
        lines += ["", "PROBLEMS:"] + [f"  {x}" for x in summary["problems"]]
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5000, help="events (throughput part)")
    parser.add_argument("--subscriptions", type=int, default=4, help="subscriptions")
    parser.add_argument("--in-flight", type=int, default=10,
                        help="max_in_flight per subscription (and bare workers per one)")
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s (latency part)")
    parser.add_argument("--duration", type=float, default=10.0, help="s (latency part)")
    parser.add_argument("--pad", type=int, default=200, help="filler chars in each event")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (medians)")
    parser.add_argument("--deadline", type=float, default=120.0,
                        help="longest wait for deliveries in any step, s")
    parser.add_argument("--palyra", type=Path, default=DEFAULT_PALYRA)
    parser.add_argument("--tmp-dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and logs")
    parser.add_argument("--workers", default="1", metavar="LIST",
                        help="palyra's --workers, one palyra run per item in each round, "
                        "comma-separated: counts, auto, default (no flag); e.g. 1,auto (1)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--serve-receiver", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_receiver is None:
        for name in ("events", "subscriptions", "rounds"):
            if getattr(args, name) < 1:
                parser.error(f"--{name} must be at least 1")
        if not 1 <= args.in_flight <= 100:
            parser.error("--in-flight is 1..100 (a subscription's max_in_flight)")
        if not 0 < args.rate <= 20000 or not 0 < args.duration <= 600:
            parser.error("--rate is 0..20000 and --duration 0..600 s")
        if not 0 <= args.pad <= 7000 or not 1 <= args.deadline <= 600:
            parser.error("--pad is 0..7000 and --deadline 1..600 s")
        try:
            args.workers = workers_list(args.workers)
        except ValueError as exc:
            parser.error(str(exc))
    return args


def benchmark(args: argparse.Namespace, children: Children) -> dict[str, Any]:
    load_start, started_at = list(os.getloadavg()), datetime.now(UTC)
    work = Path(tempfile.mkdtemp(prefix="palyra-bench-deliveries-", dir=args.tmp_dir))
    try:
        fsync_start = fsync_probe(work)
        port = free_port()
        receiver_log = work / "receiver.log"
        receiver = children.spawn([sys.executable, __file__, "--serve-receiver", str(port)],
                                  receiver_log)
        wait_until(lambda: port_open(port), "receiver", receiver, receiver_log)
        bench = Bench(args, work, children, port)
        rounds: list[dict[str, Any]] = []
        for index in range(args.rounds):
            rnd: dict[str, Any] = {}
            # palyra must go first once: the bare loop replays what it sent.
            palyras = [f"palyra-w{n}" for n in args.workers]
            if index % 2:
                palyras.reverse()
            order = [*palyras, "bare"] if index % 2 == 0 else ["bare", *palyras]
            for part in order:
                if part == "bare":
                    rnd["bare"] = bench.bare_throughput()
                else:
                    n = part[len("palyra-w"):]
                    rnd[part] = bench.palyra_throughput(f"r{index + 1}-w{n}", n)
            for n in args.workers:
                rnd[f"latency-w{n}"] = bench.latency(f"r{index + 1}-w{n}-latency", n)
            b = rnd["bare"]
            for n in args.workers:
                p, lat = rnd[f"palyra-w{n}"], rnd[f"latency-w{n}"]
                log(f"[round {index + 1}/{args.rounds}] {label(n)} {p['per_s']:7.0f}/s  bare"
                    f" {b['per_s']:7.0f}/s  ({p['per_s'] / b['per_s']:.2f}x)  CPU "
                    f"{p['cpu_ms_per_delivery']:.3f} ms/delivery  latency p50 "
                    f"{lat['latency_p50_ms']:.1f} ms p99 {lat['latency_p99_ms']:.1f} ms  "
                    f"{lat['received']}/{lat['published']} received")
            rounds.append(rnd)
        return {
            "started_at": started_at.isoformat(timespec="seconds"),
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, "bench/deliveries.py",
                                 *sys.argv[1:]]),
            "machine": machine(),
            "config": {"events": args.events, "subscriptions": args.subscriptions,
                       "in_flight": args.in_flight, "rate": args.rate,
                       "duration_s": args.duration, "pad": args.pad, "rounds": args.rounds,
                       "workers": args.workers, "state_fs": filesystem_of(work)},
            "rounds": rounds, "summary": summarize(rounds, args.workers),
            "fsync_start": fsync_start, "fsync_end": fsync_probe(work),
            "loadavg_start": load_start, "loadavg_end": list(os.getloadavg()),
        }
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_receiver is not None:
        serve_receiver(args.serve_receiver)
        return 0
    return run_benchmark("deliveries", args, benchmark, render)


if __name__ == "__main__":
    sys.exit(main())
