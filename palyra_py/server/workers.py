"""An ingress worker process: ``python -m palyra_py.server.workers`` (started by the
control process's :class:`~palyra_py.server.supervisor.Supervisor`, never by hand).

It serves the public listener (``/hooks/*``, ``/v1/events``, streams, ``/metrics``,
``/healthz``, ``/readyz``) on the listening socket it inherits, appends to the journal
itself (the journal orders several appenders), and wakes and is woken by the other
processes through the bus relay. Over its channel to the control process it says when it
serves, acknowledges each ``reload`` once the registry is re-read, and reports the token
uses it saw. It stops on SIGTERM/SIGINT (draining its requests), and when the channel
ends: the control process is gone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import structlog

from palyra_py.server.daemon import Daemon, DaemonError
from palyra_py.server.supervisor import CHANNEL_LINE_MAX
from palyra_py.server.token_usage import FLUSH_INTERVAL_S
from palyra_py.settings import SettingsError, load_settings

log = structlog.get_logger("palyra.worker")

METRICS_TIMEOUT_S = 5.0
READINESS_TIMEOUT_S = 2.0
"""Longest wait for the control process's readiness before ``/readyz`` answers this
worker's own."""


class WorkerChannel:
    """The worker's end of its channel to the control process."""

    def __init__(self, daemon: Daemon, sock: socket.socket) -> None:
        self._daemon = daemon
        self._sock = sock
        self._writer: asyncio.StreamWriter | None = None
        self._asked: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self.closed = asyncio.Event()
        """Set when the control process's end closed."""

    async def open(self) -> asyncio.StreamReader:
        reader, self._writer = await asyncio.open_unix_connection(
            sock=self._sock, limit=CHANNEL_LINE_MAX)
        return reader

    async def ask(self, op: str, timeout_s: float) -> dict[str, Any] | None:
        """The control process's answer to ``op``, or ``None`` if none came within
        ``timeout_s``."""
        self._next_id += 1
        request = self._next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._asked[request] = future
        try:
            await self.send({"op": op, "id": request})
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            return None
        finally:
            self._asked.pop(request, None)

    async def merged_metrics(self) -> bytes:
        """Every process's metrics, merged by the control process; this worker's own if
        the control process does not answer within ``METRICS_TIMEOUT_S``."""
        answer = await self.ask("metrics", METRICS_TIMEOUT_S)
        if answer is None:
            log.warning("metrics_merge_timed_out", reason="only this worker's metrics answered")
            return self._daemon.metrics.render()
        return str(answer.get("text", "")).encode()

    async def control_readiness(self) -> tuple[str, str] | None:
        """What keeps the control process from taking events (``not_ready_because``
        there), or ``None``; ``None`` too if it does not answer within
        ``READINESS_TIMEOUT_S``: then ``/readyz`` is this worker's own view."""
        answer = await self.ask("readiness", READINESS_TIMEOUT_S)
        if answer is None:
            log.warning("readiness_check_timed_out",
                        reason="the control process did not answer; this worker's view")
            return None
        problem = answer.get("problem")
        if isinstance(problem, list) and len(problem) == 2:
            return str(problem[0]), str(problem[1])
        return None

    def _accepted(self) -> int:
        return self._daemon.ingress.stats.by_reason.get("accepted", 0)

    async def send(self, message: dict[str, Any]) -> None:
        if self._writer is None or self._writer.is_closing():
            return
        message["accepted"] = self._accepted()
        cap = self._daemon.connections
        message["ingress"] = {"answers": dict(self._daemon.ingress.stats.by_reason),
                              "connections": cap.open, "streams": cap.streams,
                              "rejections_pending": self._daemon.rejections.pending(),
                              "journal_commits": self._daemon.journal.commits}
        self._writer.write(json.dumps(message).encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()

    async def serve(self, reader: asyncio.StreamReader) -> None:
        """Answer the control process until it closes the channel."""
        try:
            async for line in reader:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(message, dict):
                    continue
                if message.get("op") == "reload":
                    await self._daemon.refresh_registry()
                    await self.send({"op": "ack", "id": message.get("id")})
                    await self.report_usage()
                elif message.get("op") == "ping":
                    await self.send({"op": "ack", "id": message.get("id")})
                elif message.get("op") == "scrape":
                    await self.send({"op": "ack", "id": message.get("id"),
                                     "text": self._daemon.metrics.render().decode()})
                elif message.get("op") == "answer":
                    future = self._asked.get(message.get("id", -1))
                    if future is not None and not future.done():
                        future.set_result(message)
        except ConnectionError:
            pass
        finally:
            self.closed.set()

    async def report_usage(self) -> None:
        usage = self._daemon.token_usage
        tokens = {token_id: at for token_id in self._daemon.registry.tokens
                  if (at := usage.last_used(token_id)) is not None}
        if tokens:
            await self.send({"op": "usage", "tokens": tokens})

    async def report_usage_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            await self.report_usage()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


async def _serve(daemon: Daemon, channel_sock: socket.socket, index: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    # SIGHUP is the control process's to handle: it reloads and tells every worker.
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    channel = WorkerChannel(daemon, channel_sock)
    reader = await channel.open()
    daemon.metrics_view = channel.merged_metrics
    daemon.readiness_view = channel.control_readiness
    await daemon.start()
    tasks: list[asyncio.Task[None]] = [asyncio.create_task(channel.serve(reader)),
             asyncio.create_task(channel.report_usage_forever())]
    await channel.send({"op": "ready", "pid": os.getpid()})
    log.info("worker_serving", index=index, pid=os.getpid())
    control_gone = asyncio.create_task(channel.closed.wait())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({control_gone, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if control_gone.done() and not stopping.done():
            log.warning("worker_orphaned", index=index,
                        reason="the control process is gone; stopping")
    finally:
        for waiter in (control_gone, stopping):
            waiter.cancel()
        log.info("worker_draining", index=index, pid=os.getpid())
        await daemon.stop()
        await channel.report_usage()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        channel.close()


def main(argv: list[str] | None = None) -> int:
    """Run one worker; returns the exit code (0 after a drain, 1 when it cannot start,
    2 for invalid settings)."""
    from palyra_py.logs import configure_logging

    parser = argparse.ArgumentParser(prog="palyra-worker")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--channel-fd", type=int, required=True)
    parser.add_argument("--flags", default="{}")
    args = parser.parse_args(argv)
    raw_flags = json.loads(args.flags)
    flags: dict[tuple[str, str], Any] = {}
    for name, value in raw_flags.items():
        section, _, key = name.partition(".")
        flags[(section, key)] = value
    try:
        settings = load_settings(Path(args.state_dir), flags=flags)
    except SettingsError as exc:
        configure_logging()
        log.error("settings_invalid", error=str(exc))
        return 2
    configure_logging(settings.get("daemon", "log_level"), settings.get("daemon", "log_format"))
    structlog.contextvars.bind_contextvars(worker=args.index)
    listener = socket.socket(fileno=args.listen_fd)
    listener.setblocking(False)
    channel_sock = socket.socket(fileno=args.channel_fd)
    daemon = Daemon(settings, worker_of=listener)
    try:
        asyncio.run(_serve(daemon, channel_sock, args.index))
    except DaemonError as exc:
        log.error("worker_cannot_start", error=str(exc))
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
