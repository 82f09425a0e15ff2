"""Run ``palyra daemon run`` as a real child process (for crash and CLI tests)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any


def child_env(state_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PALYRA_")}
    env["PALYRA_STATE_DIR"] = str(state_dir)
    # The machine's keyring may be anything; the daemon's explicit file fallback is real and
    # is what a headless server uses.
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
    return env


class DaemonProcess:
    def __init__(self, state_dir: Path, *, env: Mapping[str, str] | None = None,
                 preexec_fn: Callable[[], None] | None = None,
                 args: Sequence[str] = (), workers: str | None = "1") -> None:
        """``env`` is added to the child's environment; ``preexec_fn`` runs in the child
        before the daemon starts (resource limits, signal dispositions); ``args`` are
        more ``daemon run`` options. ``workers``: ``--workers`` (one process unless a test
        asks); ``None`` gives no flag, so the daemon runs its default (``auto``: on a
        2-core box a control process and 2 workers)."""
        self.state_dir = state_dir
        self.args = (*args, *(() if workers is None else ("--workers", workers)))
        self.extra_env = dict(env or {})
        self.preexec_fn = preexec_fn
        self.proc: asyncio.subprocess.Process | None = None
        self.ingress = ""
        self.log: list[dict[str, Any]] = []
        self._logged = asyncio.Event()

    async def start(self) -> DaemonProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "palyra_py", "daemon", "run", "--listen", "127.0.0.1:0",
            "--log-format", "json", *self.args, env={**child_env(self.state_dir), **self.extra_env},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            preexec_fn=self.preexec_fn,
        )
        assert self.proc.stderr is not None
        # Wait for the daemon to say it is up (its log line), not for a timer.
        while True:
            line = await asyncio.wait_for(self.proc.stderr.readline(), 30)
            if not line:
                raise RuntimeError(f"daemon exited early: {self.log}")
            record = self._record(line)
            if record.get("event") == "daemon_started":
                self.ingress = str(record["ingress"])
                break
        self._drainer = asyncio.get_running_loop().create_task(self._drain())
        return self

    def _record(self, line: bytes) -> dict[str, Any]:
        try:
            record: dict[str, Any] = json.loads(line)
        except ValueError:
            record = {"raw": line.decode(errors="replace")}
        self.log.append(record)
        self._logged.set()
        return record

    async def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for line in self.proc.stderr:
            self._record(line)

    async def wait_for_log(self, events: tuple[str, ...], start: int = 0) -> dict[str, Any]:
        """The first log record from index ``start`` on whose event is in ``events``."""
        while True:
            for record in self.log[start:]:
                if record.get("event") in events:
                    return record
            start = len(self.log)
            self._logged.clear()
            await asyncio.wait_for(self._logged.wait(), 30)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)

    async def stop(self) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), 30)
