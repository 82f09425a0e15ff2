"""The three servers of the ingress benchmark, their start-up and their verification. Used by
``bench/ingress.py``; the child-process, ``/proc`` and admin helpers are in ``_common``."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    BenchError,
    Children,
    admin,
    free_port,
    port_open,
    proc_stat,
    start_daemon,
    tree_ticks,
    wait_until,
)
from github_push import github_signature

EXPECTED_STATUS = {"bare": 202, "palyra": 202, "webhook": 200}
WEBHOOK_MESSAGE = "queued"
INTEGRATION_ID = "gh"
INGRESS_SCRIPT = Path(__file__).resolve().parent / "ingress.py"


def children_minor_faults(pid: int) -> int:
    """cminflt: grows when a child process (webhook's command) has run and been reaped."""
    return int(proc_stat(pid)[8])


def wait_idle(pid: int, deadline_s: float = 20.0) -> float:
    """Wait (bounded) until the process and its descendants (the daemon's workers,
    webhook's commands) stop burning CPU, so that work left over from one run does not
    load the next one."""
    start = time.monotonic()
    previous, quiet = tree_ticks(pid), 0
    while time.monotonic() - start < deadline_s and quiet < 2:
        time.sleep(0.25)
        now = tree_ticks(pid)
        quiet = quiet + 1 if now - previous <= 1 else 0
        previous = now
    return time.monotonic() - start


# -- HTTP clients (stdlib: the orchestrator stays synchronous) ----------------------------


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    rest = url.split("://", 1)[1]
    hostport, path = rest.split("/", 1)
    host, port = hostport.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=15)
    try:
        conn.request("POST", "/" + path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# -- the three servers ------------------------------------------------------------------


@dataclass
class Run:
    """Files and settings shared by every variant of one benchmark run."""

    work: Path
    secret: bytes
    body: bytes
    body_file: Path
    secret_file: Path
    palyra: Path
    children: Children
    webhook_log: bool = False

    def headers(self, delivery: str, signature: str | None = None) -> dict[str, str]:
        return {
            "Content-Type": "application/json", "User-Agent": "GitHub-Hookshot/bench",
            "X-GitHub-Event": "push", "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": signature or github_signature(self.secret, self.body),
        }


@dataclass
class Server:
    variant: str
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    state_dir: Path | None = None
    faults_per_command: float | None = None
    log_is_verbose: bool = False
    workers: int = 0
    """palyra's ingress worker processes (0: one process does everything)."""

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def socket(self) -> Path:
        assert self.state_dir is not None
        return self.state_dir / "palyra.sock"


def start_bare(run: Run, tag: str) -> Server:
    port, log_path = free_port(), run.work / f"bare-{tag}.log"
    argv = [sys.executable, str(INGRESS_SCRIPT), "--serve-bare",
            str(run.work / "secret"), "--port", str(port)]
    proc = run.children.spawn(argv, log_path)
    wait_until(lambda: port_open(port), "bare aiohttp handler", proc, log_path)
    return Server("bare", f"http://127.0.0.1:{port}/hooks/{INTEGRATION_ID}", proc, log_path)


def start_palyra(run: Run, tag: str, workers: str = "1") -> Server:
    """``workers``: ``--workers`` (a count, ``auto``), or ``default`` for no flag."""
    state_dir, log_path = run.work / f"palyra-{tag}", run.work / f"palyra-{tag}.log"
    daemon = start_daemon(run.children, run.palyra, state_dir, log_path, workers=workers)
    status, answer = admin(daemon.socket, "POST", "/v1/webhooks", {
        "integration_id": INTEGRATION_ID, "provider": "github",
        "secret": {"value": run.secret.decode()},
    })
    if status != 201:
        raise BenchError(f"adding the integration: {status} {answer}")
    return Server("palyra", f"{daemon.ingress_url}/hooks/{INTEGRATION_ID}", daemon.proc,
                  log_path, state_dir, workers=daemon.workers)


def start_webhook(run: Run, tag: str) -> Server:
    port, log_path = free_port(), run.work / f"webhook-{tag}.log"
    hooks = run.work / "hooks.json"
    if not hooks.exists():
        rule = {"match": {"type": "payload-hmac-sha256", "secret": run.secret.decode(),
                          "parameter": {"source": "header", "name": "X-Hub-Signature-256"}}}
        spec = [{"id": "github", "execute-command": "/bin/true", "http-methods": ["POST"],
                 "response-message": WEBHOOK_MESSAGE, "trigger-rule": rule,
                 # Rules not satisfied (say, no signature header) would be a 200 by
                 # default; make it a 401 so that wrk counts it as non-2xx. (A signature
                 # that does not match is an evaluation error: a 500.)
                 "trigger-rule-mismatch-http-response-code": 401}]
        hooks.write_text(json.dumps(spec, indent=2))
        hooks.chmod(0o600)
    argv = ["webhook", "-hooks", str(hooks), "-ip", "127.0.0.1", "-port", str(port)]
    if run.webhook_log:  # verbose: slower, but every command's fate is in the log
        argv += ["-logfile", str(log_path)]
    proc = run.children.spawn(argv, log_path)
    wait_until(lambda: port_open(port), "adnanh/webhook", proc, log_path)
    return Server("webhook", f"http://127.0.0.1:{port}/hooks/github", proc, log_path,
                  log_is_verbose=run.webhook_log)


def count_webhook_log(path: Path, offset: int) -> dict[str, int]:
    """From webhook's verbose log, from byte ``offset`` on: commands started, finished, and
    failed to start."""
    counts = {"executing": 0, "finished": 0, "command_errors": 0, "too_many_open_files": 0}
    with open(path, errors="replace") as log_file:
        log_file.seek(offset)
        for line in log_file:
            if "executing /bin/true" in line:
                counts["executing"] += 1
            elif "finished handling" in line:
                counts["finished"] += 1
            elif "error occurred:" in line:
                counts["command_errors"] += 1
                counts["too_many_open_files"] += "too many open files" in line
    return counts


STARTERS: dict[str, Callable[[Run, str], Server]] = {
    "bare": start_bare, "palyra": start_palyra, "webhook": start_webhook,
}


def verify(run: Run, server: Server) -> dict[str, Any]:
    """One good request must be accepted the way the load will be, and one with a wrong
    signature refused: we never benchmark an error path, nor a check that lets all in."""
    delivery = f"verify-{secrets.token_hex(8)}"
    bad_sig = github_signature(b"not-the-secret", run.body)
    bad_status, _ = post(server.url, run.body, run.headers(f"{delivery}-bad", bad_sig))
    if not 400 <= bad_status <= 599:  # webhook answers 500 "Error occurred while evaluating"
        raise BenchError(f"{server.variant}: a wrong signature got {bad_status}, not 4xx/5xx")
    faults = children_minor_faults(server.pid)
    status, raw = post(server.url, run.body, run.headers(delivery))
    expected = EXPECTED_STATUS[server.variant]
    text = raw.decode(errors="replace")[:300]
    if status != expected:
        raise BenchError(f"{server.variant}: verification got {status} {text}")
    found: dict[str, Any] = {"status": status, "wrong_signature_status": bad_status}
    if server.variant == "palyra":
        answer = json.loads(raw)
        if answer.get("status") != "accepted" or not isinstance(answer.get("seq"), int):
            raise BenchError(f"palyra: verification answer has no seq: {text}")
        found["seq"] = answer["seq"]
    if server.variant == "webhook":
        if raw.decode().strip() != WEBHOOK_MESSAGE:
            raise BenchError(f"webhook: rules not satisfied? answer: {text}")
        # The command runs after the answer; a reaped child shows in cminflt.
        start = time.monotonic()
        while children_minor_faults(server.pid) == faults and time.monotonic() - start < 10:
            time.sleep(0.02)
        grown = children_minor_faults(server.pid) - faults
        if grown <= 0:
            raise BenchError("webhook: /bin/true did not run within 10 s of the request")
        server.faults_per_command = grown
        found["command_ran"] = True
    return found


def serve_bare(secret_file: Path, port: int) -> None:
    """Variant (a): read the body, check GitHub's HMAC in constant time, answer 202."""
    from aiohttp import web

    secret = secret_file.read_bytes()

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        given = request.headers.get("X-Hub-Signature-256", "").encode()
        expected = b"sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
        if not hmac.compare_digest(given, expected):
            return web.json_response({"error": "signature_mismatch"}, status=401)
        return web.json_response({"status": "accepted"}, status=202)

    app = web.Application(client_max_size=32 * 1024 * 1024)
    app.router.add_post("/hooks/{integration_id}", hook)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)
