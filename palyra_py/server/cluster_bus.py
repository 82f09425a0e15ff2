"""The bus of a node on PostgreSQL: one LISTEN connection per node (the control process,
or the single process), whose heads go to the node's own bus and on to its other
processes through the socket relay. Workers keep only the relay: they hear the control
process, and their relay's poll reads the journal's head as before."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from palyra_py.bus.local import SeqBus
from palyra_py.bus.socket import HeadRelay

if TYPE_CHECKING:  # the driver is imported in cluster mode only
    from palyra_py.bus.postgres import PostgresHeadFeed

__all__ = ["start_head_feed"]


async def start_head_feed(dsn: Callable[[], str], bus: SeqBus, relay: HeadRelay | None
                          ) -> PostgresHeadFeed:
    """Start listening for every node's commits; ``relay`` (the node's other processes)
    is told each head the feed publishes. Returns at once if the server is unreachable
    (the feed keeps trying)."""
    from palyra_py.bus.postgres import PostgresHeadFeed  # asyncpg: cluster mode only

    feed = PostgresHeadFeed(dsn, bus, on_head=None if relay is None else relay.notify)
    await feed.start()
    return feed
