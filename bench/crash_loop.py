"""Crash loop: SIGKILL the daemon under load, round after round, and check that nothing it
acknowledged is lost and no delivery is lost or sent twice in one life.

Each round loads a real ``palyra daemon run`` child (the state dir is reused across rounds)
with signed GitHub pushes on the ingress and published events (``POST /v1/events`` on the
admin socket), both delivered by two subscriptions to a receiver child process, then kills
it with SIGKILL after a random, bounded delay and starts it again. After every restart:

- every ingress delivery answered 202 and every publish answered 201 is in the journal;
- ``POST /v1/journal/verify`` says the hash chain is intact.

After the last round the daemon drains, then:

- every journaled event that matches a subscription reached the receiver (which
  deduplicates on ``webhook-id``, as Standard Webhooks receivers do, and verifies the
  signature with the reference library);
- no event arrived twice within one life of the daemon (``twice``), so each kill causes at
  most one extra attempt per delivery that was in flight (``resent``, at most
  ``RESEND_FACTOR`` x the in-flight caps of the subscriptions: requests open at the
  receiver, and as many answered whose outcome was not committed yet).

    .venv/bin/python bench/crash_loop.py                      # 10 rounds, under a minute
    .venv/bin/python bench/crash_loop.py --rounds 3 --seed 7 --json
    .venv/bin/python bench/crash_loop.py --workers 2          # also SIGKILL a worker

``--workers`` is the daemon's ``--workers`` (a count or ``auto``); without it the daemon
runs with its own default. When the daemon has ingress workers (a control process and N
workers), each round first SIGKILLs a random worker at a random moment under the load,
waits (bounded, the load going on) until the control process has journaled
``daemon.worker_restarted`` for that pid, has the senders open new connections until the
replacement has accepted webhooks (kept-alive connections stay where they were accepted),
then SIGKILLs the control process as above and checks that its workers stop (they see
their channel end and drain). Checks added with workers: each killed worker restarted and
journaled once, each replacement took load, no worker outlived its control process.

Exit status 0 when every check holds, 1 otherwise. Results are also saved as
``bench/results/crash-loop-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from github_push import github_push_payload, github_signature

from palyra_py.outbound.dispatcher import RESEND_FACTOR

SECRET = "crash-loop-github-secret"
RESULTS = Path(__file__).resolve().parent / "results"
PUBLISH_TYPE = "bench.tick"
# Sink paths at the receiver, one per subscription.
SUBSCRIPTIONS = {"pushes": ["github.push"], "app": ["bench.*"]}
MAX_IN_FLIGHT = 10  # per subscription: requests open at the receiver at once
# Attempts launched and not yet recorded, per subscription: what a kill can cut (those open,
# and as many answered whose outcome was not committed yet).
RESEND_CAP = RESEND_FACTOR * MAX_IN_FLIGHT
RESTART_WAIT_S = 60.0  # longest wait for a killed worker's replacement (it imports, opens)
TAKE_LOAD_WAIT_S = 10.0  # longest wait for a replacement to accept its first webhook
ORPHAN_WAIT_S = 30.0  # longest wait for the workers of a killed control process to stop



def log(message: str) -> None:
    print(f"[crash-loop] {message}", file=sys.stderr, flush=True)


# -- the receiver (a child process: python crash_loop.py --serve-receiver) ----------------


def serve_receiver() -> None:
    """Answer 200 to every POST /sink/{name} (a receiver that deduplicates answers 200 to a
    duplicate too); record (name, webhook-id, life) for each one; verify its signature once
    the bench has handed over the subscription's secret. The bench sets the life (the
    daemon's start number) before each start."""
    from aiohttp import web
    from standardwebhooks import Webhook

    arrivals: list[tuple[str, str, int]] = []
    verifiers: dict[str, Webhook] = {}
    state = {"life": 0, "bad_signatures": 0, "unverified": 0}

    async def sink(request: web.Request) -> web.Response:
        body = await request.read()
        name = request.match_info["name"]
        verifier = verifiers.get(name)
        if verifier is None:
            state["unverified"] += 1
        else:
            try:
                verifier.verify(body, dict(request.headers))
            except Exception:
                state["bad_signatures"] += 1
        arrivals.append((name, request.headers.get("webhook-id", ""), state["life"]))
        return web.Response(text="ok")

    async def control(request: web.Request) -> web.Response:
        order = await request.json()
        if "life" in order:
            state["life"] = int(order["life"])
        for name, secret in order.get("secrets", {}).items():
            verifiers[name] = Webhook(secret)
        return web.json_response({"ok": True})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"arrivals": arrivals, **state})

    async def main() -> None:
        app = web.Application()
        app.add_routes([web.post("/sink/{name}", sink), web.post("/_control", control),
                        web.get("/_stats", stats)])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        sockets = site._server.sockets  # type: ignore[union-attr]
        print(f"port {sockets[0].getsockname()[1]}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# -- child processes ----------------------------------------------------------------------

_LIBC: Any = None
with contextlib.suppress(OSError):
    _LIBC = ctypes.CDLL(None, use_errno=True)


def die_with_parent() -> None:
    # PR_SET_PDEATHSIG: the kernel kills the child if this script dies, even by SIGKILL.
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGKILL)


