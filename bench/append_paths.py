"""Two ways for ingress workers to append to one journal, measured side by side.

Issue 10 asks to measure both before keeping one:

- ``direct``: every worker process opens the journal file itself and appends through its
  own group-commit writer; the writers take turns on the writers' lock file and read the
  chain head inside each write transaction (what ``palyra daemon run --workers N`` does).
- ``relay``: the workers send each event over a Unix socket to one control process, which
  alone appends (one writer, larger batches) and answers with the seq once the batch is
  durable: one more hop per event, and every event serialised and parsed once more.

Each round runs both modes on a fresh file with ``--procs`` appender processes, each
keeping ``--inflight`` appends open until it has appended ``--events``. Reported per mode
(medians over rounds): events per second, CPU per event summed over every process of the
mode (each process's CPU time, every thread, from the start signal to its last append:
the appenders and, for ``relay``, the control process; start-up is left out), append
latency p50/p99 as the appender sees it, and events per fsync'd commit.
After each round the file is checked: every seq from 1 to the count present once and the
hash chain verified.

    .venv/bin/python bench/append_paths.py                     # 2 x 4,000 events, 3 rounds
    .venv/bin/python bench/append_paths.py --procs 2 --events 8000 --rounds 5 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from palyra_py.journal.journal import Journal, NewEvent
from palyra_py.journal.sqlite_journal import SqliteJournal

HERE = Path(__file__).resolve()
LINE_MAX = 1 << 20


def new_event(tag: str, index: int, payload_bytes: int) -> NewEvent:
    return NewEvent(kind="webhook.received", source="bench", integration_id="bench",
                    payload={"tag": tag, "index": index, "pad": "x" * payload_bytes})


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_appends(count: int, inflight: int,
                      append: Any) -> list[float]:
    """Append ``count`` events with ``inflight`` open at a time; the latencies in ms."""
    latencies: list[float] = []
    indexes = iter(range(count))

    async def lane() -> None:
        for index in indexes:
            started = time.perf_counter()
            await append(index)
            latencies.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(lane() for _ in range(inflight)))
    return latencies


async def direct_appender(path: Path, count: int, inflight: int, payload: int) -> None:
    journal = Journal(SqliteJournal(path, start_check_s=0, several_appenders=True))
    await journal.start()
    tag = str(os.getpid())
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    cpu = time.process_time()

    async def append(index: int) -> None:
        await journal.append(new_event(tag, index, payload))

    latencies = await run_appends(count, inflight, append)
    commits = journal.commits
    cpu = time.process_time() - cpu
    await journal.close()
    print(json.dumps({"latencies": latencies, "commits": commits, "cpu": cpu}), flush=True)


async def control(path: Path, sock_path: Path) -> None:
    journal = Journal(SqliteJournal(path, start_check_s=0))
    await journal.start()
    stopping = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def one(line: bytes) -> None:
            request = json.loads(line)
            if request.get("stop"):
                stopping.set()
                return
            result = await journal.append(NewEvent(
                kind=request["kind"], source=request["source"],
                integration_id=request["integration_id"], payload=request["payload"]))
            writer.write(b'{"id":%d,"seq":%d}\n' % (request["id"], result.seq))

        tasks: set[asyncio.Task[None]] = set()
        while line := await reader.readline():
            task = asyncio.get_running_loop().create_task(one(line))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        writer.close()

    server = await asyncio.start_unix_server(serve, path=str(sock_path), limit=LINE_MAX)
    print("ready", flush=True)
    cpu = time.process_time()
    await stopping.wait()
    server.close()
    cpu = time.process_time() - cpu
    print(json.dumps({"commits": journal.commits, "cpu": cpu}), flush=True)
    await journal.close()


async def relay_appender(sock_path: Path, count: int, inflight: int, payload: int) -> None:
    reader, writer = await asyncio.open_unix_connection(str(sock_path), limit=LINE_MAX)
    tag = str(os.getpid())
    waiting: dict[int, asyncio.Future[int]] = {}

    async def answers() -> None:
        while line := await reader.readline():
            answer = json.loads(line)
            waiting.pop(answer["id"]).set_result(answer["seq"])

    reading = asyncio.get_running_loop().create_task(answers())
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    cpu = time.process_time()

    async def append(index: int) -> None:
        event = new_event(tag, index, payload)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        waiting[index] = future
        writer.write(json.dumps({
            "id": index, "kind": event.kind, "source": event.source,
            "integration_id": event.integration_id, "payload": event.payload,
        }).encode() + b"\n")
        await future

    latencies = await run_appends(count, inflight, append)
    cpu = time.process_time() - cpu
    reading.cancel()
    writer.close()
    print(json.dumps({"latencies": latencies, "cpu": cpu}), flush=True)


def child(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(HERE), "--role", *args], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        raise RuntimeError(f"a child did not start: {line!r}")


async def create(path: Path) -> None:
    journal = Journal(SqliteJournal(path, start_check_s=0))
    await journal.start()
    await journal.close()


def check_file(path: Path, expected: int) -> None:
    async def check() -> None:
        journal = Journal(SqliteJournal(path, start_check_s=0))
        await journal.start()
        try:
            last = await journal.last_seq()
            verdict = await journal.verify()
        finally:
            await journal.close()
        if last != expected or not verdict.ok:
            raise RuntimeError(f"{path}: last seq {last} of {expected}, verify {verdict}")
    asyncio.run(check())


def one_round(mode: str, procs: int, events: int, inflight: int, payload: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="palyra-append-"))
    path = work / "journal.db"
    sock = work / "control.sock"
    controller = None
    try:
        if mode == "relay":
            controller = child("control", str(path), str(sock))
            ready(controller)
            appenders = [child("relay", str(sock), str(events), str(inflight), str(payload))
                         for _ in range(procs)]
        else:
            asyncio.run(create(path))  # as the control process does before its workers start
            appenders = [child("direct", str(path), str(events), str(inflight), str(payload))
                         for _ in range(procs)]
        for proc in appenders:
            ready(proc)
        started = time.perf_counter()
        for proc in appenders:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in appenders:
            assert proc.stdout is not None
            results.append(json.loads(proc.stdout.readline()))
        elapsed = time.perf_counter() - started
        for proc in appenders:
            proc.wait()
        commits = sum(r.get("commits", 0) for r in results)
        cpu = sum(r["cpu"] for r in results)
        if controller is not None:
            assert controller.stdin is not None and controller.stdout is not None
            with socket_client(sock) as stop:
                stop.sendall(b'{"stop":true}\n')
            control_figures = json.loads(controller.stdout.readline())
            commits, cpu = control_figures["commits"], cpu + control_figures["cpu"]
            controller.wait()
        total = procs * events
        check_file(path, total)
        latencies = [v for r in results for v in r["latencies"]]
        return {"mode": mode, "events_per_s": total / elapsed,
                "cpu_us_per_event": cpu / total * 1e6,
                "p50_ms": percentile(latencies, 0.5), "p99_ms": percentile(latencies, 0.99),
                "events_per_commit": total / max(1, commits)}
    finally:
        if controller is not None and controller.poll() is None:
            controller.kill()
        shutil.rmtree(work, ignore_errors=True)


def socket_client(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    return sock


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--procs", type=int, default=2, help="appender processes (2)")
    parser.add_argument("--events", type=int, default=4000, help="events per appender (4000)")
    parser.add_argument("--inflight", type=int, default=16, help="open appends per appender (16)")
    parser.add_argument("--payload", type=int, default=1500, help="padding bytes per event (1500)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, both modes each (3)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        role, *rest = args.role
        if role == "direct":
            asyncio.run(direct_appender(Path(rest[0]), int(rest[1]), int(rest[2]), int(rest[3])))
        elif role == "control":
            asyncio.run(control(Path(rest[0]), Path(rest[1])))
        else:
            asyncio.run(relay_appender(Path(rest[0]), int(rest[1]), int(rest[2]), int(rest[3])))
        return 0
    rounds: list[dict[str, Any]] = []
    for number in range(args.rounds):
        for mode in (("direct", "relay") if number % 2 == 0 else ("relay", "direct")):
            result = one_round(mode, args.procs, args.events, args.inflight, args.payload)
            print(f"round {number + 1} {mode:6}: {result['events_per_s']:8.0f} ev/s  "
                  f"{result['cpu_us_per_event']:6.1f} us CPU/event  p50 {result['p50_ms']:.1f} ms"
                  f"  p99 {result['p99_ms']:.1f} ms  {result['events_per_commit']:.1f} ev/commit",
                  file=sys.stderr, flush=True)
            rounds.append(result)
    summary = {}
    for mode in ("direct", "relay"):
        mine = [r for r in rounds if r["mode"] == mode]
        summary[mode] = {key: statistics.median(r[key] for r in mine)
                         for key in mine[0] if key != "mode"}
    if args.json:
        print(json.dumps({"args": vars(args), "rounds": rounds, "medians": summary}, indent=2))
    else:
        print(f"medians of {args.rounds} rounds, {args.procs} appenders x {args.events} events, "
              f"{args.inflight} in flight each")
        for mode, figures in summary.items():
            print(f"  {mode:6}: {figures['events_per_s']:8.0f} ev/s  "
                  f"{figures['cpu_us_per_event']:6.1f} us CPU/event  p50 {figures['p50_ms']:.1f} ms"
                  f"  p99 {figures['p99_ms']:.1f} ms  {figures['events_per_commit']:.1f} ev/commit")
        ratio = summary["relay"]["cpu_us_per_event"] / summary["direct"]["cpu_us_per_event"]
        print(f"  relay / direct CPU per event: {ratio:.2f}x; throughput "
              f"{summary['relay']['events_per_s'] / summary['direct']['events_per_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
