"""The control process's side of the ingress workers: spawn, tell, watch, restart, stop.

The control process binds the public listening socket once (:func:`bind_listener`) and
hands it to ``N`` worker processes (``python -m palyra_py.server.workers``), which all
accept on it: a worker that dies leaves the socket, and the connections queued on it, to
the others. Each worker also gets one end of a socket pair, the **channel**, carrying JSON
lines:

- worker -> control: ``{"op": "ready", "pid": P}`` once it serves; ``{"op": "ack", "id":
  N, ...}`` answering a request; ``{"op": "usage", "tokens": {...}}`` now and then;
  ``{"op": "metrics", "id": N}``: the merged metrics of every process, answered
  ``{"op": "answer", "id": N, "text": ...}``; ``{"op": "readiness", "id": N}``: what keeps
  the control process from taking events (its journal, its delivery store), answered
  ``{"op": "answer", "id": N, "problem": [code, detail] | null}``. Each message may carry
  ``"accepted"``, the webhooks the worker journaled so far.
- control -> worker: ``{"op": "reload", "id": N}``: re-read the registry and forget cached
  secrets, then ack; ``{"op": "ping", "id": N}``: ack (with fresh figures); ``{"op":
  "scrape", "id": N}``: ack with ``"text"``, the worker's own metrics exposition.

:meth:`Supervisor.broadcast_reload` returns once every live worker has acknowledged (one
that does not answer in time is killed and restarted, and a new worker reads the registry
when it starts), which is how an admin edit is in force on every worker when the CLI
returns. A worker that exits unasked is restarted and reported through ``on_restart``.
The end of the channel tells a worker that the control process is gone: it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

log = structlog.get_logger("palyra.supervisor")

READY_TIMEOUT_S = 60.0
"""Longest wait for a new worker to serve (imports, opening the journal)."""
ACK_TIMEOUT_S = 10.0
"""Longest wait for a worker's acknowledgement of a reload before it is replaced, unless
the supervisor is given another (``daemon.worker_ack_timeout_s``)."""
PING_TIMEOUT_S = 2.0
"""Longest wait for a worker's figures (``daemon status``)."""
STOP_TIMEOUT_S = 90.0
"""Longest wait for a worker to drain on SIGTERM (aiohttp gives handlers 60 s) before
SIGKILL."""
_RESTART_PAUSE_MAX_S = 5.0
CHANNEL_LINE_MAX = 32 * 1024 * 1024
"""Longest message on a channel (a metrics exposition is the big one)."""


class WorkerStartFailed(Exception):
    """A worker exited or stayed silent before it served."""


def bind_listener(host: str, port: int, *, backlog: int = 1024) -> socket.socket:
    """Bind and listen on ``host``:``port`` (the first address it resolves to), for the
    workers to share. Raises ``OSError``."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass(slots=True)
class WorkerSlot:
    """One worker position: the process in it now, and its history."""

    index: int
    pid: int = 0
    started_at: float = 0.0
    restarts: int = 0
    accepted: int = 0
    ingress: dict[str, Any] = field(default_factory=dict)
    """The worker's last ingress figures: answers by reason, connections, streams."""
    proc: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    acks: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    reader_task: asyncio.Task[None] | None = None

    def describe(self) -> dict[str, Any]:
        return {"pid": self.pid, "role": "worker", "index": self.index,
                "started_at": self.started_at, "restarts": self.restarts,
                "accepted": self.accepted}