class Child:
    """A child process whose output (stdout and stderr) goes to a log file; it dies with
    this script, even if this script is killed."""

    def __init__(self, argv: Sequence[str], log_path: Path, env: dict[str, str]) -> None:
        self.argv, self.log_path, self.env = list(argv), log_path, env
        self.proc: asyncio.subprocess.Process | None = None
        self._copier: asyncio.Task[None] | None = None
        self._out = open(log_path, "ab")  # closed once the child's output ends

    async def start(self, ready: str) -> dict[str, Any]:
        """Start; return the first stdout/stderr line (JSON, or ``{"raw": ...}``) that
        contains ``ready``."""
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, env=self.env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        assert self.proc.stdout is not None
        out = self._out
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
            out.write(line)
            if not line:
                out.close()
                raise RuntimeError(f"{self.argv[:4]} exited early; see {self.log_path}")
            if ready.encode() in line:
                break
        self._copier = asyncio.create_task(self._copy(out))
        try:
            found: dict[str, Any] = json.loads(line)
        except ValueError:
            found = {"raw": line.decode(errors="replace").strip()}
        return found

    async def _copy(self, out: Any) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            async for line in self.proc.stdout:
                out.write(line)
        finally:
            out.close()

    async def end(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), 30)
        if self._copier is not None:
            await asyncio.wait_for(self._copier, 10)
        return code


def daemon_child(state_dir: Path, log_path: Path, workers: str | None = None) -> Child:
    """``workers``: the daemon's ``--workers``; None: no flag (the daemon's default)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PALYRA_")}
    env.update({
        "PALYRA_STATE_DIR": str(state_dir),
        # Loopback receiver: allowed explicitly, as the SSRF guard refuses it by default.
        "PALYRA_DELIVERY_ALLOW_PRIVATE_NETWORKS": "1",
        # A headless server's keyring: the daemon's 0600 file fallback, in the state dir.
        "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
    })
    argv = [sys.executable, "-m", "palyra_py", "daemon", "run", "--listen", "127.0.0.1:0",
            "--log-format", "json"] + ([] if workers is None else ["--workers", workers])
    return Child(argv, log_path, env)


# -- one round ----------------------------------------------------------------------------


@dataclass
class Round:
    number: int
    kill_after_s: float
    acked_ingress: list[str] = field(default_factory=list)
    acked_publish: list[str] = field(default_factory=list)
    other_answers: dict[str, int] = field(default_factory=dict)
    journaled_ids: list[str] = field(default_factory=list)
    """Event ids of this round's ingress and publish events found in the journal after the
    restart: the acknowledged ones and those committed but never answered (in flight)."""
    lost: int = 0
    """Acknowledged but not in the journal: must be 0."""
    verify_ok: bool = False
    verify_checked: int = 0
    expected_deliveries: int = 0
    delivered: int = 0
    resent: int = 0
    """Arrivals, after the restart, of events that had arrived before the kill: the
    attempts in flight at the kill, sent again (at most one each)."""
    twice: int = 0
    """Arrivals of an event already delivered in the same life of the daemon (must be 0)."""
    load_s: float = 0.0
    """From the start of the load to the control process's SIGKILL (``kill_after_s``, or
    more with a worker kill: the bench waits for the replacement)."""
    worker_killed_after_s: float | None = None
    """With workers: when a worker was SIGKILLed (before the control process)."""
    worker_killed_pid: int | None = None
    worker_restart_s: float | None = None
    """From the worker's SIGKILL until its ``daemon.worker_restarted`` was journaled (None:
    not within ``RESTART_WAIT_S``)."""
    worker_restart_event: bool = False
    """A ``daemon.worker_restarted`` names the killed pid as ``previous_pid``."""
    acked_before_worker_kill: int = 0
    acked_until_worker_restart: int = 0
    """Acknowledged between the worker's kill and its restart: the other workers served."""
    replacement_accepted: int | None = None
    """Webhooks the replacement worker had accepted just before the control process's kill
    (``daemon status``)."""
    connection_renewals: int = 0
    """How many times the senders opened new connections before the replacement accepted
    one (each time, the kernel hands them to whichever worker accepts first)."""
    ingress_errors_alive: int = 0
    """Ingress requests that failed (connection reset, refused) while the control process
    lived: the killed worker's connections; the sender sent again."""
    worker_restarts_journaled: int = 0
    """``daemon.worker_restarted`` events journaled in this life (1 per worker kill)."""
    orphans_gone_s: float | None = None
    """With workers: from the control process's SIGKILL until every worker of that life had
    exited (None: some still ran after ``ORPHAN_WAIT_S``)."""

    @property
    def acked(self) -> int:
        return len(self.acked_ingress) + len(self.acked_publish)

    @property
    def journaled(self) -> int:
        return len(self.journaled_ids)

    def to_dict(self) -> dict[str, Any]:
        fields = asdict(self)
        for name in ("acked_ingress", "acked_publish", "journaled_ids"):
            fields[name] = len(fields[name])
        return {**fields, "acked": self.acked, "journaled": self.journaled}


