"""Command destination benchmark: signed GitHub pushes -> ``/bin/true`` once per push, in
palyra (verified, journaled, a command subscription: each run recorded with its outcome)
and in adnanh/webhook (a signed hook whose ``execute-command`` is ``/bin/true``), on
loopback, in the same run.

    .venv/bin/python bench/command_dest.py [--events 2000] [--rounds 3] [--rate 100]
                                           [--duration 10] [--json]

Per round and server: **throughput**: ``--events`` pushes sent by 32 concurrent clients,
runs per second from the first send until the last run has finished (palyra: every
delivery recorded ``succeeded``; webhook: its log says it finished every command, which
needs ``-logfile``, and that logging slows it down; its answer rate without the log is
shown too); and for palyra the **latency** at ``--rate`` pushes a second for
``--duration`` s: from the push's journal time to the end of its run (the attempt's
start plus its duration), p50 / p99. palyra runs with ``max_concurrent = 8`` for the
throughput (webhook runs its commands unbounded) and the default 1 for the latency.

On a shared machine: ``flock /tmp/bench.lock .venv/bin/python bench/command_dest.py``.
Results are printed and saved under bench/results/ (gitignored).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    DEFAULT_PALYRA,
    BenchError,
    Children,
    admin,
    free_port,
    log,
    machine,
    percentile,
    port_open,
    run_benchmark,
    start_daemon,
    wait_until,
)
from github_push import github_push_payload, github_signature

CONCURRENCY = 32
TARGETS = {"palyra/webhook runs/s": (1.0, "min"), "p99 ms at rate": (50.0, "max")}


def _headers(secret: bytes, body: bytes, delivery: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-GitHub-Event": "push",
            "X-GitHub-Delivery": delivery, "User-Agent": "GitHub-Hookshot/bench",
            "X-Hub-Signature-256": github_signature(secret, body)}


async def _send(url: str, secret: bytes, count: int, *, rate: float | None = None,
                expect: int) -> tuple[float, float, int]:
    """``count`` signed pushes (each its own delivery id and body); returns (first send
    time, last answer time, refused)."""
    import aiohttp

    base = github_push_payload()
    gate = asyncio.Semaphore(CONCURRENCY)
    refused = 0

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        nonlocal refused
        body = base[:-1] + f',"bench_n":{i}}}'.encode()
        try:
            async with session.post(url, data=body,
                                    headers=_headers(secret, body, f"bench-{i}")) as resp:
                await resp.read()
                refused += resp.status != expect
        finally:
            gate.release()

    tasks = []
    started = time.time()
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:
        for i in range(count):
            if rate is not None:
                delay = started + i / rate - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            await gate.acquire()
            tasks.append(asyncio.create_task(one(session, i)))
        await asyncio.gather(*tasks)
    return started, time.time(), refused


def _deliveries(sock: Path, status: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = f"/v1/deliveries?status={status}&limit=1000" + (
            f"&after={cursor}" if cursor else "")
        code, answer = admin(sock, "GET", query)
        if code != 200:
            raise BenchError(f"listing deliveries: {code} {answer}")
        found += answer["deliveries"]
        cursor = answer.get("next_after")
        if not cursor:
            return found


def _wait_runs(sock: Path, count: int, deadline_s: float = 300.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        code, stats = admin(sock, "GET", "/v1/deliveries/stats")
        done = (stats.get("deliveries") or {}).get("succeeded", 0) if code == 200 else 0
        failed = (stats.get("deliveries") or {}).get("failed", 0) if code == 200 else 0
        if failed:
            raise BenchError(f"{failed} runs failed")
        if done >= count:
            return time.time()
        time.sleep(0.02)
    raise BenchError(f"not every run finished within {deadline_s} s")


def _palyra(args: Any, children: Children, work: Path, tag: str, secret: bytes,
            max_concurrent: int) -> tuple[Path, str]:
    state = work / f"palyra-{tag}"
    daemon = start_daemon(children, args.palyra, state, work / f"palyra-{tag}.log",
                          workers="1")
    code, answer = admin(daemon.socket, "POST", "/v1/webhooks", {
        "integration_id": "gh", "provider": "github", "secret": {"value": secret.decode()}})
    if code != 201:
        raise BenchError(f"adding the integration: {code} {answer}")
    code, answer = admin(daemon.socket, "POST", "/v1/subscriptions", {
        "subscription_id": "true", "command": ["/bin/true", "{data.ref}"],
        "events": ["github.push"], "max_concurrent": max_concurrent})
    if code != 201:
        raise BenchError(f"adding the subscription: {code} {answer}")
    return daemon.socket, f"{daemon.ingress_url}/hooks/gh"


def _palyra_latency(sock: Path) -> list[float]:
    """Journal time of each push -> end of its run, in ms."""
    out: list[float] = []
    for delivery in _deliveries(sock, "succeeded"):
        code, shown = admin(sock, "GET", f"/v1/deliveries/{delivery['delivery_id']}")
        code_e, events = admin(sock, "GET", f"/v1/events?after_seq={delivery['event_seq'] - 1}"
                                            "&limit=1")
        if code != 200 or code_e != 200:
            raise BenchError("reading a delivery or its event")
        attempt = shown["attempts"][-1]
        journaled = events["events"][0]["ts_unix_ms"]
        out.append(attempt["started_ms"] + attempt["duration_ms"] - journaled)
    return sorted(out)


def _webhook(children: Children, work: Path, tag: str, secret: bytes, logged: bool
             ) -> tuple[str, Path]:
    port, log_path = free_port(), work / f"webhook-{tag}.log"
    hooks = work / "hooks.json"
    rule = {"match": {"type": "payload-hmac-sha256", "secret": secret.decode(),
                      "parameter": {"source": "header", "name": "X-Hub-Signature-256"}}}
    hooks.write_text(json.dumps([{"id": "github", "execute-command": "/bin/true",
                                  "http-methods": ["POST"], "response-message": "queued",
                                  "trigger-rule": rule}]))
    hooks.chmod(0o600)
    argv = ["webhook", "-hooks", str(hooks), "-ip", "127.0.0.1", "-port", str(port)]
    if logged:
        argv += ["-verbose", "-logfile", str(log_path)]
    proc = children.spawn(argv, log_path if not logged else work / f"webhook-{tag}.out")
    wait_until(lambda: port_open(port), "adnanh/webhook", proc, log_path)
    return f"http://127.0.0.1:{port}/hooks/github", log_path


def _wait_webhook_log(path: Path, count: int, deadline_s: float = 300.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        with open(path, errors="replace") as handle:
            done = sum("finished handling" in line for line in handle)
        if done >= count:
            return time.time()
        time.sleep(0.02)
    raise BenchError(f"webhook did not finish {count} commands within {deadline_s} s")


def benchmark(args: Any, children: Children) -> dict[str, Any]:
    if shutil.which("webhook") is None:
        raise BenchError("adnanh/webhook is missing: apt-get install -y webhook")
    secret = secrets.token_hex(16).encode()
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=args.tmp_dir) as tmp:
        work = Path(tmp)
        for r in range(args.rounds):
            row: dict[str, Any] = {}
            log(f"round {r + 1}: palyra throughput")
            sock, url = _palyra(args, children, work, f"t{r}", secret, 8)
            first, _, refused = asyncio.run(_send(url, secret, args.events, expect=202))
            row["palyra runs/s"] = args.events / (_wait_runs(sock, args.events) - first)
            row["palyra refused"] = refused
            children.stop_all()
            log(f"round {r + 1}: webhook throughput (logged, to see every command end)")
            url, log_path = _webhook(children, work, f"l{r}", secret, True)
            first, _, refused = asyncio.run(_send(url, secret, args.events, expect=200))
            row["webhook runs/s"] = args.events / (_wait_webhook_log(log_path, args.events)
                                                   - first)
            row["webhook refused"] = refused
            children.stop_all()
            log(f"round {r + 1}: webhook answer rate (no log)")
            url, _ = _webhook(children, work, f"n{r}", secret, False)
            first, last, _ = asyncio.run(_send(url, secret, args.events, expect=200))
            row["webhook answered/s"] = args.events / (last - first)
            children.stop_all()
            log(f"round {r + 1}: palyra latency at {args.rate}/s")
            sock, url = _palyra(args, children, work, f"p{r}", secret, 1)
            count = int(args.rate * args.duration)
            asyncio.run(_send(url, secret, count, rate=args.rate, expect=202))
            _wait_runs(sock, count)
            latency = _palyra_latency(sock)
            row["p50 ms at rate"] = percentile(latency, 50)
            row["p99 ms at rate"] = percentile(latency, 99)
            children.stop_all()
            row["palyra/webhook runs/s"] = row["palyra runs/s"] / row["webhook runs/s"]
            rounds.append(row)
    keys = list(rounds[0])
    med = {k: statistics.median(r[k] for r in rounds) for k in keys}
    checked = {}
    for key, (bound, kind) in TARGETS.items():
        ok = med[key] >= bound if kind == "min" else med[key] <= bound
        checked[key] = {"median": med[key], "target": bound, "kind": kind, "met": ok}
    return {"rounds": rounds, "medians": med, "targets": checked, "machine": machine(),
            "events": args.events, "rate": args.rate, "duration": args.duration}


def render(result: dict[str, Any]) -> str:
    lines = ["command destination: /bin/true per signed GitHub push (medians over "
             f"{len(result['rounds'])} rounds, {result['events']} pushes)"]
    for key, value in result["medians"].items():
        lines.append(f"  {key:28} {value:10.1f}")
    for key, check in result["targets"].items():
        sign = ">=" if check["kind"] == "min" else "<="
        lines.append(f"  target {key} {sign} {check['target']:g}: "
                     f"{'met' if check['met'] else 'NOT met'} ({check['median']:.2f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--palyra", type=Path, default=DEFAULT_PALYRA)
    parser.add_argument("--tmp-dir", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    return run_benchmark("command-dest", args, benchmark, render)


if __name__ == "__main__":
    sys.exit(main())
