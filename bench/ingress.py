"""Ingress benchmark: palyra's full ingress path against a bare aiohttp handler and
adnanh/webhook, with wrk on loopback; plus idle RSS, CLI round trip and journal batching.

    .venv/bin/python bench/ingress.py [--duration 15] [--warmup 3] [--rounds 3] [--json]
                                      [--workers 1,auto]

``--workers LIST`` runs palyra once per item in each round (``palyra daemon run --workers
N``; ``default``: no flag), interleaved with the two baselines; CPU and memory are summed
over every process of each server (palyra's control process and its workers).

What each variant is, and how to read the numbers: bench/README.md. Results are printed and
saved under bench/results/ (gitignored). Everything listens on 127.0.0.1 only; every child
process is stopped on exit (and killed by the kernel if this script dies).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
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
    TreeCpu,
    admin,
    cpu_model,
    daemon_env,
    die_with_parent,
    filesystem_of,
    install_sigterm_exit,
    log,
    rss_mb,
    save_result,
    tree_memory,
    workers_list,
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
BASELINES = ("bare", "webhook")
TARGETS = {  # name (after "palyra-wN"): (limit, "min" = at least / "max" = at most)
    "/bare req/s": (0.5, "min"),
    "/webhook req/s": (2.0, "min"),
    "p99 ms": (10.0, "max"),
    "idle RSS MB": (120.0, "max"),  # issue 10: the whole process tree
    "webhooks list median ms": (150.0, "max"),
}


# -- wrk ---------------------------------------------------------------------------------


def run_wrk(run: Run, server: Server, args: argparse.Namespace, seconds: int) -> dict[str, Any]:
    tag = secrets.token_hex(4)  # new delivery ids for every run: no replays between runs
    argv = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s",
            "--timeout", "10s", "--latency", "-s", str(LUA), server.url, "--",
            str(run.body_file), str(run.secret_file), tag, str(EXPECTED_STATUS[server.variant])]
    # wrk is the only child this script waits for meanwhile: its CPU is the growth of ours.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60,
                          check=False, preexec_fn=die_with_parent)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
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
        cpu_s=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
    )
    return result


def palyra_workers(variant: str) -> str | None:
    """``palyra-w2`` -> ``"2"``; None for the baselines."""
    return variant[len("palyra-w"):] if variant.startswith("palyra-w") else None


def label(variant: str) -> str:
    workers = palyra_workers(variant)
    return variant if workers is None else f"palyra N={workers}"


def start_variant(run: Run, variant: str, tag: str) -> Server:
    workers = palyra_workers(variant)
    if workers is not None:
        return start_palyra(run, f"{tag}-w{workers}", workers)
    return STARTERS[variant](run, tag)


def measure_variant(run: Run, variant: str, tag: str, args: argparse.Namespace) -> dict[str, Any]:
    server = start_variant(run, variant, tag)
    is_palyra = server.variant == "palyra"
    try:
        out: dict[str, Any] = {"verify": verify(run, server), "workers": server.workers}
        # The whole process tree: palyra's control process and its workers (forked and
        # spawned processes share pages: PSS divides them, RSS counts them in each).
        idle = tree_memory(server.pid)
        out.update(idle_rss_mb=idle["rss_mb"], idle_pss_mb=idle["pss_mb"],
                   processes=idle["count"], idle_memory=idle["processes"])
        # webhook answers before its command runs: let a backlog finish, bounded.
        drain_limit = 30.0 + 4 * args.duration
        if args.warmup > 0:
            run_wrk(run, server, args, args.warmup)
            wait_idle(server.pid, drain_limit)
        before = admin(server.socket, "GET", "/v1/status")[1] if is_palyra else None
        faults = children_minor_faults(server.pid)
        cpu = TreeCpu(server.pid)
        log_offset = server.log_path.stat().st_size
        out["wrk"] = run_wrk(run, server, args, args.duration)
        out["drain_s"] = round(wait_idle(server.pid, drain_limit), 2)
        used = cpu.close()
        # CPU per request is steadier than req/s on a shared machine: it does not depend on
        # how much CPU wrk and the neighbours left over. Summed over every process.
        served = max(1, out["wrk"]["requests"])
        out["cpu_ms_per_request"] = used["cpu_s"] * 1000 / served
        out["cpu_ms_per_request_by_role"] = {
            role: value * 1000 / served for role, value in used["by_role"].items()}
        out["wrk_cpu_ms_per_request"] = out["wrk"]["cpu_s"] * 1000 / served
        out["cpu_processes"] = used["processes"]
        # How the load spread over the workers (they share one listening socket; a
        # kept-alive connection stays with the worker that accepted it).
        worker_cpu = sorted((p["cpu_s"] for p in used["processes"] if p["role"] == "worker"),
                            reverse=True)
        if worker_cpu and sum(worker_cpu) > 0:
            out["worker_cpu_shares"] = [c / sum(worker_cpu) for c in worker_cpu]
        if is_palyra and used["loop_s"] is not None:  # its event loop is the main thread
            out["loop_cpu_ms_per_request"] = used["loop_s"] * 1000 / served
        if server.log_is_verbose:
            out["webhook_log"] = count_webhook_log(server.log_path, log_offset)
        after_load = tree_memory(server.pid)
        out["rss_after_mb"], out["pss_after_mb"] = after_load["rss_mb"], after_load["pss_mb"]
        out["processes_after"] = after_load["count"]
        out["rss_peak_mb"] = rss_mb(server.pid, "VmHWM")  # the first process's
        if server.faults_per_command:
            ran = (children_minor_faults(server.pid) - faults) / server.faults_per_command
            out["commands_run_estimate"] = round(ran)
        if before is not None:
            after = admin(server.socket, "GET", "/v1/status")[1]
            # journal.commits sums every process's commits (each worker reports its own).
            commits = after["journal"]["commits"] - before["journal"]["commits"]
            events = after["journal"]["last_seq"] - before["journal"]["last_seq"]
            accepted = (after["ingress"]["answers"].get("accepted", 0)
                        - before["ingress"]["answers"].get("accepted", 0))
            per_commit = events / commits if commits else None
            out["journal"] = {"commits": commits, "events": events, "accepted": accepted,
                              "events_per_commit": per_commit}
            out["cpu_ms_per_accepted"] = used["cpu_s"] * 1000 / max(1, accepted)
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


def median_of(rounds: list[dict[str, Any]], variant: str, *path: str) -> float | None:
    """Median over the rounds of ``rounds[i][variant][path...]``; rounds without a number
    there are left out (None if none has one)."""
    values = []
    for rnd in rounds:
        value: Any = rnd[variant]
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, int | float):
            values.append(value)
    return float(statistics.median(values)) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def projection(m: dict[str, Any], cores: int) -> dict[str, Any]:
    """What a palyra variant's CPU per accepted webhook projects for ``cores`` cores: all
    of them busy with our processes (``cores`` / our CPU per request), or shared with the
    load generator as here (``cores`` / (ours + wrk's)); the control process's share
    (one process) caps it at 1 / its CPU per request, as one event loop caps a single
    process. CPU only: the journal's writers take turns on one lock and every commit pays
    an fsync, which this does not count."""
    ours, gen = m["cpu_ms_per_request"], m["wrk_cpu_ms_per_request"]
    roles = m["cpu_ms_per_request_by_role"]
    control = roles.get("control")
    single = roles.get("main")
    out: dict[str, Any] = {
        "cores": cores, "ours_ms": ours, "load_generator_ms": gen,
        "roles_ms": roles,
        "rps_load_elsewhere": cores * 1000 / ours if ours else None,
        "rps_load_on_the_box": cores * 1000 / (ours + gen) if ours + gen else None,
    }
    if control:
        out["control_cap_rps"] = 1000 / control
    elif single is not None and m.get("loop_cpu_ms_per_request"):
        # One process: its event loop runs on one core at most.
        out["single_loop_cap_rps"] = 1000 / m["loop_cpu_ms_per_request"]
    return out


def summarize(rounds: list[dict[str, Any]], variants: Sequence[str], cores: int,
              cli: dict[str, Any] | None) -> dict[str, Any]:
    med: dict[str, dict[str, Any]] = {}
    for v in variants:
        m: dict[str, Any] = {key: median_of(rounds, v, "wrk", key)
                             for key in ("rps", "p50_ms", "p99_ms")}
        for key in ("idle_rss_mb", "idle_pss_mb", "processes", "cpu_ms_per_request",
                    "wrk_cpu_ms_per_request", "rss_after_mb", "pss_after_mb",
                    "loop_cpu_ms_per_request", "cpu_ms_per_accepted"):
            m[key] = median_of(rounds, v, key)
        roles = sorted({role for r in rounds for role in r[v]["cpu_ms_per_request_by_role"]})
        m["cpu_ms_per_request_by_role"] = {
            role: median_of(rounds, v, "cpu_ms_per_request_by_role", role) or 0.0
            for role in roles}
        for key, name in (("non2xx", "non2xx_total"), ("unexpected", "unexpected_total"),
                          ("socket_errors", "socket_errors_total")):
            m[name] = sum(r[v]["wrk"][key] for r in rounds)
        med[v] = m
    palyras = [v for v in variants if palyra_workers(v) is not None]
    ratios = {v: {"bare": ratio(med[v]["rps"], med["bare"]["rps"]),
                  "webhook": ratio(med[v]["rps"], med["webhook"]["rps"]),
                  "cpu_per_request_vs_bare": ratio(med[v]["cpu_ms_per_request"],
                                                   med["bare"]["cpu_ms_per_request"])}
              for v in palyras}
    if palyras:
        first = palyras[0]
        for v in palyras:
            ratios[v][f"vs_{first}"] = ratio(med[v]["rps"], med[first]["rps"])
    hooks = [r["webhook"] for r in rounds]
    webhook = {
        "drain_s": statistics.median(h["drain_s"] for h in hooks),
        "answers": statistics.median(h["wrk"]["requests"] for h in hooks),
        "commands_run_estimate": statistics.median(h["commands_run_estimate"] for h in hooks),
        "commands_run_share": statistics.median(
            h["commands_run_estimate"] / max(1, h["wrk"]["requests"]) for h in hooks
        ),
    }
    journal = {}
    for v in palyras:
        journals = [r[v]["journal"] for r in rounds]
        commits, events = sum(j["commits"] for j in journals), sum(j["events"] for j in journals)
        journal[v] = {"events": events, "commits": commits,
                      "events_per_commit": events / commits if commits else None,
                      "events_per_commit_by_round": [j["events_per_commit"] for j in journals]}
    values: list[tuple[str, str, float | None]] = []  # (shown name, TARGETS key, value)
    for v in palyras:
        values += [(f"{v}/bare req/s", "/bare req/s", ratios[v]["bare"]),
                   (f"{v}/webhook req/s", "/webhook req/s", ratios[v]["webhook"]),
                   (f"{v} p99 ms", "p99 ms", med[v]["p99_ms"]),
                   (f"{v} idle RSS MB", "idle RSS MB", med[v]["idle_rss_mb"])]
    if cli is not None:
        values.append(("webhooks list median ms", "webhooks list median ms",
                       cli["webhooks_list_median_ms"]))
    targets = []
    for name, key, value in values:
        limit, kind = TARGETS[key]
        met = value is not None and (value >= limit if kind == "min" else value <= limit)
        targets.append({"name": name, "value": value, "target": limit,
                        "kind": "at least" if kind == "min" else "at most", "met": met})
    return {
        "medians": med,
        "ratios": ratios,
        "projection": {v: projection(med[v], cores) for v in palyras},
        "journal": journal,
        "webhook": webhook,
        "targets": targets,
    }


def fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "n/a" if value is None else format(value, spec) + unit


def render(result: dict[str, Any]) -> str:
    cfg, summary, rounds = result["config"], result["summary"], result["rounds"]
    variants = cfg["variants"]
    med = summary["medians"]
    lines = [
        f"palyra ingress benchmark: {cfg['rounds']} rounds x {cfg['duration_s']} s "
        f"(+{cfg['warmup_s']} s warm-up), wrk -t{cfg['threads']} -c{cfg['connections']}, "
        f"GitHub push {cfg['payload_bytes']} B, {result['machine']['nproc']} CPUs, "
        f"Python {result['machine']['python']}",
        "",
        f"{'variant':<14} {'procs':>5} {'req/s':>7} {'x bare':>6} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'non-2xx':>7} {'CPU/req':>8} {'idle RSS':>9} {'idle PSS':>9}   req/s by round",
    ]
    for v in variants:
        m = med[v]
        by_round = ", ".join(f"{r[v]['wrk']['rps']:.0f}" for r in rounds)
        x_bare = ratio(m["rps"], med["bare"]["rps"])
        lines.append(
            f"{label(v):<14} {fmt(m['processes'], '.0f'):>5} {fmt(m['rps'], '.0f'):>7} "
            f"{fmt(x_bare, '.2f'):>6} {fmt(m['p50_ms'], '.2f'):>7} {fmt(m['p99_ms'], '.2f'):>7} "
            f"{m['non2xx_total']:>7d} {fmt(m['cpu_ms_per_request'], '.3f', ' ms'):>8} "
            f"{fmt(m['idle_rss_mb'], '.1f', ' MB'):>9} {fmt(m['idle_pss_mb'], '.1f', ' MB'):>9}"
            f"   {by_round}")
    lines += ["", "CPU/req, RSS, PSS: summed over every process of the server (palyra's control"
              " process and its workers); ratios against the same run's baselines."]
    palyras = [v for v in variants if palyra_workers(v) is not None]
    lines += ["", "CPU per accepted webhook by process role (ms, medians; projection inputs):"]
    for v in palyras:
        m, proj = med[v], summary["projection"][v]
        roles = ", ".join(f"{role} {value:.3f}"
                          for role, value in m["cpu_ms_per_request_by_role"].items())
        loop = (f"; event loop of the first process {m['loop_cpu_ms_per_request']:.3f}"
                if m["loop_cpu_ms_per_request"] is not None else "")
        lines.append(f"  {label(v):<14} {roles}{loop}; wrk {m['wrk_cpu_ms_per_request']:.3f}")
        shares = [r[v].get("worker_cpu_shares") for r in rounds]
        if any(shares):
            lines.append(f"  {'':<14} workers' shares of the worker CPU, busiest first, by "
                         "round: " + "; ".join(
                             " / ".join(f"{x:.0%}" for x in share) if share else "n/a"
                             for share in shares))
        cap = (f"; the control process alone caps it at {proj['control_cap_rps']:,.0f}"
               if "control_cap_rps" in proj else
               f"; one event loop caps it at {proj['single_loop_cap_rps']:,.0f}"
               if "single_loop_cap_rps" in proj else "")
        lines.append(
            f"  {'':<14} {proj['cores']} cores: {fmt(proj['rps_load_elsewhere'], ',.0f')} req/s"
            f" with the load elsewhere, {fmt(proj['rps_load_on_the_box'], ',.0f')} with wrk on"
            f" the box{cap} (CPU only)")
    ratios = summary["ratios"]
    if len(palyras) > 1:
        first = palyras[0]
        lines += ["", "palyra against " + label(first) + ": " + ", ".join(
            f"{label(v)} x{fmt(ratios[v]['vs_' + first], '.2f')}" for v in palyras[1:])]
    lines.append("")
    for v in palyras:
        journal = summary["journal"][v]
        per_commit = journal["events_per_commit"]
        lines.append(
            f"journal, {label(v)}: {journal['events']} events in {journal['commits']} commits "
            f"= {per_commit:.1f} events per fsync'd commit" if per_commit else
            f"journal, {label(v)}: {journal['events']} events (no commit counted)")
    hook = summary["webhook"]
    lines += [
        f"webhook answers 200 before it starts /bin/true: after the load it took "
        f"{hook['drain_s']:.1f} s more to go quiet; ~{hook['commands_run_estimate']:.0f} "
        f"commands ran for {hook['answers']:.0f} answers ({hook['commands_run_share']:.0%}, "
        "estimated from cminflt)",
        "RSS after the load: " + ", ".join(
            f"{label(v)} {fmt(med[v]['rss_after_mb'], '.0f', ' MB')}" for v in variants)
        + " (medians)",
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
            f"  {t['name']:<32} {fmt(t['value'], '8.2f'):>8}  ({t['kind']} {t['target']:g})"
            f"  {mark}")
    bad = sum(med[v]["unexpected_total"] + med[v]["socket_errors_total"] for v in variants)
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
    parser.add_argument("--workers", default="1", metavar="LIST",
                        help="palyra's --workers, one run of palyra per item in each round, "
                        "comma-separated: counts, auto, default (no flag); e.g. 1,auto (1)")
    parser.add_argument("--project-cores", type=int, default=8, metavar="N",
                        help="cores of the box the throughput is projected for (8)")
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
        try:
            args.workers = workers_list(args.workers)
        except ValueError as exc:
            parser.error(str(exc))
        if not 1 <= args.project_cores <= 1024:
            parser.error("--project-cores is 1..1024")
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
        variants = ("bare", *(f"palyra-w{n}" for n in args.workers), "webhook")
        rounds: list[dict[str, Any]] = []
        for index in range(args.rounds):
            shift = index % len(variants)  # rotate the order: no variant always goes first
            order = variants[shift:] + variants[:shift]
            rnd: dict[str, Any] = {"order": list(order)}
            for variant in order:
                out = measure_variant(run, variant, f"r{index + 1}", args)
                rnd[variant] = out
                w = out["wrk"]
                log(f"[round {index + 1}/{args.rounds}] {label(variant):<14} {w['rps']:8.0f} "
                    f"req/s  p50 {w['p50_ms']:6.2f} ms  p99 {w['p99_ms']:6.2f} ms  "
                    f"non-2xx {w['non2xx']}  CPU/req {out['cpu_ms_per_request']:.3f} ms  "
                    f"idle RSS {out['idle_rss_mb']:.1f} MB ({out['processes']} processes)")
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
                       "workers": args.workers, "variants": list(variants),
                       "project_cores": args.project_cores,
                       "state_fs": filesystem_of(work)},
            "rounds": rounds, "cli": cli,
            "summary": summarize(rounds, variants, args.project_cores, cli),
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
