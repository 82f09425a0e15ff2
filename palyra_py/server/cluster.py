"""Composition of cluster mode (``[storage] backend = "postgres"``): the node's id, its
cluster store, its ``ClusterNode`` and the notices between the dispatcher and the other
nodes. Loaded only in cluster mode (the driver is not imported by an embedded daemon)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Collection

from palyra_py.cluster.identity import node_id_for
from palyra_py.cluster.leases import ClusterUnavailable, IdInUse
from palyra_py.cluster.node import ClusterNode, DeliveryControl
from palyra_py.cluster.postgres import PostgresCluster
from palyra_py.metrics import Metrics
from palyra_py.settings import Settings

__all__ = ["CALL_TIMEOUT_S", "ClusterJoinFailed", "Notices", "join_cluster"]

CALL_TIMEOUT_S = 2.0
"""The longest wait for one call to the cluster tables (a connect, a heartbeat). Safety
does not hang on it: the watchdog stops delivery at the local deadline whatever a call
is waiting for."""


class ClusterJoinFailed(Exception):
    """The node could not take its place in the cluster (the message says why)."""


class Notices:
    """The dispatcher's ``peers``: each notice is sent in a task of its own (the caller,
    an admin request or a pass, does not wait on the database for it)."""

    def __init__(self) -> None:
        self.node: ClusterNode | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def __call__(self, payload: str) -> None:
        if self.node is None:
            return
        task = asyncio.get_running_loop().create_task(self.node.announce(payload))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def drain(self) -> None:
        """Until every notice under way is sent (or failed)."""
        while self._sending:
            await asyncio.gather(*list(self._sending), return_exceptions=True)


async def join_cluster(settings: Settings, dsn: Callable[[], str], *,
                       subscriptions: Callable[[], Collection[str]],
                       control: DeliveryControl, notices: Notices, metrics: Metrics,
                       clock: Callable[[], float] | None = None) -> ClusterNode:
    """Join the cluster: the node id (``[cluster] node_id`` or the one kept in the state
    dir), the store, then the node's loops. ``clock``: a monotonic clock for the local
    lease deadline (tests pass their own)."""
    lease_s = settings.get("cluster", "lease_s")
    heartbeat_s = settings.get("cluster", "heartbeat_s")
    configured = settings.get("cluster", "node_id")
    node_id = node_id_for(settings.state_dir, configured)
    node: ClusterNode | None = None

    def heard(payload: str) -> None:
        if node is not None:
            node.heard(payload)

    store = PostgresCluster(dsn, node_id=node_id, instance=secrets.token_hex(8),
                            lease_s=lease_s, timeout_s=max(CALL_TIMEOUT_S, heartbeat_s),
                            on_notice=heard)
    node = ClusterNode(store, lease_s=lease_s, heartbeat_s=heartbeat_s,
                       subscriptions=subscriptions, control=control,
                       clock=clock or time.monotonic, metrics=metrics,
                       id_of_state_dir=not configured)
    try:
        await node.join()
    except (ClusterUnavailable, IdInUse) as exc:
        await store.close()
        raise ClusterJoinFailed(str(exc)) from None
    notices.node = node
    return node
