"""The command destination: one run of a subscription's ``command`` for one event.

The argv is the subscription's list with its placeholders filled from the event; it is
handed to ``execve`` as is: never a shell, so nothing in a payload is ever parsed as shell
syntax (an explicit ``["sh", "-c", ...]`` is the user's choice). The event's JSON is on
stdin; the environment is clean (``PATH``, ``HOME``, ``LANG``, the ``PALYRA_*`` variables
and the subscription's ``env``). The run gets its own process group: on timeout the whole
group is sent SIGTERM, then SIGKILL after ``KILL_GRACE_S``. stdout and stderr are read as
they come, the last ``OUTPUT_TAIL_BYTES`` of each kept.

Placeholders are filled by ``outbound.placeholders`` (pure). ``run_command`` never raises
for what the command does (missing, not executable, failing, hanging): every such outcome
is an ``AttemptOutcome``.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from palyra_py.outbound.http import AttemptOutcome
from palyra_py.outbound.process import ChildProcess, StreamTail, kill_group

__all__ = [
    "KILL_GRACE_S",
    "OUTPUT_TAIL_BYTES",
    "CommandRun",
    "clean_environment",
    "run_command",
]

OUTPUT_TAIL_BYTES = 64 * 1024
"""Of stdout and of stderr each, the last bytes kept of a run."""
KILL_GRACE_S = 5.0
"""After SIGTERM on timeout, how long the process group has before SIGKILL."""
PIPE_GRACE_S = 1.0
"""After the command exits, how long what it left running may hold its stdout/stderr."""
EXCERPT_BYTES = 4096
"""What the attempt log keeps of the output (the tails of both streams, labelled)."""
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"

def clean_environment(home: str | None = None) -> dict[str, str]:
    """``PATH``, ``HOME`` and ``LANG``: all a run inherits from the daemon."""
    return {"PATH": os.environ.get("PATH") or DEFAULT_PATH,
            "HOME": home or os.environ.get("HOME") or "/",
            "LANG": os.environ.get("LANG") or "C.UTF-8"}


@dataclass(frozen=True, slots=True)
class CommandRun:
    """What one run needs, everything resolved (argv rendered, env secrets read)."""

    argv: list[str]
    stdin: bytes
    env: dict[str, str]
    working_dir: str | None
    timeout_s: float
    success_exit_codes: tuple[int, ...]
    run_as: str | None


class _Tail(StreamTail):
    def text(self, limit: int) -> str:
        data = bytes(self.data[-limit:]) if limit > 0 else b""
        text = data.decode("utf-8", "replace")
        if limit > 0 and len(data) < self.total:
            text = "..." + text.lstrip("\ufffd")
        return text


def output_excerpt(stdout: _Tail, stderr: _Tail, budget: int = EXCERPT_BYTES) -> str:
    """Both tails, labelled, within ``budget`` bytes: each stream gets half, and what one
    leaves unused the other may take."""
    out_head, err_head = "--- stdout ---\n", "\n--- stderr ---\n"
    room = budget - len(out_head) - len(err_head) - 16
    half = room // 2
    out_size = min(len(stdout.data), max(half, room - len(stderr.data)))
    err_size = min(len(stderr.data), room - out_size)
    text = out_head + stdout.text(out_size) + err_head + stderr.text(err_size)
    # Replacement characters may have made it longer: the store keeps budget bytes.
    return text.encode("utf-8", "replace")[:budget].decode("utf-8", "ignore")


async def _spawn(run: CommandRun, stdout: _Tail, stderr: _Tail) -> ChildProcess:
    extra: dict[str, Any] = {}
    if run.run_as is not None:
        entry = pwd.getpwnam(run.run_as)
        extra = {"user": run.run_as, "group": entry.pw_gid,
                 "extra_groups": os.getgrouplist(run.run_as, entry.pw_gid)}
    return await ChildProcess.start(run.argv, run.stdin, stdout, stderr,
                                    cwd=run.working_dir, env=run.env, close_fds=True,
                                    **extra)


def _exit_outcome(code: int, run: CommandRun, excerpt: str, elapsed: int) -> AttemptOutcome:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return AttemptOutcome(None, "command_signal", f"killed by {name}", excerpt, elapsed,
                              None)
    if code in run.success_exit_codes:
        return AttemptOutcome(code, None, None, excerpt, elapsed, None)
    wanted = ", ".join(str(c) for c in run.success_exit_codes)
    return AttemptOutcome(code, "command_exit", f"exit code {code} (success: {wanted})",
                          excerpt, elapsed, None)


async def run_command(run: CommandRun) -> AttemptOutcome:
    """Run once and classify: success (an exit code in ``success_exit_codes``;
    ``status_code`` is the exit code), ``command_exit`` (another exit code),
    ``command_signal`` (killed by a signal), ``timeout`` (the group was killed),
    ``command_unavailable`` (could not be started: missing, not executable, bad
    ``working_dir`` or ``run_as``). The excerpt holds the tails of stdout and stderr."""
    started = time.perf_counter()

    def elapsed() -> int:
        return int((time.perf_counter() - started) * 1000)

    if run.run_as is not None and os.geteuid() != 0:
        return AttemptOutcome(None, "command_unavailable",
                              f"run_as = {run.run_as!r} needs the daemon to run as root",
                              None, elapsed(), None)
    stdout, stderr = _Tail(OUTPUT_TAIL_BYTES), _Tail(OUTPUT_TAIL_BYTES)
    try:
        child = await _spawn(run, stdout, stderr)
    except (OSError, KeyError, ValueError, subprocess.SubprocessError) as exc:
        return AttemptOutcome(None, "command_unavailable", _spawn_error(run, exc), None,
                              elapsed(), None)
    timed_out = False
    code: int | None = None
    try:
        try:
            async with asyncio.timeout(run.timeout_s):
                code = await asyncio.shield(child.exited)
        except TimeoutError:
            timed_out = True
            kill_group(child.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(KILL_GRACE_S):
                    code = await asyncio.shield(child.exited)
            except TimeoutError:
                kill_group(child.pid, signal.SIGKILL)
                code = await asyncio.shield(child.exited)
        # What it left running may hold the pipes: not for long.
        try:
            async with asyncio.timeout(PIPE_GRACE_S):
                await asyncio.shield(child.drained)
        except TimeoutError:
            kill_group(child.pid, signal.SIGKILL)
    finally:
        if code is None:  # cancelled (the daemon stops, the lease moves)
            kill_group(child.pid, signal.SIGKILL)
        child.close()
    excerpt = output_excerpt(stdout, stderr)
    if timed_out:
        return AttemptOutcome(None, "timeout",
                              f"no exit within {run.timeout_s:g} s: the process group was"
                              " sent SIGTERM, then SIGKILL", excerpt, elapsed(), None)
    assert code is not None
    return _exit_outcome(code, run, excerpt, elapsed())



def _spawn_error(run: CommandRun, exc: BaseException) -> str:
    program = run.argv[0] if run.argv else "?"
    if isinstance(exc, KeyError):
        return f"run_as: no user {run.run_as!r}"
    if isinstance(exc, FileNotFoundError) and run.working_dir and exc.filename == run.working_dir:
        return f"working_dir {run.working_dir!r} does not exist"
    if isinstance(exc, FileNotFoundError):
        return f"cannot run {program!r}: no such file"
    if isinstance(exc, PermissionError):
        return f"cannot run {program!r}: not executable (permission denied)"
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"cannot run {program!r}: {detail}"[:400]
