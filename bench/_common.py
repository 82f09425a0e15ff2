"""Helpers shared by the benchmark scripts: child processes that cannot outlive the script,
``/proc`` readings, a small admin client on the Unix socket, a palyra daemon on a temp state
dir, a publisher of events, percentiles, targets and the results file. Synchronous and
stdlib-only, so that a script's orchestrating part stays simple, except ``publish_events``
(asyncio and aiohttp, imported when it runs)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import http.client
import json
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS_DIR = HERE / "results"
DEFAULT_PALYRA = REPO / ".venv" / "bin" / "palyra"


class BenchError(RuntimeError):
    """A set-up or verification step failed: nothing after it would be meaningful."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- child processes --------------------------------------------------------------------

_LIBC: Any = None
with contextlib.suppress(OSError):
    _LIBC = ctypes.CDLL(None, use_errno=True)


def die_with_parent() -> None:
    # PR_SET_PDEATHSIG: the kernel kills the child if this script dies, even by SIGKILL.
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGKILL)


def raise_nofile_limit() -> int:
    """Raise this process's open-file soft limit to its hard limit; return the new limit.
    A thousand streams need a thousand descriptors on each side."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _die_with_parent_many_files() -> None:
    die_with_parent()
    raise_nofile_limit()


class Children:
    """Every process this script starts; ``stop_all`` ends them (TERM, then KILL)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None,
              *, stdin: int | IO[Any] | None = subprocess.DEVNULL,
              many_files: bool = False) -> subprocess.Popen[bytes]:
        """Start ``argv`` with its output appended to ``log_path``. ``many_files``: the
        child's open-file soft limit is raised to the hard limit before it runs."""
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                list(argv), stdin=stdin, stdout=out, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
                preexec_fn=_die_with_parent_many_files if many_files else die_with_parent,
            )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            # A stopped (SIGSTOP) child would hold TERM until continued.
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.procs):
            with contextlib.suppress(Exception):
                self.stop(proc)


def install_sigterm_exit() -> None:
    """SIGTERM unwinds like Ctrl-C does, so the ``finally`` blocks stop the children."""

    def on_term(signum: int, frame: Any) -> None:
        log("terminated: stopping the child processes")
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)


# -- /proc ------------------------------------------------------------------------------


def proc_stat(pid: int) -> list[str]:
    """``/proc/PID/stat`` fields from field 3 (state) on: index = field number - 3."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def cpu_ticks(pid: int) -> int:
    """utime + stime + cutime + cstime: the process and its reaped children."""
    fields = proc_stat(pid)
    return sum(int(fields[i]) for i in (11, 12, 13, 14))


def cpu_seconds(pid: int) -> float:
    return cpu_ticks(pid) / os.sysconf("SC_CLK_TCK")


def thread_ticks(pid: int, tid: int) -> int:
    """utime + stime of one thread (``tid == pid``: the main thread, the event loop)."""
    text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def schedstat(pid: int, tid: int | None = None) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for a CPU) of a thread (default: the
    main thread) since it started. The second is what a shared machine takes away."""
    fields = Path(f"/proc/{pid}/task/{tid or pid}/schedstat").read_text().split()
    return int(fields[0]) / 1e9, int(fields[1]) / 1e9


