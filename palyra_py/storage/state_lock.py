"""The state dir's lock: the control process of a running daemon holds it for as long as
it runs, ``palyra storage copy`` for as long as it copies, so neither starts while the
other holds the state dir (a copy of a journal still being written would miss events).

An ``flock`` on ``<state dir>/palyra.lock`` (0600), taken without waiting; the file says
who holds it, for the refusal's message. The kernel drops the lock when its holder dies,
so a killed daemon or copy never leaves it behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["LOCK_FILE", "StateDirBusy", "StateDirLock"]

LOCK_FILE = "palyra.lock"


class StateDirBusy(Exception):
    """Another process holds the state dir; the message says which (as it wrote it)."""


class StateDirLock:
    """Held from ``acquire`` until ``release`` (or the process's end)."""

    def __init__(self, state_dir: Path, holder: str) -> None:
        """``holder``: what the refusal others get says holds it ("a daemon")."""
        self.path = Path(state_dir) / LOCK_FILE
        self.holder = holder
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ``StateDirBusy`` at once."""
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                who = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            finally:
                os.close(fd)
            raise StateDirBusy(
                f"{who or 'another palyra process'} holds the state dir {self.path.parent}"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.holder} (pid {os.getpid()})\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        os.close(fd)  # closing the descriptor drops the lock
