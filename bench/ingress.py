"""Ingress benchmark: palyra's full ingress path against a bare aiohttp handler and
adnanh/webhook, with wrk on loopback; plus idle RSS, CLI round trip and journal batching.

    .venv/bin/python bench/ingress.py [--duration 15] [--warmup 3] [--rounds 3] [--json]

What each variant is, and how to read the numbers: bench/README.md. Results are printed and
saved under bench/results/ (gitignored). Everything listens on 127.0.0.1 only; every child
process is stopped on exit (and killed by the kernel if this script dies).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import (
    BenchError,
    Children,
    admin,
    cpu_model,
    cpu_ticks,
    daemon_env,
    die_with_parent,
    filesystem_of,
    install_sigterm_exit,
    log,
    rss_mb,
    save_result,
    thread_ticks,
)
from github_push import github_push_payload
from ingress_servers import (
    EXPECTED_STATUS,
    INTEGRATION_ID,
    STARTERS,
    Run,
    Server,
    children_minor_faults,
    count_webhook_log,
    serve_bare,
    start_palyra,
    verify,
    wait_idle,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LUA = HERE / "wrk_github.lua"
INSTALL_LINE = "apt-get install -y wrk webhook"
VARIANTS = ("bare", "palyra", "webhook")
TARGETS = {  # name: (limit, "min" = at least / "max" = at most)
    "palyra/bare req/s": (0.5, "min"),
    "palyra/webhook req/s": (2.0, "min"),
    "palyra p99 ms": (10.0, "max"),
    "palyra idle RSS MB": (80.0, "max"),
    "webhooks list median ms": (150.0, "max"),
}


# -- wrk ---------------------------------------------------------------------------------


def run_wrk(run: Run, server: Server, args: argparse.Namespace, seconds: int) -> dict[str, Any]:
    tag = secrets.token_hex(4)  # new delivery ids for every run: no replays between runs
    argv = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s",
            "--timeout", "10s", "--latency", "-s", str(LUA), server.url, "--",
            str(run.body_file), str(run.secret_file), tag, str(EXPECTED_STATUS[server.variant])]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60,
                          check=False, preexec_fn=die_with_parent)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr[-500:]}")
    result: dict[str, Any] = json.loads(line.split(" ", 1)[1])
    lat = result.pop("latency_us")
    duration_s = result["duration_us"] / 1e6
    result.update(
        rps=result["requests"] / duration_s, duration_s=duration_s,
        p50_ms=lat["p50"] / 1000, p90_ms=lat["p90"] / 1000, p99_ms=lat["p99"] / 1000,
        mean_ms=lat["mean"] / 1000, max_ms=lat["max"] / 1000,
        socket_errors=sum(v for k, v in result["errors"].items() if k != "status"),
    )
    return result


def measure_variant(run: Run, variant: str, tag: str, args: argparse.Namespace) -> dict[str, Any]:
    server = STARTERS[variant](run, tag)
    try:
        out: dict[str, Any] = {"verify": verify(run, server)}
        out["idle_rss_mb"] = rss_mb(server.pid)
        # webhook answers before its command runs: let a backlog finish, bounded.
        drain_limit = 30.0 + 4 * args.duration
        if args.warmup > 0:
            run_wrk(run, server, args, args.warmup)
            wait_idle(server.pid, drain_limit)
        before = admin(server.socket, "GET", "/v1/status")[1] if variant == "palyra" else None
        faults = children_minor_faults(server.pid)
        ticks, loop_ticks = cpu_ticks(server.pid), thread_ticks(server.pid, server.pid)
        log_offset = server.log_path.stat().st_size
        out["wrk"] = run_wrk(run, server, args, args.duration)
        out["drain_s"] = round(wait_idle(server.pid, drain_limit), 2)
        # CPU per request is steadier than req/s on a shared machine: it does not depend on
        # how much CPU wrk and the neighbours left over.
        hz, served = os.sysconf("SC_CLK_TCK"), max(1, out["wrk"]["requests"])
        out["cpu_ms_per_request"] = (cpu_ticks(server.pid) - ticks) * 1000 / hz / served
        if variant == "palyra":  # its event loop is the main thread (Go's is not)
            out["loop_cpu_ms_per_request"] = (
                (thread_ticks(server.pid, server.pid) - loop_ticks) * 1000 / hz / served
            )
        if server.log_is_verbose:
            out["webhook_log"] = count_webhook_log(server.log_path, log_offset)
        out["rss_after_mb"] = rss_mb(server.pid)
        out["rss_peak_mb"] = rss_mb(server.pid, "VmHWM")
        if server.faults_per_command:
            ran = (children_minor_faults(server.pid) - faults) / server.faults_per_command
            out["commands_run_estimate"] = round(ran)
        if before is not None:
            after = admin(server.socket, "GET", "/v1/status")[1]
            commits = after["journal"]["commits"] - before["journal"]["commits"]
            events = after["journal"]["last_seq"] - before["journal"]["last_seq"]
            accepted = (after["ingress"]["answers"].get("accepted", 0)
                        - before["ingress"]["answers"].get("accepted", 0))
            out["journal"] = {"commits": commits, "events": events, "accepted": accepted,
                              "events_per_commit": events / commits if commits else None}
        return out
    finally:
        run.children.stop(server.proc)


# -- the CLI round trip ------------------------------------------------------------------


def timed(
    argv: Sequence[str], env: dict[str, str]
) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    done = subprocess.run(list(argv), capture_output=True, text=True, env=env, timeout=60,
                          check=False)
    return (time.perf_counter() - start) * 1000, done


def measure_cli(run: Run, runs: int) -> dict[str, Any]:
    server = start_palyra(run, "cli")
    try:
        env = daemon_env()
        cli = [str(run.palyra), "webhooks", "list", "--state-dir", str(server.state_dir)]
        baseline = [sys.executable, "-c", "pass"]
        _, first = timed(cli, env)  # also warms the page cache for both
        timed(baseline, env)
        if first.returncode != 0 or INTEGRATION_ID not in first.stdout:
            raise BenchError(f"webhooks list failed ({first.returncode}): {first.stderr[-300:]}")
        cli_ms, base_ms = [], []
        for _ in range(runs):  # interleaved, so that noise hits both alike
            cli_ms.append(timed(cli, env)[0])
            base_ms.append(timed(baseline, env)[0])
        cli_med, base_med = statistics.median(cli_ms), statistics.median(base_ms)
        return {"runs": runs, "webhooks_list_ms": cli_ms, "python_pass_ms": base_ms,
                "webhooks_list_median_ms": cli_med, "python_pass_median_ms": base_med,
                "ratio": cli_med / base_med, "python": sys.executable}
    finally:
        run.children.stop(server.proc)


# -- summary -----------------------------------------------------------------------------


def median_of(rounds: list[dict[str, Any]], variant: str, *path: str) -> float:
    values = []
    for rnd in rounds:
        value: Any = rnd[variant]
        for key in path:
            value = value[key]
        values.append(value)
    return float(statistics.median(values))


def summarize(rounds: list[dict[str, Any]], cli: dict[str, Any] | None) -> dict[str, Any]:
    med = {
        v: {key: median_of(rounds, v, "wrk", key) for key in ("rps", "p50_ms", "p99_ms")}
        | {"idle_rss_mb": median_of(rounds, v, "idle_rss_mb"),
           "cpu_ms_per_request": median_of(rounds, v, "cpu_ms_per_request"),
           "rss_after_mb": median_of(rounds, v, "rss_after_mb"),
           "non2xx_total": sum(r[v]["wrk"]["non2xx"] for r in rounds),
           "unexpected_total": sum(r[v]["wrk"]["unexpected"] for r in rounds),
           "socket_errors_total": sum(r[v]["wrk"]["socket_errors"] for r in rounds)}
        for v in VARIANTS
    }
    med["palyra"]["loop_cpu_ms_per_request"] = median_of(rounds, "palyra",
                                                        "loop_cpu_ms_per_request")
    hooks = [r["webhook"] for r in rounds]
    webhook = {
        "drain_s": statistics.median(h["drain_s"] for h in hooks),
        "answers": statistics.median(h["wrk"]["requests"] for h in hooks),
        "commands_run_estimate": statistics.median(h["commands_run_estimate"] for h in hooks),
        "commands_run_share": statistics.median(
            h["commands_run_estimate"] / max(1, h["wrk"]["requests"]) for h in hooks
        ),
    }
    journals = [r["palyra"]["journal"] for r in rounds]
    commits, events = sum(j["commits"] for j in journals), sum(j["events"] for j in journals)
    values = {
        "palyra/bare req/s": med["palyra"]["rps"] / med["bare"]["rps"],
        "palyra/webhook req/s": med["palyra"]["rps"] / med["webhook"]["rps"],
        "palyra p99 ms": med["palyra"]["p99_ms"],
        "palyra idle RSS MB": med["palyra"]["idle_rss_mb"],
    }
    if cli is not None:
        values["webhooks list median ms"] = cli["webhooks_list_median_ms"]
    targets = []
    for name, value in values.items():
        limit, kind = TARGETS[name]
        met = value >= limit if kind == "min" else value <= limit
        targets.append({"name": name, "value": value, "target": limit,
                        "kind": "at least" if kind == "min" else "at most", "met": met})
    return {
        "medians": med,
        "ratios": {"palyra/bare": values["palyra/bare req/s"],
                   "palyra/webhook": values["palyra/webhook req/s"]},
        "journal": {"events": events, "commits": commits,
                    "events_per_commit": events / commits if commits else None,
                    "events_per_commit_by_round": [j["events_per_commit"] for j in journals]},
        "webhook": webhook,
        "targets": targets,
    }


def render(result: dict[str, Any]) -> str:
    cfg, summary, rounds = result["config"], result["summary"], result["rounds"]

    def mid(variant: str, key: str) -> float:
        return float(statistics.median(r[variant].get(key, 0) for r in rounds))

    lines = [
        f"palyra ingress benchmark: {cfg['rounds']} rounds x {cfg['duration_s']} s "
        f"(+{cfg['warmup_s']} s warm-up), wrk -t{cfg['threads']} -c{cfg['connections']}, "
        f"GitHub push {cfg['payload_bytes']} B, {result['machine']['nproc']} CPUs, "
        f"Python {result['machine']['python']}",
        "",
        f"{'variant':<9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} "
        f"{'CPU/req':>8} {'idle RSS':>9}   req/s by round",
    ]
    for v in VARIANTS:
        m = summary["medians"][v]
        by_round = ", ".join(f"{r[v]['wrk']['rps']:.0f}" for r in rounds)
        lines.append(f"{v:<9} {m['rps']:>8.0f} {m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f} "
                     f"{m['non2xx_total']:>8d} {m['cpu_ms_per_request']:>5.2f} ms "
                     f"{m['idle_rss_mb']:>6.1f} MB   {by_round}")
    journal = summary["journal"]
    per_commit = journal["events_per_commit"]
    lines += [
        "",
        f"journal: {journal['events']} events in {journal['commits']} commits "
        f"= {per_commit:.1f} events per fsync'd commit" if per_commit else "journal: no commits",
    ]
    hook = summary["webhook"]
    lines += [
        f"palyra event loop: {summary['medians']['palyra']['loop_cpu_ms_per_request']:.2f} ms "
        "CPU per request (the rest of its CPU/req: its other threads, mostly the journal writer)",
        f"webhook answers 200 before it starts /bin/true: after the load it took "
        f"{hook['drain_s']:.1f} s more to go quiet; ~{hook['commands_run_estimate']:.0f} "
        f"commands ran for {hook['answers']:.0f} answers ({hook['commands_run_share']:.0%}, "
        "estimated from cminflt)",
        "RSS after the load: "
        + ", ".join(f"{v} {mid(v, 'rss_after_mb'):.0f} MB" for v in VARIANTS) + " (medians)",
    ]
    logs = [r["webhook"]["webhook_log"] for r in rounds if "webhook_log" in r["webhook"]]
    for index, counts in enumerate(logs, 1):
        lines.append(f"webhook log, round {index}: " + ", ".join(
            f"{key} {value}" for key, value in counts.items()))
    cli = result.get("cli")
    if cli:
        lines.append(
            f"CLI: `palyra webhooks list` median {cli['webhooks_list_median_ms']:.0f} ms, "
            f"`python -c pass` {cli['python_pass_median_ms']:.0f} ms "
            f"(x{cli['ratio']:.1f}, {cli['runs']} runs each)")
    lines += ["", "targets:"]
    for t in summary["targets"]:
        mark = "met" if t["met"] else "NOT met"
        lines.append(
            f"  {t['name']:<26} {t['value']:>8.2f}  ({t['kind']} {t['target']:g})  {mark}"
        )
    medians = summary["medians"]
    bad = sum(medians[v]["unexpected_total"] + medians[v]["socket_errors_total"] for v in VARIANTS)
    if bad:
        lines.append(f"\nWARNING: {bad} unexpected answers or socket errors; see the JSON.")
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {"nproc": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "processor": cpu_model(),
            "wrk": _version(["wrk", "-v"]), "webhook": _version(["webhook", "-version"])}


def _version(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0] if text else "?"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=15, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cli-runs", type=int, default=15, help="runs of each CLI command")
    parser.add_argument("--palyra", type=Path, default=REPO / ".venv" / "bin" / "palyra")
    parser.add_argument("--tmp-dir", type=Path, default=None,
                        help="where state dirs go (default: the system temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and logs")
    parser.add_argument("--webhook-log", action="store_true",
                        help="run webhook verbose and count its commands from the log "
                        "(exact, but logging slows webhook down)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--serve-bare", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_bare is None:
        for name in ("duration", "rounds", "connections", "threads", "cli_runs"):
            if getattr(args, name) < 1:
                parser.error(f"--{name.replace('_', '-')} must be at least 1")
        if args.connections < args.threads:
            parser.error("--connections must be at least --threads (wrk's rule)")
        if args.duration > 600 or args.warmup > 60 or args.warmup < 0:
            parser.error("--duration is at most 600 s and --warmup 0..60 s")
    return args


def benchmark(args: argparse.Namespace, children: Children) -> dict[str, Any]:
    load_start, started_at = list(os.getloadavg()), datetime.now(UTC)
    work = Path(tempfile.mkdtemp(prefix="palyra-bench-", dir=args.tmp_dir))
    try:
        secret = secrets.token_hex(20).encode()
        body = github_push_payload()
        (work / "secret").write_bytes(secret)
        (work / "body.json").write_bytes(body)
        (work / "secret").chmod(0o600)
        run = Run(work, secret, body, work / "body.json", work / "secret", args.palyra,
                  children, args.webhook_log)
        rounds: list[dict[str, Any]] = []
        for index in range(args.rounds):
            shift = index % len(VARIANTS)  # rotate the order: no variant always goes first
            order = VARIANTS[shift:] + VARIANTS[:shift]
            rnd: dict[str, Any] = {"order": list(order)}
            for variant in order:
                out = measure_variant(run, variant, f"r{index + 1}", args)
                rnd[variant] = out
                w = out["wrk"]
                log(f"[round {index + 1}/{args.rounds}] {variant:<8} {w['rps']:8.0f} req/s  "
                    f"p50 {w['p50_ms']:6.2f} ms  p99 {w['p99_ms']:6.2f} ms  "
                    f"non-2xx {w['non2xx']}  idle RSS {out['idle_rss_mb']:.1f} MB")
            rounds.append(rnd)
        log("CLI round trip ...")
        cli = measure_cli(run, args.cli_runs)
        return {
            "started_at": started_at.isoformat(timespec="seconds"),
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, "bench/ingress.py",
                                 *sys.argv[1:]]),
            "machine": machine(),
            "config": {"duration_s": args.duration, "warmup_s": args.warmup,
                       "rounds": args.rounds, "threads": args.threads,
                       "connections": args.connections, "payload_bytes": len(body),
                       "state_fs": filesystem_of(work)},
            "rounds": rounds, "cli": cli, "summary": summarize(rounds, cli),
            # Other work on a shared machine shows here; compare runs with this in mind.
            "loadavg_start": load_start, "loadavg_end": list(os.getloadavg()),
        }
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_bare is not None:
        serve_bare(args.serve_bare, args.port)
        return 0
    missing = [tool for tool in ("wrk", "webhook") if shutil.which(tool) is None]
    if missing:
        log(f"missing: {', '.join(missing)}. Install them with:\n{INSTALL_LINE}")
        return 2
    if not args.palyra.exists():
        log(f"no palyra at {args.palyra}: run `make` set-up first, or pass --palyra")
        return 2
    children = Children()
    install_sigterm_exit()
    try:
        result = benchmark(args, children)
    except BenchError as exc:
        log(f"benchmark aborted: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted: stopping the child processes")
        return 130
    finally:
        children.stop_all()
    path = save_result("ingress", result)
    print(json.dumps(result, indent=2) if args.json else render(result))
    log(f"saved {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
