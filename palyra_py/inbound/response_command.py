"""Run an integration's ``response_command`` with bounds: the answer to the sender.

An argv list, never a shell; the payload on stdin; a clean environment (``PATH``, ``HOME``,
``LANG`` and the ``PALYRA_*`` values given, nothing of the daemon's own, which may hold
secrets); stdout read up to a limit; stderr discarded; the whole process group killed when
the deadline passes, when stdout goes past the limit, and once the answer is taken (a reply
command is not a place to start background work: a command subscription is).

Nothing here raises for a command that cannot run, hangs, fails or floods: every outcome is
a :class:`CommandResult` the ingress turns into the fallback answer.

(Written for the ingress alone; the command destination of outbound/ has the same needs,
and both could later share one runner.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

MAX_STDOUT_BYTES = 64 * 1024
CLEAN_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True, slots=True)
class CommandResult:
    """``outcome``: ``ok`` (exit 0 within the deadline, stdout within the limit),
    ``exit`` (another exit code, or a signal: ``exit_code`` negative), ``timeout``,
    ``too_large`` (stdout past the limit) or ``not_started`` (no such program, not
    executable, ...; ``detail`` says why). ``stdout`` is kept for ``ok`` only."""

    outcome: str
    stdout: bytes = b""
    exit_code: int | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The command's whole environment: a fixed PATH, HOME, LANG, then ``extra``."""
    return {"PATH": CLEAN_PATH, "HOME": os.environ.get("HOME", "/"), "LANG": "C.UTF-8",
            **extra}


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def run_bounded(
    argv: Sequence[str],
    stdin: bytes,
    env: Mapping[str, str],
    timeout_s: float,
    max_stdout: int = MAX_STDOUT_BYTES,
) -> CommandResult:
    """Run ``argv`` (exactly as given: no shell, no expansion) with ``stdin`` on its
    standard input and ``env`` as its whole environment; wait at most ``timeout_s`` for its
    exit and the end of its stdout."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, env=dict(env), start_new_session=True,
        )
    except OSError as exc:
        return CommandResult("not_started", detail=exc.strerror or type(exc).__name__)
    try:
        async with asyncio.timeout(timeout_s):
            return await _communicate(proc, stdin, max_stdout)
    except TimeoutError:
        return CommandResult("timeout", detail=f"no answer within {timeout_s:g} s")
    finally:
        # The group too: a child left behind with our stdout must not outlive the answer.
        _kill_group(proc.pid)
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def _communicate(
    proc: asyncio.subprocess.Process, stdin: bytes, max_stdout: int
) -> CommandResult:
    assert proc.stdin is not None and proc.stdout is not None

    async def feed() -> None:
        assert proc.stdin is not None
        # A command that does not read its input, or exits first, is no failure of ours.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.write(stdin)
            await proc.stdin.drain()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.close()

    feeding = asyncio.create_task(feed())
    try:
        chunks: list[bytes] = []
        size = 0
        while chunk := await proc.stdout.read(65536):
            size += len(chunk)
            if size > max_stdout:
                return CommandResult("too_large", detail=f"stdout past {max_stdout} bytes")
            chunks.append(chunk)
        code = await proc.wait()
    finally:
        feeding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeding
    if code != 0:
        return CommandResult("exit", exit_code=code, detail=f"exit code {code}")
    return CommandResult("ok", stdout=b"".join(chunks), exit_code=0)