class Senders:
    """The ingress senders' HTTP session. Its connections are kept alive, so they stay
    with the workers that accepted them; ``renew`` makes the senders open new ones, which
    the kernel hands to whichever worker accepts first (a replacement too)."""

    def __init__(self) -> None:
        self.session = self._new()
        self._old: list[aiohttp.ClientSession] = []

    @staticmethod
    def _new() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))

    def renew(self) -> None:
        """New requests go out on new connections; those in flight finish on theirs."""
        self._old.append(self.session)
        self.session = self._new()

    async def close_old(self) -> None:
        for session in self._old:
            await session.close()
        self._old.clear()

    async def close(self) -> None:
        await self.close_old()
        await self.session.close()


async def load(round_: Round, ingress_url: str, admin: aiohttp.ClientSession,
               senders: Senders, body: bytes, args: argparse.Namespace,
               dying: asyncio.Event) -> None:
    """Send until the daemon dies: every sender returns on its first connection error
    once ``dying`` is set (before that, an error is a killed worker's: send on)."""
    other: Counter[str] = Counter()

    async def ingress(worker: int) -> None:
        for n in range(1_000_000):
            delivery = f"r{round_.number:03d}-w{worker:02d}-{n:07d}-crash-loop"
            # Each event its own signed content: one body under many delivery ids would be
            # answered as replays (200 duplicate), never acknowledged again.
            own = b'{"bench_delivery":"' + delivery.encode() + b'",' + body[1:]
            headers = {"Content-Type": "application/json", "X-GitHub-Event": "push",
                       "X-GitHub-Delivery": delivery,
                       "X-Hub-Signature-256": github_signature(SECRET.encode(), own)}
            try:
                async with senders.session.post(ingress_url, data=own,
                                                headers=headers) as resp:
                    await resp.read()
            except (aiohttp.ClientError, OSError, TimeoutError):
                if dying.is_set():
                    return
                round_.ingress_errors_alive += 1
                continue
            if resp.status == 202:
                round_.acked_ingress.append(delivery)
            else:
                other[f"ingress {resp.status}"] += 1

    async def publisher(worker: int) -> None:
        for n in range(1_000_000):
            order = {"type": PUBLISH_TYPE, "data": {"round": round_.number, "w": worker, "n": n}}
            try:
                async with admin.post("/v1/events", json=order) as resp:
                    answer = await resp.json()
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
                return
            if resp.status == 201:
                round_.acked_publish.append(answer["event_id"])
            else:
                other[f"publish {resp.status}"] += 1

    workers = [asyncio.create_task(ingress(w)) for w in range(args.ingress_workers)]
    workers += [asyncio.create_task(publisher(w)) for w in range(args.publish_workers)]
    await asyncio.wait_for(asyncio.gather(*workers), args.max_kill_s + RESTART_WAIT_S + 60)
    round_.other_answers = dict(other)


