"""Live stream benchmark: a thousand SSE clients on the admin socket while events are
published at a fixed rate; event -> client latency, completeness, daemon RSS; and whether a
client that stops reading is sent ``stream.overflow``.

    .venv/bin/python bench/sse.py [--clients 1000] [--processes 2] [--rate 200]
                                  [--duration 10] [--rounds 3] [--json]

What is measured and how to read it: bench/README.md. Results are printed and saved under
bench/results/ (gitignored). Everything runs on the Unix socket; every child process is
stopped on exit (and killed by the kernel if this script dies).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import operator
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import (
    DEFAULT_PALYRA,
    BenchError,
    Children,
    DaemonProc,
    Window,
    check_targets,
    cpu_seconds,
    filesystem_of,
    fsync_probe,
    log,
    machine,
    medians,
    ms,
    open_fds,
    percentile,
    publish_events,
    raise_nofile_limit,
    render_targets,
    run_benchmark,
    start_daemon,
    tree_memory,
    tree_pids,
)

EVENT_TYPE = "bench.sse"
FLOOD_TYPE = "bench.flood"
TARGETS = {"latency p99 ms": (100.0, "max"), "clients with every event": (1.0, "min")}


# -- a client process (--client): N streams, one event loop --------------------------------


class Stream:
    """One SSE connection's tally. Events arrive in seq order, so a CRC over the seqs in
    arrival order proves the client got exactly the published sequence."""

    def __init__(self) -> None:
        self.count = 0
        self.crc = 0
        self.last_seq = 0
        self.out_of_order = 0
        self.overflow = False
        self.closed = False
        self.latency = array.array("d")


SENT_AT = re.compile(rb'"sent_at":([^,}]*)')
FRAME_ID = re.compile(rb"id: (\d+)\n")


def parse_frames(stream: Stream, frames: bytes, now: float) -> None:
    """Tally ``frames``: whole SSE frames that arrived together at ``now``."""
    # The clients share the CPUs with the daemon and read 200,000 frames a second at the
    # defaults. Reads carry many frames each, so whole-read C-level scans (about 2 us a
    # frame here, against 4 to 8 us for a Python loop over the frames) keep the clients
    # from starving the daemon they measure. Anything unusual takes the frame-by-frame way.
    ids = FRAME_ID.findall(frames)
    sent = SENT_AT.findall(frames)
    if len(ids) != len(sent) or b"event: stream.overflow" in frames:
        parse_each(stream, frames.split(b"\n\n"), now)
        return
    if not ids:
        return
    seqs = list(map(int, ids))
    last = stream.last_seq
    if seqs[0] <= last or not all(map(operator.lt, seqs, seqs[1:])):
        for seq in seqs:
            stream.out_of_order += seq <= last
            last = seq
    stream.last_seq = seqs[-1]
    stream.count += len(seqs)
    # The same bytes as seq.to_bytes(8, "big") one by one, in one call.
    stream.crc = zlib.crc32(struct.pack(f">{len(seqs)}Q", *seqs), stream.crc)
    stream.latency.extend([(now - at) * 1000 for at in map(float, sent)])


def parse_each(stream: Stream, frames: list[bytes], now: float) -> None:
    for frame in frames:
        if frame.startswith(b"id: "):
            seq = int(frame[4:frame.index(b"\n")])
            if seq <= stream.last_seq:
                stream.out_of_order += 1
            stream.last_seq = seq
            stream.count += 1
            stream.crc = zlib.crc32(seq.to_bytes(8, "big"), stream.crc)
            sent_at = SENT_AT.search(frame)
            if sent_at is not None:
                stream.latency.append((now - float(sent_at[1])) * 1000)
        elif frame.startswith(b"event: stream.overflow"):
            stream.overflow = True


class StreamProtocol(asyncio.Protocol):
    """One stream on its own socket: the request, the response head, the chunked body
    (RFC 9112 section 7.1) decoded as it comes and cut into SSE frames. A plain protocol
    rather than aiohttp's client: that one costs a task wake-up and a StreamReader round per
    read, which at 1,000 streams took more CPU than the daemon's whole fan-out on the same
    two CPUs, so the clients measured mostly themselves."""

    def __init__(self, stream: Stream, request: bytes, ready: asyncio.Future[bool]) -> None:
        self.stream, self.request, self.ready = stream, request, ready
        self.transport: asyncio.Transport | None = None
        self.head: bytes | None = b""  # None once the response head is read
        self.chunked = False
        self.raw = b""  # chunked framing not decoded yet
        self.left = 0  # data bytes of the current chunk still to come
        self.crlf = 0  # bytes of the CRLF after that chunk's data still to come
        self.body = b""  # decoded, not yet a whole frame
        self.ended = False  # the last chunk came

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stream.closed = True
        if not self.ready.done():
            self.ready.set_exception(BenchError("the stream ended before any data"))

    def fail(self, message: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(BenchError(message))
        assert self.transport is not None
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if self.head is not None:
            head = self.head + data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                self.head = head
                if len(head) > 65536:
                    self.fail("response head too long")
                return
            self.head, data = None, head[end + 4:]
            status_line, *fields = head[:end].split(b"\r\n")
            if status_line.split(b" ", 2)[1:2] != [b"200"]:
                self.fail(f"stream answered {status_line[:40]!r}")
                return
            for field in fields:
                name, _, value = field.partition(b":")
                if name.strip().lower() == b"transfer-encoding":
                    self.chunked = b"chunked" in value.lower()
        body = self.dechunk(data) if self.chunked else data
        if not body:
            return
        if not self.ready.done():
            self.ready.set_result(True)
        buf = self.body + body
        end = buf.rfind(b"\n\n")
        if end < 0:
            self.body = buf
            return
        self.body = buf[end + 2:]
        parse_frames(self.stream, buf[:end + 2], now)

    def dechunk(self, data: bytes) -> bytes:
        if self.ended:
            return b""
        raw = self.raw + data if self.raw else data
        out: list[bytes] = []
        pos, size = 0, len(raw)
        while pos < size:
            if self.left or self.crlf:  # a chunk that began in an earlier read
                take = min(self.left, size - pos)
                out.append(raw[pos:pos + take])
                pos += take
                self.left -= take
                skip = min(self.crlf, size - pos) if not self.left else 0
                pos += skip
                self.crlf -= skip
                continue
            eol = raw.find(b"\r\n", pos)
            if eol < 0:
                break
            length = int(raw[pos:eol].split(b";", 1)[0], 16)
            if length == 0:  # the last chunk: the stream ended
                assert self.transport is not None
                self.transport.close()
                self.ended = True
                pos = size
                break
            start, stop = eol + 2, eol + 2 + length
            if stop + 2 <= size:  # the whole chunk is here: the usual case
                if raw[stop:stop + 2] != b"\r\n":
                    self.fail("bad chunk framing")
                    return b""
                out.append(raw[start:stop])
                pos = stop + 2
            else:
                pos, self.left, self.crlf = start, length, 2
        self.raw = raw[pos:]
        return b"".join(out)


async def run_client(sock: Path, count: int, event_type: str, out: Path) -> tuple[
        list[Stream], int]:
    """Connect ``count`` streams, say so in ``<out>.ready``, tally events until told the
    last seq on stdin (or the grace time is up); return the streams and that seq."""
    raise_nofile_limit()
    loop = asyncio.get_running_loop()
    streams = [Stream() for _ in range(count)]
    ready: list[asyncio.Future[bool]] = [loop.create_future() for _ in range(count)]
    transports: list[asyncio.BaseTransport] = []
    gate = asyncio.Semaphore(50)  # connect in waves: the socket's listen backlog is finite
    request = (f"GET /v1/events/stream?type={event_type} HTTP/1.1\r\nHost: palyra\r\n"
               "Accept: text/event-stream\r\n\r\n").encode()

    async def connect(index: int) -> None:
        async with gate:
            try:
                transport, _ = await asyncio.wait_for(loop.create_unix_connection(
                    lambda: StreamProtocol(streams[index], request, ready[index]), str(sock)),
                    30)
            except (OSError, TimeoutError) as exc:
                streams[index].closed = True
                ready[index].set_exception(exc)
                return
            transports.append(transport)
            await asyncio.wait([ready[index]])  # the head and the first bytes

    try:
        await asyncio.gather(*(connect(i) for i in range(count)))
        done = await asyncio.gather(*ready, return_exceptions=True)
        failed = [repr(x) for x in done if x is not True]
        write_atomic(out.with_suffix(".ready"), {"ok": count - len(failed), "failed": failed[:5]})
        # The orchestrator writes "END <last seq> <grace s>" once it has published.
        line = await asyncio.to_thread(sys.stdin.readline)
        _, end_seq, grace = line.split()
        deadline = time.monotonic() + float(grace)
        # A 50 ms poll over all streams costs nothing next to the streams themselves.
        while time.monotonic() < deadline and not all(  # noqa: ASYNC110
                s.closed or s.overflow or s.last_seq >= int(end_seq) for s in streams):
            await asyncio.sleep(0.05)
    finally:
        for transport in transports:
            transport.close()
    return streams, int(end_seq)


def write_client_results(streams: list[Stream], end_seq: int, out: Path) -> None:
    # Per event (index in seq order): the latest arrival over this process's streams.
    complete = [s for s in streams if s.count and s.last_seq >= end_seq]
    slowest = array.array("d", (max(v) for v in zip(*(s.latency for s in complete),
                                                   strict=False)) if complete else ())
    with open(out.with_suffix(".lat"), "wb") as raw:
        for stream in streams:
            stream.latency.tofile(raw)
    with open(out.with_suffix(".slowest"), "wb") as raw:
        slowest.tofile(raw)
    write_atomic(out, {
        "streams": [{"count": s.count, "crc": s.crc, "last_seq": s.last_seq,
                     "out_of_order": s.out_of_order, "overflow": s.overflow} for s in streams],
        "cpu_s": time.process_time(),
    })


def write_atomic(path: Path, doc: Any) -> None:
    """The orchestrator polls for ``path``: it must never see it half written."""
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(doc))
    os.replace(part, path)


def ms_or_na(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} MB"


# -- the orchestrator ---------------------------------------------------------------------


class RssSampler(threading.Thread):
    """RSS of the daemon's process tree (every process: with workers, all of them), every
    ``every_s``."""

    def __init__(self, pid: int, every_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.samples = [tree_memory(pid)["rss_mb"]]
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.every_s):
            with contextlib.suppress(OSError, BenchError):
                self.samples.append(tree_memory(self.pid)["rss_mb"])


def sse_gauge(daemon: DaemonProc) -> float | None:
    with urllib.request.urlopen(f"{daemon.ingress_url}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("palyra_sse_clients "):
                return float(line.split()[1])
    return None


def spawn_client(children: Children, work: Path, daemon: DaemonProc, name: str, count: int,
                 event_type: str) -> tuple[subprocess.Popen[bytes], Path]:
    out = work / f"{name}.json"
    argv = [sys.executable, __file__, "--client", str(daemon.socket), "--count", str(count),
            "--type", event_type, "--out", str(out)]
    proc = children.spawn(argv, work / f"{name}.log", stdin=subprocess.PIPE, many_files=True)
    return proc, out


def wait_file(path: Path, proc: subprocess.Popen[bytes], deadline_s: float) -> Any:
    start = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            raise BenchError(f"client {path.stem} exited ({proc.returncode}); see its log")
        if time.monotonic() - start > deadline_s:
            raise BenchError(f"client {path.stem}: no {path.suffix} file in {deadline_s} s")
        time.sleep(0.05)
    return json.loads(path.read_text())


def send_end(proc: subprocess.Popen[bytes], end_seq: int, grace_s: float) -> None:
    assert proc.stdin is not None
    proc.stdin.write(f"END {end_seq} {grace_s}\n".encode())
    proc.stdin.flush()


def one_round(args: argparse.Namespace, work: Path, children: Children, tag: str) -> dict[str, Any]:
    settings = {"PALYRA_STREAM_MAX_CLIENTS": str(max(2000, args.clients + 10)),
                "PALYRA_METRICS_PUBLIC": "true"}  # sse_gauge scrapes without a token
    daemon = start_daemon(children, args.palyra, work / f"state-{tag}", work / f"palyra-{tag}.log",
                          settings=settings, many_files=True)
    clients: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        idle = tree_memory(daemon.pid)  # every process of the daemon
        rss_idle = idle["rss_mb"]
        shares = [args.clients // args.processes + (i < args.clients % args.processes)
                  for i in range(args.processes)]
        clients = [spawn_client(children, work, daemon, f"{tag}-c{i}", n, EVENT_TYPE)
                   for i, n in enumerate(shares)]
        stalled, stalled_out = spawn_client(children, work, daemon, f"{tag}-stalled", 1,
                                            "bench.*")
        connected = sum(wait_file(out.with_suffix(".ready"), proc, 120)["ok"]
                        for proc, out in clients)
        wait_file(stalled_out.with_suffix(".ready"), stalled, 60)
        if connected != args.clients:
            raise BenchError(f"only {connected} of {args.clients} streams connected")
        gauge = sse_gauge(daemon)
        rss_connected = tree_memory(daemon.pid)["rss_mb"]
        fds = sum(open_fds(pid) for pid in tree_pids(daemon.pid))
        stalled.send_signal(signal.SIGSTOP)  # a client that stops reading, from now on
        clients_cpu0 = sum(cpu_seconds(p.pid) for p, _ in clients)
        sampler = RssSampler(daemon.pid)
        sampler.start()
        window = Window(daemon.pid)
        count = int(args.rate * args.duration)
        published = asyncio.run(publish_events(
            daemon.socket, EVENT_TYPE, count, lambda i: {"i": i}, rate=args.rate,
            concurrency=64, deadline_s=args.duration + 60))
        end_seq = max(published.seqs, default=0)
        for proc, _ in clients:
            send_end(proc, end_seq, args.grace)
        reports = [wait_file(out, proc, args.grace + 60) for proc, out in clients]
        # From the first publish until every client had all (or gave up): the daemon's
        # work includes whatever backlog it still had when publishing stopped.
        used = window.close()
        sampler.halt.set()
        sampler.join()
        result = summarize_round(clients, reports, published.seqs)
        frames = max(1, result["frames"])
        clients_cpu = sum(r["cpu_s"] for r in reports) - clients_cpu0
        result.update({
            "published": len(published.seqs), "publish_failures": published.failures,
            "publish_per_s": published.rate, "pacer_lag_max_ms": published.lag_max_ms,
            "publish_rtt_p99_ms": percentile(sorted(published.rtt_ms), 99),
            "sse_clients_gauge": gauge, "daemon_fds": fds,
            "rss_idle_mb": rss_idle, "pss_idle_mb": idle["pss_mb"],
            "processes": idle["count"], "rss_connected_mb": rss_connected,
            "rss_during_max_mb": max(sampler.samples),
            "rss_after_mb": tree_memory(daemon.pid)["rss_mb"],
            "window": used, "window_s": used["wall_s"],
            "daemon_cpu_share": used["cpu_s"] / used["wall_s"],
            "loop_on_cpu": used["loop_on_cpu"],
            "loop_waiting_for_cpu": used["loop_waiting_for_cpu"],
            "daemon_cpu_us_per_frame": used["cpu_s"] * 1e6 / frames,
            "clients_cpu_share": clients_cpu / used["wall_s"],
            "clients_cpu_us_per_frame": clients_cpu * 1e6 / frames,
        })
        result["overflow"] = check_overflow(args, daemon, stalled, stalled_out)
        return result
    finally:
        for proc, _ in clients:
            children.stop(proc)
        children.stop_all()


def summarize_round(clients: list[tuple[subprocess.Popen[bytes], Path]],
                    reports: list[dict[str, Any]], seqs: list[int]) -> dict[str, Any]:
    crc = 0
    for seq in sorted(seqs):  # the order of the commits, which the streams follow
        crc = zlib.crc32(seq.to_bytes(8, "big"), crc)
    streams = [s for r in reports for s in r["streams"]]
    complete = sum(s["count"] == len(seqs) and s["crc"] == crc for s in streams)
    latency, slowest = array.array("d"), array.array("d")
    for _, out in clients:
        latency.frombytes(out.with_suffix(".lat").read_bytes())
        part = array.array("d", out.with_suffix(".slowest").read_bytes())
        slowest = part if not slowest else array.array(
            "d", (max(a, b) for a, b in zip(slowest, part, strict=False)))
    ordered, last = sorted(latency), sorted(slowest)
    counts = [s["count"] for s in streams]
    return {
        "clients": len(streams), "clients_complete": complete, "frames": sum(counts),
        "complete_share": complete / max(1, len(streams)),
        "events_min": min(counts), "events_max": max(counts),
        "clients_overflowed": sum(s["overflow"] for s in streams),
        "out_of_order": sum(s["out_of_order"] for s in streams),
        "samples": len(ordered),
        "latency_p50_ms": percentile(ordered, 50), "latency_p90_ms": percentile(ordered, 90),
        "latency_p99_ms": percentile(ordered, 99), "latency_max_ms": ordered[-1] if ordered
        else None,
        "all_clients_p50_ms": percentile(last, 50), "all_clients_p99_ms": percentile(last, 99),
    }


def check_overflow(args: argparse.Namespace, daemon: DaemonProc,
                   stalled: subprocess.Popen[bytes], out: Path) -> dict[str, Any]:
    """The stopped client has missed every event so far; publish its buffer's worth more,
    let it read again and see whether the stream says ``stream.overflow`` and ends."""
    flood = asyncio.run(publish_events(daemon.socket, FLOOD_TYPE, args.flood,
                                       lambda i: {"i": i}, concurrency=32))
    stalled.send_signal(signal.SIGCONT)
    end_seq = flood.seqs[-1] if flood.seqs else 0
    send_end(stalled, end_seq, args.grace)
    report = wait_file(out, stalled, args.grace + 60)["streams"][0]
    return {"flood_events": len(flood.seqs), "overflow_seen": report["overflow"],
            "events_before_overflow": report["count"], "last_seq": report["last_seq"]}


# -- summary, output, main ----------------------------------------------------------------


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    med = medians(rounds)
    values = {"latency p99 ms": med["latency_p99_ms"],
              "clients with every event": min(r["complete_share"] for r in rounds)}
    return {"medians": med, "targets": check_targets(values, TARGETS),
            "overflow_seen": [r["overflow"]["overflow_seen"] for r in rounds]}


def render(result: dict[str, Any]) -> str:
    cfg, summary, rounds = result["config"], result["summary"], result["rounds"]
    m = summary["medians"]
    lines = [
        f"palyra SSE benchmark: {cfg['clients']} clients in {cfg['processes']} processes, "
        f"{cfg['rate']:g} events/s for {cfg['duration_s']:g} s, {cfg['rounds']} rounds, "
        f"{result['machine']['nproc']} CPUs (medians of the rounds)",
        "",
        f"published {m['published']:,.0f} events ({m['publish_per_s']:.0f}/s); clients with "
        "every event, in order: " + " / ".join(
            f"{r['clients_complete']}/{r['clients']}" for r in rounds) + " by round",
        f"events per client: min {m['events_min']:,.0f}, max {m['events_max']:,.0f}; clients "
        f"sent stream.overflow: " + " / ".join(str(r["clients_overflowed"]) for r in rounds),
        f"event -> client latency: p50 {ms(m['latency_p50_ms'])}, p90 {ms(m['latency_p90_ms'])}"
        f", p99 {ms(m['latency_p99_ms'])}, max {ms(m['latency_max_ms'])}; p99 by round "
        + " / ".join(ms(r["latency_p99_ms"]) for r in rounds),
        f"event -> the last client to get it (complete clients only): p50 "
        f"{ms(m['all_clients_p50_ms'])}, p99 {ms(m['all_clients_p99_ms'])}",
        f"daemon RSS (all its {m['processes']:.0f} processes): idle {m['rss_idle_mb']:.1f} MB"
        f" (PSS {ms_or_na(m['pss_idle_mb'])}), {cfg['clients']} clients connected "
        f"{m['rss_connected_mb']:.1f} MB, during the load max {m['rss_during_max_mb']:.1f} MB,"
        f" after {m['rss_after_mb']:.1f} MB",
        f"daemon CPU: {m['daemon_cpu_us_per_frame']:.1f} us per event per client; its event "
        f"loop on a CPU {m['loop_on_cpu']:.0%} and waiting for one {m['loop_waiting_for_cpu']:.0%}"
        f" of the {m['window_s']:.1f} s from first publish to last client done",
        f"client processes: {m['clients_cpu_us_per_frame']:.1f} us CPU per event per client, "
        f"{m['clients_cpu_share']:.0%} of one core; POST /v1/events p99 "
        f"{ms(m['publish_rtt_p99_ms'])}; pacer lag max {m['pacer_lag_max_ms']:.0f} ms",
        "stopped client: " + "; ".join(
            ("stream.overflow after " if r["overflow"]["overflow_seen"] else "NO overflow after ")
            + f"{r['overflow']['events_before_overflow']} events" for r in rounds),
        "", *render_targets(summary["targets"]),
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000, help="SSE clients")
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--rate", type=float, default=200.0, help="events/s")
    parser.add_argument("--duration", type=float, default=10.0, help="s of publishing")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (medians)")
    parser.add_argument("--grace", type=float, default=30.0,
                        help="s the clients may take to receive the last event")
    parser.add_argument("--flood", type=int, default=1500,
                        help="events published for the stopped client after the load")
    parser.add_argument("--palyra", type=Path, default=DEFAULT_PALYRA)
    parser.add_argument("--tmp-dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and logs")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--client", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--type", default=EVENT_TYPE, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client is None:
        if not 1 <= args.processes <= 16 or not args.processes <= args.clients <= 10000:
            parser.error("--processes is 1..16 and --clients from --processes to 10000")
        if not 0 < args.rate <= 5000 or not 0 < args.duration <= 600 or args.rounds < 1:
            parser.error("--rate is 0..5000, --duration 0..600 s, --rounds at least 1")
        if not 1 <= args.grace <= 600 or not 0 <= args.flood <= 100_000:
            parser.error("--grace is 1..600 s and --flood 0..100000")
    return args


def benchmark(args: argparse.Namespace, children: Children) -> dict[str, Any]:
    load_start, started_at = list(os.getloadavg()), datetime.now(UTC)
    work = Path(tempfile.mkdtemp(prefix="palyra-bench-sse-", dir=args.tmp_dir))
    try:
        fsync_start = fsync_probe(work)
        rounds = []
        for index in range(args.rounds):
            rnd = one_round(args, work, children, f"r{index + 1}")
            log(f"[round {index + 1}/{args.rounds}] {rnd['clients_complete']}/{rnd['clients']} "
                f"clients complete  latency p50 {rnd['latency_p50_ms']:.1f} ms p99 "
                f"{rnd['latency_p99_ms']:.1f} ms  RSS {rnd['rss_connected_mb']:.0f} -> "
                f"{rnd['rss_during_max_mb']:.0f} MB  overflow seen "
                f"{rnd['overflow']['overflow_seen']}")
            rounds.append(rnd)
        return {
            "started_at": started_at.isoformat(timespec="seconds"),
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, "bench/sse.py", *sys.argv[1:]]),
            "machine": machine(),
            "config": {"clients": args.clients, "processes": args.processes,
                       "rate": args.rate, "duration_s": args.duration, "rounds": args.rounds,
                       "flood": args.flood, "state_fs": filesystem_of(work),
                       "nofile_limit": raise_nofile_limit()},
            "rounds": rounds, "summary": summarize(rounds),
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
    if args.client is not None:
        streams, end_seq = asyncio.run(run_client(args.client, args.count, args.type,
                                                  args.out))
        write_client_results(streams, end_seq, args.out)
        return 0
    return run_benchmark("sse", args, benchmark, render)


if __name__ == "__main__":
    sys.exit(main())
