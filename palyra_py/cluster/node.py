"""One node's part in the cluster: its heartbeat, the leases it holds, and the telling of
the dispatcher which subscriptions to deliver (``DeliveryControl``).

Three loops:
- the *heartbeat* moves the node's heartbeat and renews its leases every ``heartbeat_s``
  (one transaction); what came back is what the node holds (``LocalLeases.renewed``);
- the *planner* reads the cluster at least every second (and at once on a notice, or when
  another node's lease runs out), releases what is over the fair share or no longer
  wanted (gracefully: the dispatcher first finishes what it has in flight) and acquires
  free or expired leases up to the share;
- the *watchdog* stops delivering every subscription (in-flight attempts cancelled) once
  ``DROP_FRACTION`` x ``lease_s`` have passed since the sending of the last successful
  renewal, so that the node has stopped before another may take its leases over.

Time here is the injected monotonic ``clock`` (the local deadline); lease expiry itself is
the database's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol

import structlog

from palyra_py.cluster.leases import (
    Acquired,
    ClusterUnavailable,
    IdInUse,
    LeaseRow,
    LocalLeases,
    NodeRow,
    fair_share,
    plan_leases,
)
from palyra_py.metrics import Metrics

__all__ = ["PLAN_INTERVAL_S", "ClusterNode", "ClusterStore", "DeliveryControl"]

log = structlog.get_logger("palyra.cluster")

PLAN_INTERVAL_S = 1.0
"""The planner reads the leases at least this often."""


class DeliveryControl(Protocol):
    """What the node tells the dispatcher."""

    def start_delivering(self, subscription_id: str) -> None:
        """Deliver ``subscription_id`` from now on, from the store's durable cursor and
        pending deliveries (nothing cached from an earlier lease)."""
        ...

    async def stop_delivering(self, subscription_id: str, *, grace_s: float) -> None:
        """Launch nothing more for it; wait up to ``grace_s`` for its attempts in flight
        to be recorded, then cancel those left (they stay pending). Returns once none is
        left."""
        ...

    def resume_from_store(self, subscription_id: str) -> None:
        """Forget what is cached for it (cursor, queues) and read it again from the
        store."""
        ...

    def wake(self) -> None:
        """Read the due deliveries from the store again (a retry made on another node)."""
        ...


class ClusterStore(Protocol):
    """The cluster tables (``cluster.postgres.PostgresCluster``)."""

    node_id: str

    async def join(self, host: str, pid: int, *,
                   dead: Callable[[str, int], bool] | None = None) -> float | None: ...
    async def heartbeat(self) -> dict[str, int]: ...
    async def snapshot(self) -> tuple[list[NodeRow], list[LeaseRow]]: ...
    async def acquire(self, candidates: Sequence[str], limit: int) -> list[Acquired]: ...
    async def release(self, subscription_ids: Sequence[str]) -> None: ...
    async def stop(self) -> None: ...
    async def notify(self, payload: str) -> None: ...
    async def close(self) -> None: ...


class ClusterNode:
    def __init__(self, store: ClusterStore, *, lease_s: float, heartbeat_s: float,
                 subscriptions: Callable[[], Collection[str]], control: DeliveryControl,
                 clock: Callable[[], float] = time.monotonic, metrics: Metrics | None = None,
                 host: str | None = None, pid: int | None = None,
                 id_of_state_dir: bool = False) -> None:
        """``subscriptions``: the ids of the enabled subscriptions (read at each plan).
        ``id_of_state_dir``: the node id is the one generated for this state dir (not
        configured), which no other running daemon can use."""
        self.store = store
        self.node_id = store.node_id
        self.lease_s = lease_s
        self.heartbeat_s = heartbeat_s
        self._subscriptions = subscriptions
        self._control = control
        self._clock = clock
        self._metrics = metrics
        self.host = host or socket.gethostname()
        self.pid = os.getpid() if pid is None else pid
        self._id_of_state_dir = id_of_state_dir
        self.leases = LocalLeases(lease_s)
        self.nodes: list[NodeRow] = []
        self.lease_rows: list[LeaseRow] = []
        self.read_at: float | None = None
        self.takeovers = 0
        self.plans = 0
        self._notice = asyncio.Event()
        self._changed = asyncio.Event()
        self._planned = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._plan_lock = asyncio.Lock()
        self._left = False

    # -- notices -------------------------------------------------------------------------

    def heard(self, payload: str) -> None:
        """A notice from another node (``cluster.postgres.CHANNEL``)."""
        kind, _, arg = payload.partition(":")
        if kind == "cursor":
            if arg in self.leases.held:
                log.info("cursor_reread", node_id=self.node_id, subscription_id=arg,
                         reason="moved on another node")
                self._control.resume_from_store(arg)
        elif kind == "wake":
            self._control.wake()
        else:  # joined, released, stopped: the shares or the free leases changed
            self._notice.set()

    def poke(self) -> None:
        """Plan now (the registry changed here: a subscription added, enabled, removed)."""
        self._notice.set()

    async def announce(self, payload: str) -> None:
        """Tell the other nodes (``wake``, ``cursor:<id>``); a failure is logged only
        (the holder's next full read or re-read catches up)."""
        try:
            await self.store.notify(payload)
        except ClusterUnavailable as exc:
            log.warning("cluster_notice_failed", notice=payload.partition(":")[0],
                        error=str(exc))

    # -- life ----------------------------------------------------------------------------

    async def join(self) -> None:
        """Take the node id (waiting up to ``lease_s`` for a crashed predecessor's
        heartbeat to lapse), then run the loops. ``IdInUse`` when another live process
        keeps heartbeating under the id; ``ClusterUnavailable`` when the tables cannot
        be reached."""
        started = time.monotonic()  # a real wait for another process, whatever the clock
        while True:
            age = await self.store.join(self.host, self.pid, dead=self._dead_here)
            if age is None:
                break
            if time.monotonic() - started > self.lease_s + self.heartbeat_s:
                raise IdInUse(
                    f"node id {self.node_id} is in use by another live node (heartbeat"
                    f" {age:.1f} s ago): give each node its own [cluster] node_id")
            log.info("cluster_id_wait", node_id=self.node_id, heartbeat_age_s=round(age, 1))
            await self._pause(min(self.heartbeat_s, max(0.05, self.lease_s - age)))
        log.info("cluster_joined", node_id=self.node_id, lease_s=self.lease_s,
                 heartbeat_s=self.heartbeat_s)
        self._tasks = [asyncio.create_task(self._guarded("heartbeat", self._beat_forever)),
                       asyncio.create_task(self._guarded("planner", self._plan_forever)),
                       asyncio.create_task(self._guarded("watchdog", self._watch_forever))]

    def _dead_here(self, host: str, pid: int) -> bool:
        """Whether the process that held the id is gone: the id is this state dir's (this
        daemon holds its admin socket, so no other runs on it), it ran on this host and
        its pid is not alive (or is this process's own: a container's pid 1 restarted). A
        restart after a crash then need not wait for the old heartbeat to lapse. A
        configured id (which a copy of the settings on another box may share, even with
        the same host name) always waits."""
        if not self._id_of_state_dir or host != self.host:
            return False
        if pid == self.pid:
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # it exists (another user's): alive as far as we know
            return False
        return False

    async def leave(self) -> None:
        """Graceful stop: stop every loop, finish (or, after a grace, cancel) what is in
        flight, release every lease and say so: the others take over at once."""
        if self._left:
            return
        self._left = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        held = self.leases.drop()
        await asyncio.gather(*(self._control.stop_delivering(s, grace_s=self.lease_s / 2)
                               for s in held))
        self._set_gauge()
        try:
            await self.store.stop()
            log.info("cluster_left", node_id=self.node_id, released=len(held))
        except ClusterUnavailable as exc:
            log.warning("cluster_leave_failed", node_id=self.node_id, error=str(exc),
                        hint="its leases run out by themselves within lease_s")
        await self.store.close()

    async def _guarded(self, name: str, loop: Callable[[], Any]) -> None:
        """Run ``loop``; one that crashes is logged and run again (a node whose heartbeat
        stopped silently would keep leases it no longer renews)."""
        while True:
            try:
                await loop()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("cluster_loop_crashed", loop=name, restart_in_s=1.0)
                await self._pause(1.0)

    async def _pause(self, seconds: float) -> None:
        """A pause that a notice ends early."""
        # asyncio.timeout, not wait_for: on 3.11 wait_for drops a cancellation that comes
        # as the event is set (a notice as the node stops), and the loop would go on.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await self._notice.wait()

    # -- heartbeat -----------------------------------------------------------------------

    async def _beat_forever(self) -> None:
        while True:
            began = self._clock()
            await self.beat()
            pause = self.heartbeat_s - (self._clock() - began)
            await asyncio.sleep(max(0.0, pause))  # a period, not a synchronisation

    async def beat(self) -> bool:
        """One heartbeat and renewal; whether it went through."""
        sent = self._clock()
        try:
            renewed = await self.store.heartbeat()
        except ClusterUnavailable as exc:
            log.warning("cluster_heartbeat_failed", node_id=self.node_id, error=str(exc),
                        leases=len(self.leases.held))
            return False
        except IdInUse as exc:
            log.error("cluster_id_taken", node_id=self.node_id, error=str(exc))
            await self._stop(self.leases.drop(), grace_s=0)
            with contextlib.suppress(ClusterUnavailable):
                await self.store.join(self.host, self.pid)
            return False
        start, stop = self.leases.renewed(sent, renewed)
        self._changed.set()
        if stop:
            log.warning("leases_lost", node_id=self.node_id, subscriptions=stop)
            await self._stop(stop, grace_s=0)
        for subscription_id in start:
            log.info("lease_resumed", node_id=self.node_id, subscription_id=subscription_id,
                     epoch=renewed[subscription_id])
            self._control.start_delivering(subscription_id)
        self._set_gauge()
        return True

    # -- watchdog ------------------------------------------------------------------------

    async def _watch_forever(self) -> None:
        while True:
            self._changed.clear()
            deadline = self.leases.deadline()
            timeout = None if deadline is None else max(0.0, deadline - self._clock())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._changed.wait()
            await self.check_expiry()

    async def check_expiry(self) -> list[str]:
        """Past the local deadline: stop delivering everything now (in-flight attempts
        cancelled). What was dropped."""
        if not self.leases.expired(self._clock()):
            return []
        renewed_at = self.leases.renewed_at
        dropped = self.leases.drop()
        log.warning("leases_dropped", node_id=self.node_id, subscriptions=dropped,
                    since_renewal_s=None if renewed_at is None else round(
                        self._clock() - renewed_at, 2),
                    reason="no successful renewal for 0.8 x lease_s")
        await self._stop(dropped, grace_s=0)
        self._set_gauge()
        return dropped

    # -- planner -------------------------------------------------------------------------

    async def _plan_forever(self) -> None:
        while True:
            self._notice.clear()
            wait = PLAN_INTERVAL_S
            try:
                wait = await self.plan()
            except ClusterUnavailable as exc:
                log.warning("cluster_read_failed", node_id=self.node_id, error=str(exc))
            await self._pause(wait)

    async def plan(self) -> float:
        """One read of the cluster, then releases and acquisitions; how long until the
        next (at most ``PLAN_INTERVAL_S``; sooner when another node's lease runs out)."""
        async with self._plan_lock:
            nodes, leases = await self.store.snapshot()
            self.nodes, self.lease_rows, self.read_at = nodes, leases, self._clock()
            live = max(1, sum(1 for n in nodes if n.live))
            others = [lease for lease in leases if lease.node_id != self.node_id]
            plan = plan_leases(self.node_id, self.leases.held, self._subscriptions(), others,
                               live)
            if plan.release:
                await self._release(plan.release)
            if plan.acquire and plan.candidates:
                await self._acquire(plan.candidates, plan.acquire)
            self.plans += 1
            self._planned.set()
            soonest = min((lease.expires_in_s for lease in others), default=PLAN_INTERVAL_S)
            return max(0.01, min(PLAN_INTERVAL_S, soonest + 0.01))

    async def next_plan(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Until the planner has read and acted once more (tests)."""
        self._planned.clear()
        async with asyncio.timeout(timeout):
            await self._planned.wait()

    async def _release(self, subscription_ids: list[str]) -> None:
        await self._stop(subscription_ids, grace_s=self.lease_s / 2)
        try:
            await self.store.release(subscription_ids)
        finally:
            # Held (so a renewal meanwhile starts nothing) until the release is written or
            # failed (then the lease runs out by itself: nothing is delivered here).
            self.leases.drop(subscription_ids)
            self._set_gauge()
        log.info("leases_released", node_id=self.node_id, subscriptions=subscription_ids)

    async def _acquire(self, candidates: list[str], limit: int) -> None:
        sent = self._clock()
        got = await self.store.acquire(candidates, limit)
        for lease in got:
            self.leases.add(lease, sent)
            if lease.previous_node is not None and lease.previous_node != self.node_id:
                self.takeovers += 1
                if self._metrics is not None:
                    self._metrics.lease_takeovers.inc()
                log.warning("lease_taken_over", node_id=self.node_id,
                            subscription_id=lease.subscription_id, epoch=lease.epoch,
                            from_node=lease.previous_node)
            else:
                log.info("lease_acquired", node_id=self.node_id,
                         subscription_id=lease.subscription_id, epoch=lease.epoch)
            self._control.start_delivering(lease.subscription_id)
        if got:
            self._changed.set()
            self._set_gauge()

    async def _stop(self, subscription_ids: Sequence[str], *, grace_s: float) -> None:
        await asyncio.gather(*(self._control.stop_delivering(s, grace_s=grace_s)
                               for s in subscription_ids))

    def _set_gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.leases_held.set(len(self.leases.held))

    # -- status --------------------------------------------------------------------------

    async def view(self) -> dict[str, Any]:
        """The cluster read now (``describe``); when the read fails, as last read, with
        the reason in ``problem``."""
        problem = None
        try:
            self.nodes, self.lease_rows = await self.store.snapshot()
            self.read_at = self._clock()
        except ClusterUnavailable as exc:
            problem = str(exc)
        return {**self.describe(), "problem": problem}

    def describe(self) -> dict[str, Any]:
        """The cluster as last read (``daemon status``): every node with its heartbeat's
        age and the leases it holds, this node marked."""
        by_node: dict[str, list[dict[str, Any]]] = {}
        for lease in self.lease_rows:
            by_node.setdefault(lease.node_id, []).append(
                {"subscription_id": lease.subscription_id, "epoch": lease.epoch})
        read_age = None if self.read_at is None else max(0.0, self._clock() - self.read_at)
        nodes = [{
            "node_id": n.node_id, "host": n.host, "pid": n.pid,
            "state": "stopped" if n.stopped else "live" if n.live else "lost",
            "heartbeat_age_s": round(n.heartbeat_age_s + (read_age or 0.0), 1),
            "this_node": n.node_id == self.node_id,
            "leases": by_node.get(n.node_id, []),
        } for n in self.nodes]
        live = sum(1 for n in self.nodes if n.live)
        return {
            "node_id": self.node_id, "lease_s": self.lease_s, "heartbeat_s": self.heartbeat_s,
            "read_age_s": None if read_age is None else round(read_age, 1),
            "leases_held": sorted(self.leases.held),
            "fair_share": fair_share(len(self._subscriptions()), max(1, live)),
            "lease_takeovers": self.takeovers,
            "nodes": nodes,
        }