# -- the journal as the daemon reports it --------------------------------------------------


@dataclass
class Journaled:
    """What the journal holds, as found after each restart."""

    nonces: dict[str, str] = field(default_factory=dict)
    """GitHub delivery id -> journal event id (``webhook.received``)."""
    published: set[str] = field(default_factory=set)
    """Event ids of ``bench.tick``."""
    seq_of: dict[str, int] = field(default_factory=dict)
    scanned: int = 0


async def scan(admin: aiohttp.ClientSession, journal: Journaled) -> list[str]:
    """Read the events appended since the last scan; return their event ids."""
    new: list[str] = []
    while True:
        params = [("type", "webhook.received"), ("type", PUBLISH_TYPE),
                  ("after_seq", str(journal.scanned)), ("limit", "5000")]
        async with admin.get("/v1/events", params=params) as resp:
            page = await resp.json()
        for event in page["events"]:
            event_id = event["event_id"]
            if event["kind"] == "webhook.received":
                journal.nonces[event["payload"]["replay_protection"]["nonce"]] = event_id
            else:
                journal.published.add(event_id)
            journal.seq_of[event_id] = event["seq"]
            new.append(event_id)
        if page["events"]:
            journal.scanned = page["events"][-1]["seq"]
        if page["next_after_seq"] is None:
            return new


async def verify(admin: aiohttp.ClientSession) -> dict[str, Any]:
    async with admin.post("/v1/journal/verify") as resp:
        verdict: dict[str, Any] = await resp.json()
    return verdict


def admin_session(state_dir: Path) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.UnixConnector(path=str(state_dir / "palyra.sock")),
        base_url="http://admin", timeout=aiohttp.ClientTimeout(total=60))


async def admin_call(admin: aiohttp.ClientSession, method: str, path: str,
                     body: Any = None) -> tuple[int, Any]:
    async with admin.request(method, path, json=body) as resp:
        return resp.status, await resp.json()


