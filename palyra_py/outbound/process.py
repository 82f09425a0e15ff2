"""A child process for the command destination: started in a thread, then driven by the
event loop directly (pipes read and written with ``add_reader`` / ``add_writer``, the exit
seen through a pidfd; without pidfds, a thread waits for it).

Why not ``asyncio.create_subprocess_exec``: it forks and execs on the loop's thread, and
on Python 3.11 starts one more thread per child to wait for it; ``/bin/true`` with 8
runs at once ran about 1.6 times as often per second this way on the 2-core test machine
(BENCHMARKS.md, issue 12). Nothing here is global: no child watcher, no SIGCHLD handler; only this
child is ever waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import IO, Any

__all__ = ["ChildProcess", "StreamTail", "kill_group"]


def kill_group(pid: int, sig: signal.Signals) -> None:
    """``sig`` to the process group ``pid`` leads (gone already: nothing to do)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class StreamTail:
    """The last ``limit`` bytes of a stream, and how many came in all."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self.data += chunk
        if len(self.data) > self.limit:
            del self.data[: len(self.data) - self.limit]


class ChildProcess:
    """One running child in its own session (``start``): ``exited`` resolves to its return
    code (negative: the signal), ``drained`` once stdout and stderr are at their end and
    stdin is written (or the child closed it). Call ``close()`` at the end, always."""

    def __init__(self, proc: subprocess.Popen[bytes], stdin: bytes, stdout: StreamTail,
                 stderr: StreamTail) -> None:
        self._loop = asyncio.get_running_loop()
        self.proc = proc
        self.pid = proc.pid
        self.exited: asyncio.Future[int] = self._loop.create_future()
        # The pipes' file objects own their fds and alone close them (closing an fd by
        # number, then its object, would close whatever reused the number meanwhile).
        assert proc.stdin and proc.stdout and proc.stderr
        self._files: dict[int, IO[bytes]] = {
            f.fileno(): f for f in (proc.stdin, proc.stdout, proc.stderr)}
        self._pending: list[asyncio.Future[None]] = []
        self._pidfd: int | None = None
        self._read(proc.stdout.fileno(), stdout)
        self._read(proc.stderr.fileno(), stderr)
        self._write(proc.stdin.fileno(), stdin)
        self.drained = asyncio.gather(*self._pending)
        self._watch_exit()

    @classmethod
    async def start(cls, argv: Sequence[str], stdin: bytes, stdout: StreamTail,
                    stderr: StreamTail, **popen: Any) -> ChildProcess:
        """Fork and exec in a thread (``subprocess.Popen`` with pipes and
        ``start_new_session``; ``popen``: its other arguments). Raises what ``Popen``
        raises when the program cannot be started. Cancelled meanwhile: the child, if it
        started, is killed with its group."""

        def spawn() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True, **popen)

        started = asyncio.get_running_loop().run_in_executor(None, spawn)
        try:
            proc = await asyncio.shield(started)
        except asyncio.CancelledError:
            def abandon(done: asyncio.Future[subprocess.Popen[bytes]]) -> None:
                if not done.cancelled() and done.exception() is None:
                    orphan = done.result()
                    kill_group(orphan.pid, signal.SIGKILL)
                    for pipe in (orphan.stdin, orphan.stdout, orphan.stderr):
                        if pipe is not None:
                            pipe.close()
                    threading.Thread(target=orphan.wait, daemon=True).start()

            started.add_done_callback(abandon)
            raise
        return cls(proc, stdin, stdout, stderr)

    def _done(self) -> asyncio.Future[None]:
        future: asyncio.Future[None] = self._loop.create_future()
        self._pending.append(future)
        return future

    def _read(self, fd: int, tail: StreamTail) -> None:
        os.set_blocking(fd, False)
        done = self._done()

        def readable() -> None:
            try:
                chunk = os.read(fd, 65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                chunk = b""
            if chunk:
                tail.add(chunk)
                return
            self._release(fd)
            if not done.done():
                done.set_result(None)

        self._loop.add_reader(fd, readable)

    def _write(self, fd: int, data: bytes) -> None:
        os.set_blocking(fd, False)
        done = self._done()
        view = memoryview(data)
        sent = 0

        def writable() -> bool:
            """Write what the pipe takes now; True once all is written or the child has
            closed its end (a command that does not read stdin is fine)."""
            nonlocal sent
            while sent < len(view):
                try:
                    sent += os.write(fd, view[sent:])
                except (BlockingIOError, InterruptedError):
                    return False
                except OSError:  # BrokenPipeError: the child does not read it
                    break
            self._release(fd)
            if not done.done():
                done.set_result(None)
            return True

        if not writable():
            self._loop.add_writer(fd, writable)

    def _release(self, fd: int) -> None:
        pipe = self._files.pop(fd, None)
        if pipe is None:
            return
        self._loop.remove_reader(fd)
        self._loop.remove_writer(fd)
        with contextlib.suppress(OSError):
            pipe.close()

    def _watch_exit(self) -> None:
        def reap() -> None:
            code = self.proc.poll()
            if code is None or self.exited.done():
                return
            self.exited.set_result(code)
            self._close_pidfd()

        pidfd_open: Callable[[int], int] | None = getattr(os, "pidfd_open", None)
        try:
            if pidfd_open is None:
                raise OSError("no pidfd_open")
            self._pidfd = pidfd_open(self.pid)
        except OSError:
            loop = self._loop

            def wait() -> None:  # no pidfd: a thread waits, then tells the loop
                self.proc.wait()
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    loop.call_soon_threadsafe(reap)

            threading.Thread(target=wait, name=f"wait-{self.pid}", daemon=True).start()
            return
        self._loop.add_reader(self._pidfd, reap)
        reap()  # it may be gone already

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def close(self) -> None:
        """Detach from the loop and close the pipes. A child still running (the caller
        has killed it) is waited for by a thread, so that it leaves no zombie."""
        for fd in list(self._files):
            self._release(fd)
        for future in self._pending:
            if not future.done():
                future.cancel()
        self._close_pidfd()
        if self.proc.returncode is None and not self.exited.done():
            threading.Thread(target=self.proc.wait, name=f"reap-{self.pid}",
                             daemon=True).start()
