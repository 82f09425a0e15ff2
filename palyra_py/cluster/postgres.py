"""PostgreSQL storage of the cluster: the schema (store ``cluster`` in ``palyra_schema``)
and its SQL over one asyncpg connection, which also LISTENs for the cluster's notices.

``cluster_nodes`` has one row per node id: its heartbeat (the database's ``now()`` at its
last renewal), the instance (a random id per process) that owns the id now, and when it
said it stopped. ``cluster_leases`` has one row per subscription ever leased: the node
that holds it (``NULL`` once released), the epoch (moved by every acquisition: a fencing
token) and ``expires_at``. Every judgement of time is the database's ``now()``: nodes'
clocks never meet. Notices go on the channel ``palyra_cluster`` (``NOTIFY``, sent at
commit): ``joined:<node>``, ``released:<node>``, ``stopped:<node>``, ``wake`` and
``cursor:<subscription>``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg

from palyra_py.cluster.leases import Acquired, ClusterUnavailable, IdInUse, LeaseRow, NodeRow
from palyra_py.storage.postgres import (
    DRIVER_ERRORS,
    Migration,
    connect,
    describe_pg_error,
    is_connection_lost,
    migrate,
)

__all__ = ["CHANNEL", "MIGRATIONS", "STORE", "ClusterUnavailable", "IdInUse",
           "PostgresCluster"]

STORE = "cluster"
CHANNEL = "palyra_cluster"
FORGET_NODES_AFTER_S = 86400
"""A node not heard of for this long leaves ``daemon status`` (its row is removed)."""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "cluster nodes and delivery leases", (
        """CREATE TABLE cluster_nodes (
            node_id text COLLATE "C" PRIMARY KEY,
            instance text NOT NULL,
            host text NOT NULL,
            pid integer NOT NULL,
            started_at timestamptz NOT NULL,
            heartbeat_at timestamptz NOT NULL,
            stopped_at timestamptz
        )""",
        """CREATE TABLE cluster_leases (
            subscription_id text COLLATE "C" PRIMARY KEY,
            node_id text COLLATE "C",
            epoch bigint NOT NULL,
            acquired_at timestamptz NOT NULL,
            expires_at timestamptz NOT NULL
        )""",
        "CREATE INDEX cluster_leases_node ON cluster_leases (node_id)",
    )),
)

_T = TypeVar("_T")
Notice = Callable[[str], None]


class PostgresCluster:
    """One node's view of the cluster tables. One connection, opened on first use and
    again after it is lost (the listener is added again with it); calls take turns on it
    and each is bounded by ``timeout_s``."""

    def __init__(self, dsn: Callable[[], str], *, node_id: str, instance: str,
                 lease_s: float, timeout_s: float, on_notice: Notice | None = None) -> None:
        self._dsn = dsn
        self.node_id = node_id
        self.instance = instance
        self.lease_s = lease_s
        self.timeout_s = timeout_s
        self._on_notice = on_notice
        self._conn: asyncpg.Connection | None = None
        self._own_pid = 0
        self._lock = asyncio.Lock()
        self._migrated = False

    async def _call(self, action: str, fn: Callable[[asyncpg.Connection], Awaitable[_T]]) -> _T:
        async with self._lock:
            try:
                async with asyncio.timeout(self.timeout_s):
                    if self._conn is None or self._conn.is_closed():
                        self._conn = await self._open()
                    return await fn(self._conn)
            except DRIVER_ERRORS as exc:
                if is_connection_lost(exc) and self._conn is not None:
                    conn, self._conn = self._conn, None
                    conn.terminate()
                raise ClusterUnavailable(describe_pg_error(exc, "the cluster", action)) from None

    async def _open(self) -> asyncpg.Connection:
        conn = await connect(self._dsn(), timeout_s=self.timeout_s)
        try:
            if not self._migrated:
                await migrate(conn, STORE, MIGRATIONS)
                self._migrated = True
            if self._on_notice is not None:
                await conn.add_listener(CHANNEL, self._heard)
            self._own_pid = conn.get_server_pid()
        except BaseException:
            conn.terminate()
            raise
        return conn

    def _heard(self, _conn: Any, pid: int, _channel: str, payload: object) -> None:
        if pid != self._own_pid and self._on_notice is not None:
            self._on_notice(str(payload))

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                try:
                    await asyncio.wait_for(conn.close(), self.timeout_s)
                except DRIVER_ERRORS:
                    conn.terminate()

    # -- nodes ---------------------------------------------------------------------------

    async def join(self, host: str, pid: int, *, dead: Callable[[str, int], bool] | None = None
                   ) -> float | None:
        """Take the node id for this instance and release the leases a previous instance
        left. ``None`` when done; else the age (s) of the heartbeat of another instance
        that still holds the id and did not stop (the caller waits for it to lapse).
        ``dead(host, pid)``: whether that instance is known dead (a process of this host
        that no longer exists): then the id is taken at once."""
        async def write(conn: asyncpg.Connection) -> float | None:
            async with conn.transaction():
                other = await conn.fetchrow(
                    "SELECT instance, extract(epoch FROM now() - heartbeat_at) AS age_s,"
                    " stopped_at IS NOT NULL AS stopped, host, pid FROM cluster_nodes"
                    " WHERE node_id = $1 FOR UPDATE", self.node_id)
                if (other is not None and other["instance"] != self.instance
                        and not other["stopped"] and float(other["age_s"]) < self.lease_s
                        and not (dead is not None
                                 and dead(str(other["host"]), int(other["pid"])))):
                    return float(other["age_s"])
                await conn.execute(
                    "INSERT INTO cluster_nodes (node_id, instance, host, pid, started_at,"
                    " heartbeat_at) VALUES ($1, $2, $3, $4, now(), now())"
                    " ON CONFLICT (node_id) DO UPDATE SET instance = EXCLUDED.instance,"
                    " host = EXCLUDED.host, pid = EXCLUDED.pid, started_at = now(),"
                    " heartbeat_at = now(), stopped_at = NULL",
                    self.node_id, self.instance, host, pid)
                await conn.execute(
                    "UPDATE cluster_leases SET node_id = NULL, expires_at = now()"
                    " WHERE node_id = $1", self.node_id)
                await conn.execute(
                    "DELETE FROM cluster_nodes WHERE heartbeat_at < now() - make_interval("
                    "secs => $1)", float(FORGET_NODES_AFTER_S))
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL,
                                   f"joined:{self.node_id}")
                return None
        return await self._call("join", write)

    async def heartbeat(self) -> dict[str, int]:
        """Move this node's heartbeat and renew every lease it still holds, in one
        transaction; the leases renewed (subscription -> epoch). ``IdInUse`` when another
        instance took the node id meanwhile."""
        async def write(conn: asyncpg.Connection) -> dict[str, int] | None:
            async with conn.transaction():
                mine = await conn.fetchval(
                    "UPDATE cluster_nodes SET heartbeat_at = now(), stopped_at = NULL"
                    " WHERE node_id = $1 AND instance = $2 RETURNING true",
                    self.node_id, self.instance)
                if not mine:
                    return None
                rows = await conn.fetch(
                    "UPDATE cluster_leases SET expires_at = now() + make_interval(secs => $2)"
                    " WHERE node_id = $1 AND expires_at > now()"
                    " RETURNING subscription_id, epoch", self.node_id, self.lease_s)
                return {str(r["subscription_id"]): int(r["epoch"]) for r in rows}
        renewed = await self._call("heartbeat", write)
        if renewed is None:
            raise IdInUse(f"node id {self.node_id} was taken by another process")
        return renewed

    async def snapshot(self) -> tuple[list[NodeRow], list[LeaseRow]]:
        """Every node the cluster knows and every lease in force, in one snapshot."""
        async def read(conn: asyncpg.Connection) -> tuple[list[NodeRow], list[LeaseRow]]:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                nodes = await conn.fetch(
                    "SELECT node_id, host, pid,"
                    " extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age_s,"
                    " (stopped_at IS NULL AND heartbeat_at > now() - make_interval("
                    "secs => $1)) AS live, stopped_at IS NOT NULL AS stopped"
                    " FROM cluster_nodes ORDER BY node_id", self.lease_s)
                leases = await conn.fetch(
                    "SELECT subscription_id, node_id, epoch,"
                    " extract(epoch FROM expires_at - now())::float8 AS expires_in_s"
                    " FROM cluster_leases WHERE node_id IS NOT NULL AND expires_at > now()"
                    " ORDER BY subscription_id")
            return ([NodeRow(str(r["node_id"]), str(r["host"]), int(r["pid"]),
                             max(0.0, float(r["heartbeat_age_s"])), bool(r["live"]),
                             bool(r["stopped"])) for r in nodes],
                    [LeaseRow(str(r["subscription_id"]), str(r["node_id"]), int(r["epoch"]),
                              float(r["expires_in_s"])) for r in leases])
        return await self._call("read", read)

    async def stop(self) -> None:
        """Release every lease of this node and say it stopped (others take over at once,
        told by the notice)."""
        async def write(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                await conn.execute(
                    "UPDATE cluster_leases SET node_id = NULL, expires_at = now()"
                    " WHERE node_id = $1", self.node_id)
                await conn.execute(
                    "UPDATE cluster_nodes SET stopped_at = now() WHERE node_id = $1"
                    " AND instance = $2", self.node_id, self.instance)
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL,
                                   f"stopped:{self.node_id}")
        await self._call("stop", write)

    # -- leases --------------------------------------------------------------------------

    async def acquire(self, candidates: Sequence[str], limit: int) -> list[Acquired]:
        """Take at most ``limit`` of ``candidates`` (in that order) whose lease is free,
        released or expired; each gets the next epoch. Two nodes racing for one: one wins
        (the row lock and the upsert's condition), the other gets nothing for it."""
        if limit <= 0 or not candidates:
            return []

        async def write(conn: asyncpg.Connection) -> list[Acquired]:
            async with conn.transaction():
                rows = await conn.fetch(
                    "SELECT subscription_id, node_id,"
                    " (node_id IS NULL OR expires_at <= now()) AS free FROM cluster_leases"
                    " WHERE subscription_id = ANY($1::text[]) FOR UPDATE",
                    list(candidates))
                known = {str(r["subscription_id"]): r for r in rows}
                chosen: list[str] = []
                for subscription_id in candidates:
                    row = known.get(subscription_id)
                    if row is None or row["free"]:
                        chosen.append(subscription_id)
                    if len(chosen) >= limit:
                        break
                if not chosen:
                    return []
                got = await conn.fetch(
                    "INSERT INTO cluster_leases AS l (subscription_id, node_id, epoch,"
                    " acquired_at, expires_at)"
                    " SELECT s, $2, 1, now(), now() + make_interval(secs => $3)"
                    " FROM unnest($1::text[]) AS s"
                    " ON CONFLICT (subscription_id) DO UPDATE SET node_id = EXCLUDED.node_id,"
                    " epoch = l.epoch + 1, acquired_at = now(), expires_at = EXCLUDED.expires_at"
                    " WHERE l.node_id IS NULL OR l.expires_at <= now()"
                    " RETURNING subscription_id, epoch",
                    chosen, self.node_id, self.lease_s)
            acquired = []
            for r in got:
                subscription_id = str(r["subscription_id"])
                before = known.get(subscription_id)
                previous = None if before is None or before["node_id"] is None else (
                    str(before["node_id"]))
                acquired.append(Acquired(subscription_id, int(r["epoch"]), previous))
            order = {s: i for i, s in enumerate(candidates)}
            return sorted(acquired, key=lambda a: order[a.subscription_id])
        return await self._call("acquire", write)

    async def release(self, subscription_ids: Sequence[str]) -> None:
        """Give these leases up (only those this node holds) and tell the others."""
        if not subscription_ids:
            return

        async def write(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                await conn.execute(
                    "UPDATE cluster_leases SET node_id = NULL, expires_at = now()"
                    " WHERE node_id = $1 AND subscription_id = ANY($2::text[])",
                    self.node_id, list(subscription_ids))
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL,
                                   f"released:{self.node_id}")
        await self._call("release", write)

    async def notify(self, payload: str) -> None:
        """Send one notice to every other node (``wake``, ``cursor:<subscription>``)."""
        async def write(conn: asyncpg.Connection) -> None:
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)
        await self._call("notice", write)