def running(pid: int) -> bool:
    """The process exists and is no zombie (an orphan is reaped by whoever adopts it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


async def accepted_by(admin: aiohttp.ClientSession, pid: int) -> int | None:
    """Webhooks the worker ``pid`` has accepted (``daemon status``), None if not listed."""
    _, status = await admin_call(admin, "GET", "/v1/status")
    return next((p["accepted"] for p in status["processes"] if p["pid"] == pid), None)


async def workers_gone(pids: list[int], since: float) -> float | None:
    """Seconds from ``since`` until none of ``pids`` runs; None after ``ORPHAN_WAIT_S``."""
    while any(running(pid) for pid in pids):
        if time.monotonic() - since > ORPHAN_WAIT_S:
            return None
        await asyncio.sleep(0.05)  # polling a bounded wait of the bench, not a test
    return round(time.monotonic() - since, 3)



# -- the run --------------------------------------------------------------------------------


class CrashLoop:
    """One run: the receiver, the daemon's successive lives, what was acknowledged."""

    def __init__(self, args: argparse.Namespace, work: Path, http: aiohttp.ClientSession
                 ) -> None:
        self.args, self.work, self.http = args, work, http
        self.senders = Senders()
        self.state_dir = work / "state"
        self.rng = random.Random(args.seed)
        self.body = github_push_payload()
        self.journal = Journaled()
        self.rounds: list[Round] = []
        self.life = 0
        self.sink = ""
        self.receiver: Child | None = None
        self.daemon: Child | None = None
        self.ingress_url = ""
        self.worker_restarts_seen = 0
        self.workers_seen = 0

    async def tell_receiver(self, order: dict[str, Any]) -> None:
        async with self.http.post(f"{self.sink}/_control", json=order) as resp:
            assert resp.status == 200, await resp.text()

    async def start_receiver(self) -> None:
        self.receiver = Child([sys.executable, __file__, "--serve-receiver"],
                              self.work / "receiver.log", dict(os.environ))
        port = int((await self.receiver.start("port "))["raw"].split()[1])
        self.sink = f"http://127.0.0.1:{port}"

    async def start_daemon(self) -> None:
        """The daemon's next life; the receiver tags what arrives from now on with it."""
        self.life += 1
        await self.tell_receiver({"life": self.life})
        self.daemon = daemon_child(self.state_dir, self.work / f"daemon-{self.life:03d}.log",
                                   self.args.workers)
        up = await self.daemon.start('"daemon_started"')
        self.ingress_url = f"{up['ingress']}/hooks/gh"

    async def set_up(self) -> None:
        async with admin_session(self.state_dir) as admin:
            status, answer = await admin_call(admin, "POST", "/v1/webhooks", {
                "integration_id": "gh", "provider": "github", "secret": {"value": SECRET}})
            assert status == 201, answer
            secrets: dict[str, str] = {}
            for name, patterns in SUBSCRIPTIONS.items():
                status, answer = await admin_call(admin, "POST", "/v1/subscriptions", {
                    "subscription_id": name, "url": f"{self.sink}/sink/{name}",
                    "events": patterns, "max_in_flight": MAX_IN_FLIGHT})
                assert status == 201, answer
                secrets[name] = answer["secret"]
            await self.tell_receiver({"secrets": secrets})
            await scan(admin, self.journal)

    async def one_round(self, number: int) -> Round:
        args = self.args
        round_ = Round(number, round(self.rng.uniform(args.min_kill_s, args.max_kill_s), 3))
        self.rounds.append(round_)
        assert self.daemon is not None
        dying = asyncio.Event()
        async with admin_session(self.state_dir) as admin:
            _, status = await admin_call(admin, "GET", "/v1/status")
            workers = [p["pid"] for p in status["processes"] if p["role"] == "worker"]
            self.workers_seen = max(self.workers_seen, len(workers))
            started = time.monotonic()
            loader = asyncio.create_task(
                load(round_, self.ingress_url, admin, self.senders, self.body, args, dying))
            if workers:
                await self.kill_a_worker(round_, admin, workers, started)
            else:
                await asyncio.sleep(round_.kill_after_s)  # the random moment of the kill
            round_.load_s = round(time.monotonic() - started, 3)
            if workers:  # the workers serving now, the replacement among them
                _, status = await admin_call(admin, "GET", "/v1/status")
                workers = [p["pid"] for p in status["processes"] if p["role"] == "worker"]
            dying.set()
            killed_at = time.monotonic()
            code = await self.daemon.end(signal.SIGKILL)
            await loader  # returns once the workers, draining, refuse connections
            await self.senders.close_old()
            if workers:
                round_.orphans_gone_s = await workers_gone(workers, killed_at)
        await self.start_daemon()
        async with admin_session(self.state_dir) as admin:
            new = await scan(admin, self.journal)
            found = {self.journal.nonces.get(d) for d in round_.acked_ingress}
            found |= {e for e in round_.acked_publish if e in self.journal.published}
            found.discard(None)
            round_.lost = round_.acked - len(found)
            round_.journaled_ids = sorted(new)
            verdict = await verify(admin)
            round_.verify_ok, round_.verify_checked = verdict["ok"], verdict["checked"]
            if workers:
                _, restarts = await admin_call(
                    admin, "GET", "/v1/events?type=daemon.worker_restarted&limit=1000")
                seen = len(restarts["events"])
                round_.worker_restarts_journaled = seen - self.worker_restarts_seen
                self.worker_restarts_seen = seen
        worker = ""
        if round_.worker_killed_pid is not None:
            restart = ("not restarted" if round_.worker_restart_s is None
                       else f"restarted in {round_.worker_restart_s:.2f} s")
            worker = (f" worker {round_.worker_killed_pid} killed at"
                      f" {round_.worker_killed_after_s:.2f} s, {restart},"
                      f" {round_.acked_until_worker_restart} acknowledged meanwhile,"
                      f" replacement accepted {round_.replacement_accepted}"
                      f" ({round_.connection_renewals} connection renewals);")
        log(f"round {number}:{worker} control killed after {round_.load_s:.2f} s (exit"
            f" {code}), {round_.acked} acknowledged, {round_.journaled} journaled,"
            f" {round_.lost} lost, verify {'ok' if round_.verify_ok else verdict}")
        return round_

    async def kill_a_worker(self, round_: Round, admin: aiohttp.ClientSession,
                            workers: list[int], started: float) -> None:
        """SIGKILL a random worker at a random moment of the load; wait (bounded) for the
        control process to journal its restart; let the replacement take load until the
        round's kill moment (and at least a little while)."""
        round_.worker_killed_after_s = round(
            self.rng.uniform(0.05, round_.kill_after_s * 0.6), 3)
        await asyncio.sleep(round_.worker_killed_after_s)  # a random moment
        victim = self.rng.choice(workers)
        round_.acked_before_worker_kill = round_.acked
        _, page = await admin_call(
            admin, "GET", "/v1/events?type=daemon.worker_restarted&limit=1000")
        after_seq = max((e["seq"] for e in page["events"]), default=0)
        os.kill(victim, signal.SIGKILL)
        round_.worker_killed_pid = victim
        killed = time.monotonic()
        replacement: int | None = None
        while time.monotonic() - killed < RESTART_WAIT_S:
            _, page = await admin_call(
                admin, "GET",
                f"/v1/events?type=daemon.worker_restarted&after_seq={after_seq}&limit=100")
            found = [e["payload"] for e in page["events"]
                     if e["payload"].get("previous_pid") == victim]
            if found:
                round_.worker_restart_s = round(time.monotonic() - killed, 3)
                round_.worker_restart_event = True
                replacement = found[0].get("pid")
                break
            await asyncio.sleep(0.05)  # polling a bounded wait of the bench, not a test
        round_.acked_until_worker_restart = round_.acked - round_.acked_before_worker_kill
        if replacement is not None:
            # The senders' connections are kept alive where they were accepted, and a busy
            # worker may accept a whole burst of new ones: renew them until the replacement
            # has taken some (bounded).
            taken = time.monotonic()
            while True:
                self.senders.renew()
                round_.connection_renewals += 1
                await asyncio.sleep(0.3)  # let the new connections carry requests
                round_.replacement_accepted = await accepted_by(admin, replacement)
                if round_.replacement_accepted or time.monotonic() - taken > TAKE_LOAD_WAIT_S:
                    break
        elapsed = time.monotonic() - started
        await asyncio.sleep(max(round_.kill_after_s - elapsed, self.rng.uniform(0.2, 0.6)))
        if replacement is not None:
            round_.replacement_accepted = await accepted_by(admin, replacement)

    def expected(self) -> set[tuple[str, str]]:
        """(sink, event id) of every journaled event that matches a subscription."""
        found = {("pushes", e) for e in self.journal.nonces.values()}
        return found | {("app", e) for e in self.journal.published}

    async def drain(self) -> tuple[dict[str, Any], set[tuple[str, str]], Any, Any,
                                   dict[str, Any]]:
        """Wait (bounded) until every expected event arrived and the daemon has nothing
        pending; return the receiver's stats, what is missing, pending and failed
        deliveries and a last verdict on the chain."""
        expected = self.expected()
        deadline = time.monotonic() + self.args.drain_timeout_s
        async with admin_session(self.state_dir) as admin:
            while True:
                async with self.http.get(f"{self.sink}/_stats") as resp:
                    stats = await resp.json()
                missing = expected - {(name, wid) for name, wid, _ in stats["arrivals"]}
                _, pending = await admin_call(admin, "GET", "/v1/deliveries?status=pending")
                if (not missing and not pending["deliveries"]) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.25)  # polling the end condition of a bench, bounded
            _, failed = await admin_call(admin, "GET", "/v1/deliveries?status=failed")
            verdict = await verify(admin)
        return stats, missing, pending, failed, verdict

    async def stop(self) -> None:
        await self.senders.close()
        for child in (self.daemon, self.receiver):
            if child is not None and child.proc is not None:
                await child.end()


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        bench = CrashLoop(args, work, http)
        try:
            await bench.start_receiver()
            await bench.start_daemon()
            await bench.set_up()
            for number in range(1, args.rounds + 1):
                if time.monotonic() - started > args.budget_s:
                    log(f"time budget of {args.budget_s:g} s spent after {number - 1} rounds")
                    break
                await bench.one_round(number)
            stats, missing, pending, failed, verdict = await bench.drain()
        finally:
            await bench.stop()
    return summarize(args, bench.rounds, bench.journal, stats, bench.expected(), missing,
                     pending, failed, verdict, time.monotonic() - started,
                     bench.workers_seen)


