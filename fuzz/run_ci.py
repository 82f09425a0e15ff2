"""Bounded fuzzing for CI: every ``fuzz/fuzz_*.py`` target for a fixed time, with atheris.

    python fuzz/run_ci.py [--seconds 20] [--jobs N] [--only envelope,filters] [--no-install]

atheris is imported, else installed with pip into the running interpreter's environment
(``make fuzz`` runs this with the project venv's Python). When that fails (no wheel for the
platform and no clang to build one, no network...) the script prints
``fuzz: skipped: atheris is not available (<reason>)`` and exits 0: fuzzing is a bonus on
top of the test suite, which replays every seed corpus without atheris.

Each target reads its seed corpus ``fuzz/corpus/<name>/`` (never written: new inputs go to a
temporary corpus) and its libFuzzer dictionary ``fuzz/dict/<name>.dict`` if there is one, and
runs with ``-max_total_time``, ``-rss_limit_mb=2048`` and a per-input ``-timeout``. Up to
``--jobs`` targets (default: the CPU count) run at once. One summary line is printed per
target; a target that crashes, times out or runs out of memory fails the run (exit 1), and
its log and the input that did it are kept and named.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent
REPO = FUZZ_DIR.parent
RSS_LIMIT_MB = 2048
INPUT_TIMEOUT_S = 10  # one input slower than this is a finding (a denial of service)
START_GRACE_S = 60  # import, instrumentation and seed replay (~5 s), before libFuzzer's clock
PIP_TIMEOUT_S = 90
ATHERIS = "atheris>=3,<4"  # the major version this harness was written against


@dataclass
class Target:
    name: str  # the corpus folder: fuzz_<name>.py
    script: Path
    corpus: Path
    log: Path
    work: Path
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    ended: float = 0.0
    returncode: int | None = None
    notes: list[str] = field(default_factory=list)


def targets(only: list[str] | None) -> list[Target]:
    found = sorted(FUZZ_DIR.glob("fuzz_*.py"))
    names = [p.stem.removeprefix("fuzz_") for p in found]
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise SystemExit(f"fuzz: unknown target(s) {', '.join(unknown)}; have {names}")
    out = []
    for script, name in zip(found, names, strict=True):
        if only and name not in only:
            continue
        out.append(Target(name, script, FUZZ_DIR / "corpus" / name, Path(), Path()))
    return out


def atheris_problem(install: bool) -> str | None:
    """``None`` when atheris imports (after installing it if asked), else why not."""
    check = [sys.executable, "-c", "import atheris"]
    if subprocess.run(check, capture_output=True).returncode == 0:
        return None
    if not install:
        return "not installed, and --no-install was given"
    print(f"fuzz: installing {ATHERIS} with pip", flush=True)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               ATHERIS]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"pip install atheris took over {PIP_TIMEOUT_S} s"
    except OSError as exc:
        return f"cannot run pip: {exc}"
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr + done.stdout).splitlines()]
        errors = [line for line in lines if "error" in line.lower()] or lines or ["no output"]
        return f"pip install atheris failed: {errors[-1][:200]}"
    imported = subprocess.run(check, capture_output=True, text=True)
    if imported.returncode != 0:
        last = (imported.stderr.strip().splitlines() or ["no output"])[-1]
        return f"installed but does not import: {last[:200]}"
    return None


def start(target: Target, seconds: int, artifacts: Path) -> None:
    target.work = Path(tempfile.mkdtemp(prefix=f"corpus-{target.name}-", dir=artifacts))
    target.log = artifacts / f"{target.name}.log"
    # New inputs go to the first corpus folder (a temporary one); the seeds are only read.
    command = [
        sys.executable, str(target.script), str(target.work), str(target.corpus),
        f"-max_total_time={seconds}", f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-timeout={INPUT_TIMEOUT_S}", f"-artifact_prefix={artifacts}/{target.name}-",
        "-print_final_stats=1",
    ]
    dictionary = FUZZ_DIR / "dict" / f"{target.name}.dict"
    if dictionary.exists():
        command.append(f"-dict={dictionary}")
    with target.log.open("wb") as log:
        target.process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    target.started = time.monotonic()


def _last(pattern: str, text: str) -> str | None:
    found = re.findall(pattern, text)
    return found[-1] if found else None


def summary(target: Target) -> str:
    text = target.log.read_text("utf-8", "replace") if target.log.exists() else ""
    runs = _last(r"stat::number_of_executed_units:\s+(\d+)", text) or "?"
    new = _last(r"stat::new_units_added:\s+(\d+)", text) or "?"
    cov = _last(r"\bcov: (\d+)", text) or "?"
    took = f"{target.ended - target.started:.0f} s"
    if target.returncode == 0:
        return f"fuzz: {target.name}: ok, {runs} runs in {took}, cov {cov}, {new} new inputs"
    if "ERROR: libFuzzer: timeout" in text:
        kind = f"TIMEOUT (an input ran over {INPUT_TIMEOUT_S} s)"
    elif "out-of-memory" in text:
        kind = f"OUT OF MEMORY (over {RSS_LIMIT_MB} MB)"
    elif "Uncaught Python exception" in text:
        kind = "CRASH (uncaught exception)"
    else:
        kind = f"FAILED (exit {target.returncode})"
    kind += "".join(f"; {note}" for note in target.notes)
    saved = _last(r"Test unit written to (\S+)", text)
    where = f"; input: {saved}" if saved else ""
    return f"fuzz: {target.name}: {kind} after {took}{where}; log: {target.log}"


def _excerpt(target: Target) -> str:
    """The Python traceback of a crash (or the log's tail), for the CI output."""
    text = target.log.read_text("utf-8", "replace")
    start = text.find("=== Uncaught Python exception: ===")
    if start >= 0:
        end = re.search(r"^==\d+== ", text[start:], re.M)
        return text[start:start + end.start() if end else None].strip()
    return "\n".join(text.strip().splitlines()[-30:])


def run_all(chosen: list[Target], seconds: int, jobs: int, artifacts: Path) -> bool:
    waiting = list(chosen)
    running: list[Target] = []
    done: list[Target] = []
    while waiting or running:
        while waiting and len(running) < jobs:
            target = waiting.pop(0)
            start(target, seconds, artifacts)
            running.append(target)
        time.sleep(0.2)  # polling child processes; nothing to synchronise with
        for target in list(running):
            assert target.process is not None
            if target.process.poll() is None:
                if time.monotonic() - target.started > seconds + START_GRACE_S:
                    target.notes.append(f"killed: still running after {seconds} s + grace")
                    target.process.kill()
                    target.process.wait()
                else:
                    continue
            target.ended = time.monotonic()
            target.returncode = target.process.returncode
            running.remove(target)
            done.append(target)
            print(summary(target), flush=True)
            if target.returncode != 0:
                print(_excerpt(target), flush=True)
    return all(t.returncode == 0 for t in done)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", 20)),
                        help="fuzzing time per target (default 20, or $FUZZ_SECONDS)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="targets run at once (default: the CPU count)")
    parser.add_argument("--only", default="", help="comma-separated target names")
    parser.add_argument("--no-install", action="store_true", help="never pip install atheris")
    args = parser.parse_args(argv[1:])
    chosen = targets([n for n in args.only.split(",") if n] or None)
    problem = atheris_problem(install=not args.no_install)
    if problem is not None:
        print(f"fuzz: skipped: atheris is not available ({problem})", flush=True)
        return 0
    artifacts = Path(tempfile.mkdtemp(prefix="palyra-fuzz-"))
    began = time.monotonic()
    print(f"fuzz: {len(chosen)} targets, {args.seconds} s each, {args.jobs} at a time",
          flush=True)
    ok = run_all(chosen, args.seconds, max(1, args.jobs), artifacts)
    took = time.monotonic() - began
    if ok:
        shutil.rmtree(artifacts, ignore_errors=True)
        print(f"fuzz: all {len(chosen)} targets ok in {took:.0f} s", flush=True)
        return 0
    for target in chosen:
        shutil.rmtree(target.work, ignore_errors=True)
    print(f"fuzz: FAILED in {took:.0f} s; logs and crashing inputs kept in {artifacts}",
          flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
