"""The parts shared by the PostgreSQL stores that have one writer connection, owned by one
task that takes jobs from a queue, and a small pool for reads: the journal
(``journal.postgres_journal``) and the delivery store (``delivery.postgres_store``).

What differs between them (what a job is, how a batch commits, which exception a caller
sees) stays in each store; this module holds the loop's plumbing: waiting for the next job
while probing a lost server, draining a batch, opening the read pool and closing both
connections quietly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import asyncpg

from palyra_py.storage.postgres import COMMAND_TIMEOUT_S, DRIVER_ERRORS, session_settings

__all__ = [
    "PROBE_INTERVAL_S",
    "READERS_MAX",
    "close_connections",
    "drain_batch",
    "next_job",
    "open_read_pool",
    "resolve_dsn",
]

PROBE_INTERVAL_S = 1.0
"""While the server is unreachable, how often the idle writer tries it again (so that
readiness comes back without waiting for a write)."""
READERS_MAX = 4
"""Connections in a store's read pool."""
_J = TypeVar("_J")


def resolve_dsn(source: str | Callable[[], str], unavailable: type[Exception],
                what: str) -> str:
    """The URI: ``source`` itself, or what the function gives (a secret read at start);
    whatever it raises becomes ``unavailable``, with its message."""
    if isinstance(source, str):
        return source
    try:
        return source()
    except Exception as exc:
        raise unavailable(f"{what} start failed: {exc}") from None


async def open_read_pool(dsn: str, *, timeout_s: float, settings: Mapping[str, str],
                         command_timeout_s: float = COMMAND_TIMEOUT_S) -> asyncpg.Pool:
    """The store's read pool (1 to ``READERS_MAX`` connections), with the session
    settings of every palyra connection and ``settings``."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=READERS_MAX, timeout=timeout_s,
        command_timeout=command_timeout_s, server_settings=session_settings(settings),
    )
    return pool


async def close_connections(writer: asyncpg.Connection | None,
                            readers: asyncpg.Pool | None) -> None:
    """Close the writer and the pool, each within 2 s; errors from a server that is gone
    are swallowed (there is nothing left to tell)."""
    if writer is not None:
        with contextlib.suppress(*DRIVER_ERRORS):
            await writer.close(timeout=2)
    if readers is not None:
        with contextlib.suppress(*DRIVER_ERRORS):
            await asyncio.wait_for(readers.close(), 2)
        readers.terminate()


async def next_job(queue: asyncio.Queue[_J | None], *, down: Callable[[], bool],
                      probe: Callable[[], Awaitable[None]],
                      interval_s: float = PROBE_INTERVAL_S) -> _J | None:
    """The next job (``None``: stop). While ``down()`` says the server is lost, ``probe``
    runs every ``interval_s`` that passes without a job."""
    while down():
        try:
            return await asyncio.wait_for(queue.get(), interval_s)
        except TimeoutError:
            await probe()
    return await queue.get()


def drain_batch(queue: asyncio.Queue[_J | None], first: _J,
                batch_max: int) -> tuple[list[_J], bool]:
    """``first`` and the jobs queued behind it, up to ``batch_max`` in all; and whether the
    stop mark (``None``) was reached, after which nothing more is taken."""
    batch = [first]
    while len(batch) < batch_max and not queue.empty():
        more = queue.get_nowait()
        if more is None:
            return batch, True
        batch.append(more)
    return batch, False