def summarize(args: argparse.Namespace, rounds: list[Round], journal: Journaled,
              stats: dict[str, Any], expected: set[tuple[str, str]],
              missing: set[tuple[str, str]], pending: Any, failed: Any,
              final_verdict: dict[str, Any], elapsed: float,
              workers_seen: int = 0) -> dict[str, Any]:
    arrivals = [(name, wid, int(life)) for name, wid, life in stats["arrivals"]]
    per_life = Counter(arrivals)
    same_life_duplicates = sum(n - 1 for n in per_life.values() if n > 1)
    first_life: dict[tuple[str, str], int] = {}
    for name, wid, life in arrivals:
        first_life.setdefault((name, wid), life)
    arrived = set(first_life)
    published = journal.published
    for round_ in rounds:
        # Life r ends with round r's kill; what life r+1 sends again is that kill's doing.
        round_.resent = sum(n for (name, wid, life), n in per_life.items()
                            if life == round_.number + 1
                            and first_life[(name, wid)] <= round_.number)
        round_.twice = sum(n - 1 for (_, _, life), n in per_life.items()
                           if life == round_.number and n > 1)
        wanted = {("app" if e in published else "pushes", e) for e in round_.journaled_ids}
        round_.expected_deliveries = len(wanted)
        round_.delivered = len(wanted & arrived)
    checks = {
        "no_acknowledged_event_lost": all(r.lost == 0 for r in rounds),
        "chain_verifies_after_every_restart": all(r.verify_ok for r in rounds)
        and bool(final_verdict.get("ok")),
        "every_journaled_event_delivered": not missing,
        "at_most_one_arrival_per_life": same_life_duplicates == 0,
        "resent_within_the_resend_cap": all(
            r.resent <= RESEND_CAP * len(SUBSCRIPTIONS) for r in rounds),
        "signatures_verify": stats["bad_signatures"] == 0 and stats["unverified"] == 0,
        "nothing_pending_or_failed": not pending["deliveries"] and not failed["deliveries"],
        "every_killed_worker_restarted_and_journaled_once": all(
            r.worker_restarts_journaled == (r.worker_killed_pid is not None)
            and (r.worker_killed_pid is None or r.worker_restart_event) for r in rounds),
        "workers_stop_with_their_control_process": all(
            r.orphans_gone_s is not None for r in rounds if r.worker_killed_pid is not None),
        "every_replacement_took_load": all(
            r.worker_killed_pid is None or (r.replacement_accepted or 0) > 0 for r in rounds),
    }
    return {
        "command": " ".join([".venv/bin/python bench/crash_loop.py", *sys.argv[1:]]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                 if k != "serve_receiver"},
        "elapsed_s": round(elapsed, 1),
        "rounds": [round_.to_dict() for round_ in rounds],
        "totals": {
            "acked": sum(r.acked for r in rounds),
            "journaled_events": len(journal.seq_of),
            "expected_deliveries": len(expected),
            "delivered": len(expected) - len(missing),
            "arrivals": len(arrivals),
            "resent_after_kills": sum(r.resent for r in rounds),
            "same_life_duplicates": same_life_duplicates,
            "same_life_examples": [[name, wid, life, n] for (name, wid, life), n
                                   in per_life.items() if n > 1][:10],
            "bad_signatures": stats["bad_signatures"],
            "other_answers": dict(sum((Counter(r.other_answers) for r in rounds), Counter())),
            "final_chain_rows": final_verdict.get("checked"),
            "workers": workers_seen,
            "worker_kills": sum(r.worker_killed_pid is not None for r in rounds),
            "worker_restarts_journaled": sum(r.worker_restarts_journaled for r in rounds),
            "worker_restart_s_max": max((r.worker_restart_s for r in rounds
                                         if r.worker_restart_s is not None), default=None),
            "orphans_gone_s_max": max((r.orphans_gone_s for r in rounds
                                       if r.orphans_gone_s is not None), default=None),
            "acked_while_a_worker_restarted": sum(r.acked_until_worker_restart
                                                  for r in rounds),
            "ingress_errors_alive": sum(r.ingress_errors_alive for r in rounds),
            "resent_max_per_round": max((r.resent for r in rounds), default=0),
            "resent_cap_per_round": RESEND_CAP * len(SUBSCRIPTIONS),
        },
        "checks": checks,
        "ok": all(checks.values()),
    }