def cpu_pressure_s() -> float | None:
    """Seconds during which some runnable task waited for a CPU, machine-wide (PSI), or
    None without ``/proc/pressure``."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return int(line.rsplit("total=", 1)[1]) / 1e6
    return None


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no {key} for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- a process tree: the daemon's control process and its workers -----------------------

WORKER_MODULE = "palyra_py.server.workers"


def _children_files_supported() -> bool:
    return Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists()


_CHILDREN_FILES = _children_files_supported()


def child_pids(pid: int) -> list[int]:
    """The live children of ``pid`` (zombies too): from ``/proc/PID/task/*/children`` where
    the kernel has it (CONFIG_PROC_CHILDREN), else from every ``/proc/N/stat``'s ppid."""
    found: list[int] = []
    if _CHILDREN_FILES:
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    text = Path(f"/proc/{pid}/task/{task}/children").read_text()
                    found += [int(x) for x in text.split()]
        return found
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int(proc_stat(int(name))[1]) == pid:
                    found.append(int(name))
    return found


def tree_pids(root: int) -> list[int]:
    """``root`` and every live descendant, parents before their children."""
    pids, index = [root], 0
    while index < len(pids):
        pids += [c for c in child_pids(pids[index]) if c not in pids]
        index += 1
    return pids


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    return ""


@dataclass(frozen=True)
class ProcReading:
    """One process of a tree at one moment (CPU in clock ticks)."""

    pid: int
    started: int
    """Start time (field 22), which tells a new process from an old one with the same pid."""
    role: str
    own_ticks: int
    """utime + stime: every thread of the process."""
    reaped_ticks: int
    """cutime + cstime: its children that exited and that it waited for."""
    loop_ticks: int
    """utime + stime of the main thread (palyra's event loop)."""


def read_process(pid: int, root: int) -> ProcReading | None:
    """``pid`` now, or None if it is gone. ``role``: ``worker`` (an ingress worker),
    ``main`` (``root``), ``child`` (anything else in the tree)."""
    try:
        fields = proc_stat(pid)
        loop = thread_ticks(pid, pid)
    except (OSError, ValueError, IndexError):
        return None
    role = ("worker" if WORKER_MODULE in _cmdline(pid)
            else "main" if pid == root else "child")
    return ProcReading(pid, int(fields[19]), role, int(fields[11]) + int(fields[12]),
                       int(fields[13]) + int(fields[14]), loop)


def tree_readings(root: int, descendants: bool = True) -> dict[tuple[int, int], ProcReading]:
    """Every live process of the tree under ``root`` (``descendants`` False: ``root``
    alone), by (pid, start time)."""
    found = {}
    for pid in tree_pids(root) if descendants else [root]:
        reading = read_process(pid, root)
        if reading is not None:
            found[(reading.pid, reading.started)] = reading
    return found


def tree_ticks(root: int) -> int:
    """CPU ticks of the tree: own + reaped ticks of every live process, so that a process
    that exited and was waited for by a parent in the tree still counts (in its parent's
    reaped ticks)."""
    return sum(r.own_ticks + r.reaped_ticks for r in tree_readings(root).values())


def _main_role(readings: Sequence[ProcReading]) -> str:
    return "control" if any(r.role == "worker" for r in readings) else "main"


class TreeCpu:
    """CPU of a process and all its descendants over a stretch of time, in total and per
    process, counting processes that started or exited meanwhile.

    The total is exact for every process whose parent is in the tree and waits for it
    (the daemon's control process waits for its workers, a restarted one too): an exited
    process's CPU moves into its parent's cutime/cstime, which the total sums. Limits: a
    process reparented out of the tree (its parent died first) and not waited for is
    lost; the per-process figures of processes that exited are not known one by one, only
    together (``exited_s``); clock ticks are 10 ms, so short windows are coarse."""

    def __init__(self, root: int, descendants: bool = True) -> None:
        self.root, self.descendants = root, descendants
        self.start = tree_readings(root, descendants)
        self.hz = os.sysconf("SC_CLK_TCK")

    def close(self) -> dict[str, Any]:
        """``cpu_s`` (the tree), ``loop_s`` (the root's main thread), ``exited_s`` (of
        processes gone by now), ``by_role`` and ``processes`` (each live one: pid, role,
        cpu_s, loop_s, new = started during the window)."""
        end = tree_readings(self.root, self.descendants)
        hz = self.hz
        processes: list[dict[str, Any]] = []
        for key, now in end.items():
            before = self.start.get(key)
            own = now.own_ticks - (before.own_ticks if before else 0)
            loop = now.loop_ticks - (before.loop_ticks if before else 0)
            processes.append({"pid": now.pid, "role": now.role, "cpu_s": own / hz,
                              "loop_s": loop / hz, "new": before is None})
        total = (sum(r.own_ticks + r.reaped_ticks for r in end.values())
                 - sum(r.own_ticks + r.reaped_ticks for r in self.start.values()))
        exited = total / hz - sum(p["cpu_s"] for p in processes)
        main = _main_role(list(end.values()))
        by_role: dict[str, float] = {}
        for p in processes:
            if p["role"] == "main":
                p["role"] = main
            by_role[p["role"]] = by_role.get(p["role"], 0.0) + p["cpu_s"]
        if abs(exited) * hz >= 0.5:
            by_role["exited"] = exited
        root = next((r for r in self.start.values() if r.pid == self.root), None)
        root_now = next((r for r in end.values() if r.pid == self.root), None)
        loop_s = (None if root is None or root_now is None
                  else (root_now.loop_ticks - root.loop_ticks) / hz)
        return {"cpu_s": total / hz, "loop_s": loop_s, "exited_s": exited,
                "by_role": by_role, "processes": sorted(processes, key=lambda p: p["pid"])}


def pss_mb(pid: int) -> float | None:
    """Proportional set size (``/proc/PID/smaps_rollup``): shared pages divided among the
    processes that map them, so a tree's PSS adds up where its RSS counts shared pages
    once per process. None where the file is missing or unreadable."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    return None


def tree_memory(root: int) -> dict[str, Any]:
    """RSS and PSS of every live process of the tree: ``rss_mb`` and ``pss_mb`` summed
    (``pss_mb`` None if any process's is unknown), ``processes`` one by one."""
    readings = list(tree_readings(root).values())
    main = _main_role(readings)
    processes = []
    for r in readings:
        with contextlib.suppress(OSError, BenchError):
            processes.append({"pid": r.pid, "role": main if r.role == "main" else r.role,
                              "rss_mb": rss_mb(r.pid), "pss_mb": pss_mb(r.pid)})
    pss = [p["pss_mb"] for p in processes]
    return {"rss_mb": sum(p["rss_mb"] for p in processes),
            "pss_mb": None if None in pss else sum(pss), "count": len(processes),
            "processes": processes}


class Window:
    """CPU figures of a process and its descendants over a stretch of wall time: their CPU
    seconds (all threads of every process, the daemon's workers too: :class:`TreeCpu`),
    and how much of the time the main thread of the first process (its event loop) was on
    a CPU or runnable but waiting for one; plus the machine's CPU pressure."""

    def __init__(self, pid: int, descendants: bool = True) -> None:
        """``descendants`` False: ``pid`` alone (and the children it reaps)."""
        self.pid = pid
        self.wall0 = time.monotonic()
        self.tree = TreeCpu(pid, descendants)
        self.sched0 = schedstat(pid)
        self.psi0 = cpu_pressure_s()

    def close(self) -> dict[str, Any]:
        wall = max(1e-9, time.monotonic() - self.wall0)
        on_cpu, waiting = schedstat(self.pid)
        psi = cpu_pressure_s()
        tree = self.tree.close()
        return {
            "wall_s": wall, "cpu_s": tree["cpu_s"], "cpu_by_role_s": tree["by_role"],
            "processes": tree["processes"],
            "loop_on_cpu": (on_cpu - self.sched0[0]) / wall,
            "loop_waiting_for_cpu": (waiting - self.sched0[1]) / wall,
            "machine_cpu_pressure": None if psi is None or self.psi0 is None
            else (psi - self.psi0) / wall,
        }


# -- waiting ----------------------------------------------------------------------------


def wait_until(check: Callable[[], bool], what: str, proc: subprocess.Popen[bytes],
               log_path: Path, deadline_s: float = 30.0) -> None:
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        if proc.poll() is not None:
            raise BenchError(f"{what}: the process exited ({proc.returncode}); "
                             f"log {log_path}:\n{tail(log_path)}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if check():
                return
        time.sleep(0.05)
    raise BenchError(f"{what}: not ready after {deadline_s} s; log {log_path}:\n{tail(log_path)}")


def tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


# -- the admin API (stdlib: the orchestrator stays synchronous) ---------------------------


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float = 15.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def admin(sock_path: Path, method: str, path: str, body: Any = None,
          timeout: float = 15.0) -> tuple[int, Any]:
    conn = UnixConnection(sock_path, timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def admin_ok(sock_path: Path, method: str, path: str, body: Any = None,
             expect: int = 200) -> Any:
    """``admin`` that raises :class:`BenchError` unless the status is ``expect``."""
    status, answer = admin(sock_path, method, path, body)
    if status != expect:
        raise BenchError(f"{method} {path}: {status} {str(answer)[:300]}")
    return answer


def local_json(port: int, method: str, path: str, body: Any = None) -> Any:
    """A JSON request to a helper server of ours on 127.0.0.1; anything but 200 raises."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        answer = resp.read()
        if resp.status != 200:
            raise BenchError(f"{method} 127.0.0.1:{port}{path}: {resp.status}")
        return json.loads(answer)
    finally:
        conn.close()


# -- the daemon -------------------------------------------------------------------------


def daemon_env(**settings: str) -> dict[str, str]:
    # The fail backend makes the daemon keep secrets in its own 0600 file in the state dir.
    # The worker count comes from the bench's --workers (start_daemon), never from the
    # environment of whoever runs it.
    env = {key: value for key, value in os.environ.items() if key != "PALYRA_DAEMON_WORKERS"}
    return {**env, "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring", **settings}


@dataclass
class DaemonProc:
    proc: subprocess.Popen[bytes]
    state_dir: Path
    log_path: Path
    ingress_url: str
    workers: int = 0
    """Ingress worker processes (0: a single process)."""

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def socket(self) -> Path:
        return self.state_dir / "palyra.sock"


def start_daemon(children: Children, palyra: Path, state_dir: Path, log_path: Path, *,
                 settings: dict[str, str] | None = None,
                 many_files: bool = False, workers: str = "default") -> DaemonProc:
    """``palyra daemon run`` on a new state dir, ingress on 127.0.0.1 (any free port);
    returns once the admin socket answers and the daemon is the child we started (with
    workers: the control process). ``settings``: ``PALYRA_*`` environment variables.
    ``workers``: ``--workers`` (a count or ``auto``), or ``default``: no flag, the
    daemon's own default."""
    argv = [str(palyra), "daemon", "run", "--state-dir", str(state_dir),
            "--listen", "127.0.0.1:0"]
    if workers != "default":
        argv += ["--workers", workers]
    proc = children.spawn(argv, log_path, env=daemon_env(**(settings or {})),
                          many_files=many_files)
    sock = state_dir / "palyra.sock"
    wait_until(lambda: sock.exists() and admin(sock, "GET", "/v1/status")[0] == 200,
               "palyra daemon", proc, log_path)
    _, info = admin(sock, "GET", "/v1/status")
    if info.get("pid") != proc.pid:
        raise BenchError(f"daemon pid {info.get('pid')} is not the child's {proc.pid}")
    base = next(x["address"] for x in info["listeners"] if x["kind"] == "ingress")
    return DaemonProc(proc, state_dir, log_path, base,
                      sum(p.get("role") == "worker" for p in info.get("processes", [])))


def workers_list(text: str) -> list[str]:
    """``--workers 1,auto``: each a count of at least 1, ``auto`` or ``default`` (no flag:
    the daemon's own default), in order, without repeats. Raises ``ValueError``."""
    found: list[str] = []
    for item in (x.strip() for x in text.split(",")):
        if item not in ("auto", "default") and not (item.isdigit() and int(item) >= 1):
            raise ValueError(f"--workers: {item!r} is not a count, auto or default")
        if item not in found:
            found.append(item)
    if not found:
        raise ValueError("--workers: give at least one value")
    return found


# -- numbers and results ----------------------------------------------------------------


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of an already sorted sequence."""
    if not ordered:
        return None
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return float(ordered[rank - 1])


def filesystem_of(path: Path) -> str:
    best, fstype = "", "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            parts = line.split()
            mount = parts[1]
            if str(path).startswith(mount) and len(mount) > len(best):
                best, fstype = mount, parts[2]
    return fstype


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def machine() -> dict[str, Any]:
    return {"nproc": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "processor": cpu_model()}


def fsync_probe(directory: Path, count: int = 200) -> dict[str, float]:
    """Latency of one 4 KiB write + fsync in ``directory``: every durable commit pays it, and
    on a shared disk it moves from run to run."""
    path = directory / ".fsync-probe"
    took = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for i in range(count):
            os.pwrite(fd, os.urandom(4096), (i % 16) * 4096)
            start = time.perf_counter()
            os.fsync(fd)
            took.append((time.perf_counter() - start) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    took.sort()
    return {"p50_ms": percentile(took, 50) or 0.0, "p99_ms": percentile(took, 99) or 0.0}


def save_result(prefix: str, result: dict[str, Any]) -> Path:
    """Write ``bench/results/<prefix>-<UTC time>.json`` (gitignored); return its path."""
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"{prefix}-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


# -- publishing events (async, aiohttp on the admin socket) -----------------------------


@dataclass
class Published:
    """What a publishing run did: one entry per accepted event, in sending order."""

    seqs: list[int]
    rtt_ms: list[float]
    """Round trip of each accepted ``POST /v1/events``."""
    failures: dict[str, int]
    """Answers other than 201 (``"503"``) and client errors (``"ClientOSError"``)."""
    elapsed_s: float
    lag_max_ms: float
    """Paced runs: how far behind its schedule the latest send went."""

    @property
    def rate(self) -> float:
        return len(self.seqs) / self.elapsed_s if self.elapsed_s > 0 else 0.0


async def publish_events(sock_path: Path, event_type: str, count: int,
                         data: Callable[[int], dict[str, Any]], *, rate: float | None = None,
                         concurrency: int = 32, deadline_s: float = 120.0) -> Published:
    """``count`` events ``POST /v1/events`` on the admin socket. ``rate`` None: as fast as
    ``concurrency`` requests in flight allow (a closed loop); else paced at ``rate`` per
    second from a fixed schedule (an open loop: a slow answer does not delay the next
    send), with at most ``concurrency`` in flight. ``data(i)`` is the event's data; the
    wall time of the send is added as ``sent_at`` (seconds, float). Bounded by
    ``deadline_s``: what is still in flight then is cancelled and counted as failed."""
    import aiohttp  # only the load needs it; the orchestrator's helpers stay stdlib

    results: list[tuple[int, int, float]] = []  # (i, seq, rtt)
    failures: dict[str, int] = {}
    gate = asyncio.Semaphore(concurrency)
    connector = aiohttp.UnixConnector(path=str(sock_path), limit=concurrency)
    headers = {"Content-Type": "application/json"}
    lag_max = 0.0

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        try:
            sent_at = time.time()
            body = json.dumps({"type": event_type, "data": {**data(i), "sent_at": sent_at}},
                              separators=(",", ":"))
            start = time.perf_counter()
            async with session.post("http://palyra/v1/events", data=body,
                                    headers=headers) as resp:
                answer = await resp.read()
                rtt = (time.perf_counter() - start) * 1000
                if resp.status == 201:
                    results.append((i, int(json.loads(answer)["seq"]), rtt))
                else:
                    failures[str(resp.status)] = failures.get(str(resp.status), 0) + 1
        except aiohttp.ClientError as exc:
            failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
        finally:
            gate.release()

    started = time.perf_counter()
    tasks: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(connector=connector) as session:
        try:
            async with asyncio.timeout(deadline_s):
                for i in range(count):
                    if rate is not None:
                        due = started + i / rate
                        delay = due - time.perf_counter()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    await gate.acquire()
                    if rate is not None:
                        lag_max = max(lag_max, time.perf_counter() - (started + i / rate))
                    task = asyncio.create_task(one(session, i))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                while tasks:
                    await asyncio.wait(set(tasks))
        except TimeoutError:
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            failures["deadline"] = count - len(results) - sum(failures.values())
    elapsed = time.perf_counter() - started
    results.sort()
    return Published([seq for _, seq, _ in results], [rtt for _, _, rtt in results],
                     failures, elapsed, lag_max * 1000)


# -- summaries and the main function of a benchmark script --------------------------------


def medians(rows: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Per key of the first row whose value is a number (or None): the median over the rows
    that have a number there, or None if none has."""
    out: dict[str, float | None] = {}
    for key, value in rows[0].items():
        if isinstance(value, int | float) or value is None:
            found = [row[key] for row in rows if isinstance(row.get(key), int | float)]
            out[key] = float(statistics.median(found)) if found else None
    return out


def check_targets(values: dict[str, float | None],
                  targets: dict[str, tuple[float, str]]) -> list[dict[str, Any]]:
    """``targets``: name -> (limit, "min" = at least | "max" = at most)."""
    checked = []
    for name, value in values.items():
        limit, kind = targets[name]
        met = value is not None and (value >= limit if kind == "min" else value <= limit)
        checked.append({"name": name, "value": value, "target": limit,
                        "kind": "at least" if kind == "min" else "at most", "met": met})
    return checked


def render_targets(checked: list[dict[str, Any]]) -> list[str]:
    lines = ["targets:"]
    for t in checked:
        value = "n/a" if t["value"] is None else f"{t['value']:.2f}"
        mark = "met" if t["met"] else "NOT met"
        lines.append(f"  {t['name']:<26} {value:>8}  ({t['kind']} {t['target']:g})  {mark}")
    return lines


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f} ms"


def run_benchmark(prefix: str, args: Any,
                  benchmark: Callable[[Any, Children], dict[str, Any]],
                  render: Callable[[dict[str, Any]], str]) -> int:
    """Run ``benchmark`` with every child stopped at the end whatever happens (TERM and
    Ctrl-C too), save the result as ``bench/results/<prefix>-<time>.json``, print it."""
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
    path = save_result(prefix, result)
    print(json.dumps(result, indent=2) if args.json else render(result))
    log(f"saved {path.relative_to(REPO)}")
    return 0