class Supervisor:
    """Runs ``count`` workers on ``listener`` for the control process."""

    def __init__(
        self,
        *,
        count: int,
        listener: socket.socket,
        state_dir: str,
        flags: Mapping[str, Any],
        on_restart: Callable[[WorkerSlot, int | None, int], Awaitable[None]],
        on_usage: Callable[[Mapping[str, int]], None],
        answers: Mapping[str, Callable[[], Awaitable[dict[str, Any]]]] | None = None,
        clock: Callable[[], float] = time.time,
        ack_timeout_s: float = ACK_TIMEOUT_S,
    ) -> None:
        """``flags``: the ``daemon run`` flags, passed on so every worker has the control
        process's settings. ``on_restart(slot, exit_code, previous_pid)`` runs after a
        worker that exited unasked serves again; ``on_usage(tokens)`` gets the token uses
        a worker reports (token id -> unix seconds); ``answers[op]()`` gives the fields of
        the answer to a worker's ``op`` request (``metrics``: every process's metrics,
        merged; ``readiness``: the control process's). ``ack_timeout_s``: how long
        ``broadcast_reload`` waits for each worker before replacing it."""
        self._count = count
        self._listener = listener
        self._state_dir = state_dir
        self._flags = dict(flags)
        self._on_restart = on_restart
        self._on_usage = on_usage
        self._answers = dict(answers or {})
        self._answering: set[asyncio.Task[None]] = set()
        self._clock = clock
        self._ack_timeout_s = ack_timeout_s
        self.slots = [WorkerSlot(index) for index in range(count)]
        self._watchers: list[asyncio.Task[None]] = []
        self._stopping = False
        self._next_id = 0

    async def start(self) -> None:
        """Spawn every worker and return once all of them serve. Raises
        ``WorkerStartFailed`` (the others are stopped)."""
        try:
            await asyncio.gather(*(self._spawn(slot) for slot in self.slots))
        except BaseException:
            await self.stop()
            raise
        for slot in self.slots:
            self._watchers.append(asyncio.create_task(self._watch(slot)))

    def processes(self) -> list[dict[str, Any]]:
        """Each worker: pid, role, index, started_at, restarts, accepted."""
        return [slot.describe() for slot in self.slots]

    async def broadcast_reload(self) -> None:
        """Tell every live worker to re-read the registry and forget cached secrets;
        return once each has acknowledged. A worker that does not acknowledge within
        ``ack_timeout_s`` is killed: its replacement reads the registry as it starts."""
        self._next_id += 1
        request = self._next_id
        waits = [self._ask(slot, request) for slot in self.slots if slot.proc is not None]
        await asyncio.gather(*waits)

    async def refresh(self) -> None:
        """Ask every serving worker for its figures (``accepted``); at most ``PING_TIMEOUT_S``."""
        self._next_id += 1
        request = self._next_id
        waits = [self._ask(slot, request, "ping") for slot in self.slots
                 if slot.proc is not None and slot.ready.is_set()]
        await asyncio.gather(*waits)

    async def scrape(self) -> list[str]:
        """Every serving worker's own metrics exposition (those that answer within
        ``PING_TIMEOUT_S``)."""
        self._next_id += 1
        request = self._next_id
        waits = [self._ask(slot, request, "scrape") for slot in self.slots
                 if slot.proc is not None and slot.ready.is_set()]
        answers = await asyncio.gather(*waits)
        return [str(a["text"]) for a in answers if a is not None and "text" in a]

    async def _ask(self, slot: WorkerSlot, request: int,
                   op: str = "reload") -> dict[str, Any] | None:
        proc, writer = slot.proc, slot.writer
        if proc is None or writer is None or proc.returncode is not None:
            return None  # being replaced: the new one reads the registry when it starts
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        slot.acks[request] = future
        try:
            try:
                writer.write(json.dumps({"op": op, "id": request}).encode() + b"\n")
                await writer.drain()
            except (ConnectionError, RuntimeError):
                return None  # its channel is gone: it is exiting, its replacement reads anew
            channel = slot.reader_task
            waits: set[asyncio.Future[Any]] = {future} if channel is None else {future, channel}
            done, _ = await asyncio.wait(
                waits, timeout=self._ack_timeout_s if op == "reload" else PING_TIMEOUT_S,
                return_when=asyncio.FIRST_COMPLETED)
            if future in done:
                return future.result()
            if channel is not None and channel in done:
                return None  # it exited: its replacement reads the registry as it starts
            if op == "reload" and proc.returncode is None and slot.proc is proc:
                log.error("worker_not_acknowledging", index=slot.index, pid=proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                # Once it is gone the edit cannot be missed: its replacement reads the file.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            return None
        finally:
            slot.acks.pop(request, None)

    async def stop(self) -> None:
        """SIGTERM every worker and wait for each to drain and exit (SIGKILL after
        ``STOP_TIMEOUT_S``)."""
        self._stopping = True
        for task in self._watchers:
            task.cancel()
        for task in self._watchers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        procs = [slot.proc for slot in self.slots if slot.proc is not None]
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for slot in self.slots:
            await self._close_channel(slot)

    # -- one worker --------------------------------------------------------------------

    async def _spawn(self, slot: WorkerSlot) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "palyra_py.server.workers",
                "--state-dir", self._state_dir,
                "--index", str(slot.index),
                "--listen-fd", str(self._listener.fileno()),
                "--channel-fd", str(theirs.fileno()),
                "--flags", json.dumps(self._flags),
                pass_fds=(self._listener.fileno(), theirs.fileno()),
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=CHANNEL_LINE_MAX)
        slot.proc, slot.writer, slot.pid = proc, writer, proc.pid
        slot.ready = asyncio.Event()
        slot.reader_task = asyncio.create_task(self._read(slot, reader))
        waiter = asyncio.create_task(slot.ready.wait())
        exited = asyncio.create_task(proc.wait())
        try:
            done, _ = await asyncio.wait({waiter, exited}, timeout=READY_TIMEOUT_S,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            exited.cancel()
        if not slot.ready.is_set():
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise WorkerStartFailed(
                f"worker {slot.index} (pid {proc.pid}) "
                + ("exited with code " + str(proc.returncode) if exited in done
                   else f"did not serve within {READY_TIMEOUT_S:.0f} s"))
        slot.started_at = self._clock()
        log.info("worker_started", index=slot.index, pid=proc.pid)

    async def _read(self, slot: WorkerSlot, reader: asyncio.StreamReader) -> None:
        """Messages from one worker, until its end of the channel closes."""
        with contextlib.suppress(ConnectionError):
            async for line in reader:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(message, dict):
                    continue
                if isinstance(message.get("accepted"), int):
                    slot.accepted = message["accepted"]
                if isinstance(message.get("ingress"), dict):
                    slot.ingress = message["ingress"]
                op = message.get("op")
                if op == "ready":
                    slot.ready.set()
                elif op == "ack":
                    future = slot.acks.get(message.get("id", -1))
                    if future is not None and not future.done():
                        future.set_result(message)
                elif isinstance(op, str) and op in self._answers:
                    task = asyncio.create_task(self._answer(slot, op, message.get("id")))
                    self._answering.add(task)
                    task.add_done_callback(self._answering.discard)
                elif op == "usage" and isinstance(message.get("tokens"), dict):
                    self._on_usage({key: value for key, value in message["tokens"].items()
                                    if isinstance(key, str) and isinstance(value, int)})

    async def _answer(self, slot: WorkerSlot, op: str, request: Any) -> None:
        fields = await self._answers[op]()
        writer = slot.writer
        if writer is not None and not writer.is_closing():
            writer.write(json.dumps({**fields, "op": "answer", "id": request}).encode()
                         + b"\n")
            with contextlib.suppress(ConnectionError):
                await writer.drain()

    async def _close_channel(self, slot: WorkerSlot) -> None:
        if slot.writer is not None:
            slot.writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await slot.writer.wait_closed()
            slot.writer = None
        if slot.reader_task is not None:
            slot.reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await slot.reader_task
            slot.reader_task = None

    async def _watch(self, slot: WorkerSlot) -> None:
        """Restart the worker in ``slot`` whenever it exits unasked."""
        failures = 0
        while True:
            assert slot.proc is not None
            code = await slot.proc.wait()
            previous = slot.pid
            ran_s = self._clock() - slot.started_at
            log.error("worker_exited", index=slot.index, pid=previous, code=code,
                      ran_s=round(ran_s, 3))
            await self._close_channel(slot)
            slot.proc = None
            # A worker that dies at once is paused before the next try, growing to 5 s.
            failures = failures + 1 if ran_s < 1.0 else 0
            if failures:
                await asyncio.sleep(min(_RESTART_PAUSE_MAX_S, 0.1 * 2 ** failures))
            while True:
                try:
                    await self._spawn(slot)
                    break
                except (WorkerStartFailed, OSError) as exc:
                    log.error("worker_start_failed", index=slot.index, error=str(exc))
                    failures += 1
                    await asyncio.sleep(min(_RESTART_PAUSE_MAX_S, 0.1 * 2 ** failures))
            slot.restarts += 1
            try:
                await self._on_restart(slot, code, previous)
            except Exception:
                log.exception("worker_restart_report_failed", index=slot.index)


def own_process(role: str, started_at: float) -> dict[str, Any]:
    """The entry of this process in ``daemon status``'s list."""
    return {"pid": os.getpid(), "role": role, "index": None, "started_at": started_at,
            "restarts": 0, "accepted": None}