def render(result: dict[str, Any]) -> str:
    t = result["totals"]
    workers = bool(t["worker_kills"])
    head = (f"{'round':>5} {'kill@s':>6} {'acked':>6} {'(ingress+publish)':>17} "
            f"{'journaled':>9} {'lost':>4} {'delivered':>11} {'resent':>6} {'twice':>5} "
            f"{'verify':>6}")
    if workers:
        head += (f" {'worker@s':>8} {'restart s':>9} {'acked meanwhile':>15} {'new took':>8}"
                 f" {'renewed':>7} {'gone s':>6}")
    lines = [head, "-" * len(head)]
    for r in result["rounds"]:
        split = f"({r['acked_ingress']}+{r['acked_publish']})"
        delivered = f"{r['delivered']}/{r['expected_deliveries']}"
        line = (f"{r['number']:>5} {r['load_s']:>6.2f} {r['acked']:>6} {split:>17} "
                f"{r['journaled']:>9} {r['lost']:>4} {delivered:>11} {r['resent']:>6} "
                f"{r['twice']:>5} {'ok' if r['verify_ok'] else 'BROKEN':>6}")
        if workers:
            restart = "NONE" if r["worker_restart_s"] is None else f"{r['worker_restart_s']:.2f}"
            took = "n/a" if r["replacement_accepted"] is None else str(r["replacement_accepted"])
            gone = "NO" if r["orphans_gone_s"] is None else f"{r['orphans_gone_s']:.2f}"
            line += (f" {r['worker_killed_after_s'] or 0:>8.2f} {restart:>9}"
                     f" {r['acked_until_worker_restart']:>15} {took:>8}"
                     f" {r['connection_renewals']:>7} {gone:>6}")
        lines.append(line)
    lines += [
        "",
        f"acknowledged {t['acked']}, journaled {t['journaled_events']} (the rest were in flight"
        f" at a kill: committed, never answered), delivered {t['delivered']}/"
        f"{t['expected_deliveries']} in {t['arrivals']} arrivals: {t['resent_after_kills']}"
        f" sent again after a kill (at most {t['resent_max_per_round']} in a round, bound"
        f" {t['resent_cap_per_round']}), {t['same_life_duplicates']} twice in one life;"
        f" chain of {t['final_chain_rows']} rows verified; {result['elapsed_s']} s"
        f" (seed {result['args']['seed']})",
    ]
    if workers:
        lines.append(
            f"workers: {t['workers']}; {t['worker_kills']} worker kills, "
            f"{t['worker_restarts_journaled']} daemon.worker_restarted journaled (slowest"
            f" restart {t['worker_restart_s_max']} s), {t['acked_while_a_worker_restarted']}"
            f" acknowledged while a worker restarted, {t['ingress_errors_alive']} ingress"
            " requests cut by a worker kill (sent again); after each control process's kill"
            f" its workers were gone within {t['orphans_gone_s_max']} s")
    lines.append("checks: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}"
                                        for k, v in result["checks"].items()))
    if t["other_answers"]:
        lines.append(f"answers other than 202/201: {t['other_answers']}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="kill/restart rounds (10)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the kill timing")
    parser.add_argument("--min-kill-s", type=float, default=0.3,
                        help="shortest load before a kill (0.3)")
    parser.add_argument("--max-kill-s", type=float, default=3.0,
                        help="longest load before a kill (3.0)")
    parser.add_argument("--ingress-workers", type=int, default=8,
                        help="concurrent ingress senders (8)")
    parser.add_argument("--workers", default=None, metavar="N|auto",
                        help="the daemon's --workers (default: no flag, the daemon's own "
                        "default); with workers, also SIGKILL a worker each round")
    parser.add_argument("--publish-workers", type=int, default=4,
                        help="concurrent publishers on the admin socket (4)")
    parser.add_argument("--drain-timeout-s", type=float, default=60.0,
                        help="longest wait for the last deliveries (60)")
    parser.add_argument("--budget-s", type=float, default=150.0,
                        help="no new round starts after this many seconds (150)")
    parser.add_argument("--tmp-dir", type=Path, default=Path("/tmp"),
                        help="where the work dir goes; keep it short (Unix socket paths)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, state)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--serve-receiver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)
    if not 0 < args.min_kill_s <= args.max_kill_s <= 60 or not 1 <= args.rounds <= 1000:
        parser.error("need 0 < --min-kill-s <= --max-kill-s <= 60 and 1 <= --rounds <= 1000")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_receiver:
        serve_receiver()
        return 0
    work = Path(tempfile.mkdtemp(prefix="palyra-crash-", dir=args.tmp_dir))
    log(f"work dir {work}, seed {args.seed}")
    try:
        result = asyncio.run(run(args, work))
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (RESULTS / f"crash-loop-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
