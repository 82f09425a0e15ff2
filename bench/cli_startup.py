"""How long does a ``palyra`` command take, next to ``python -c pass``?

    .venv/bin/python bench/cli_startup.py                 # own daemon on a temp state dir
    .venv/bin/python bench/cli_startup.py --runs 30 --state-dir DIR   # a running daemon

Each command is a whole process (the console script, as a user runs it), interleaved
with ``python -c pass`` from the same interpreter so that machine noise hits both alike.
Prints, per command, the median wall time, its min-max, the ratio to the baseline, and the
median CPU time (user + system) of the process, which varies less on a busy machine.

Children run with bytecode caching on (``PYTHONDONTWRITEBYTECODE`` removed), as an
installed CLI does: with it set, every run also compiles palyra's own modules.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMMANDS = (
    ("webhooks", "list"),
    ("webhooks", "list", "--json"),
    ("webhooks", "show", "gh"),
    ("system", "events", "list"),
    ("subscriptions", "list"),
    ("deliveries", "list"),
    ("daemon", "status"),
    ("--version",),
    ("--help",),
)


def cpu_ms() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (usage.ru_utime + usage.ru_stime) * 1000


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall ms, CPU ms) of one run of ``argv``, which must succeed."""
    cpu, start = cpu_ms(), time.perf_counter()
    done = subprocess.run(argv, capture_output=True, env=env, timeout=60, check=False)
    elapsed = (time.perf_counter() - start) * 1000
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-300:]!r}")
    return elapsed, cpu_ms() - cpu


def start_daemon(palyra: Path, state_dir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [str(palyra), "daemon", "run", "--state-dir", str(state_dir), "--listen", "127.0.0.1:0",
         "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    status = [str(palyra), "daemon", "status", "--state-dir", str(state_dir)]
    deadline = time.monotonic() + 30
    while subprocess.run(status, capture_output=True, env=env, check=False).returncode != 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("the daemon did not start")
        time.sleep(0.2)  # polling a child we do not control; not synchronising our own code
    for name, provider in (("gh", "github"), ("st", "stripe"), ("sw", "standard-webhooks")):
        add = [str(palyra), "webhooks", "add", name, "--provider", provider,
               "--generate-secret", "--state-dir", str(state_dir)]
        subprocess.run(add, capture_output=True, env=env, check=True)
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="runs of each command")
    parser.add_argument("--palyra", type=Path, default=REPO / ".venv/bin/palyra")
    parser.add_argument("--state-dir", type=Path, help="a running daemon's (else: start one)")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PALYRA_") and k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
    tmp = None if args.state_dir else Path(tempfile.mkdtemp(prefix="pcs-"))
    state_dir = args.state_dir or tmp / "sd"  # type: ignore[operator]
    daemon = start_daemon(args.palyra, state_dir, env) if tmp else None
    try:
        baseline = [sys.executable, "-c", "pass"]
        # The floor under any Typer CLI: the interpreter plus `import typer`.
        floor = [sys.executable, "-c", "import typer"]
        argvs = [[str(args.palyra), *cmd, "--state-dir", str(state_dir)]
                 if cmd[0] != "--version" and cmd[0] != "--help" else [str(args.palyra), *cmd]
                 for cmd in COMMANDS]
        for argv in [baseline, floor, *argvs]:
            timed(argv, env)  # warm the page cache and the bytecode caches
        times: dict[str, list[tuple[float, float]]] = {"python -c pass": [],
                                                       "python -c 'import typer'": []}
        for _ in range(args.runs):
            for cmd, argv in zip(COMMANDS, argvs, strict=True):
                times.setdefault("palyra " + " ".join(cmd), []).append(timed(argv, env))
                times["python -c pass"].append(timed(baseline, env))
            times["python -c 'import typer'"].append(timed(floor, env))
        base = statistics.median(wall for wall, _ in times["python -c pass"])
        print(f"{'command':<32} {'median':>8} {'min-max':>13} {'ratio':>6} {'CPU':>8}"
              f"   ({args.runs} runs each)")
        for name, values in times.items():
            walls = [wall for wall, _ in values]
            med = statistics.median(walls)
            cpu = statistics.median(cpu for _, cpu in values)
            span = f"{min(walls):.0f}-{max(walls):.0f}"
            print(f"{name:<32} {med:6.0f} ms {span:>10} ms {med / base:5.1f}x {cpu:5.0f} ms")
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(30)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
