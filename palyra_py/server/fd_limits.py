"""The open-file limit (``RLIMIT_NOFILE``) against the connection caps.

Every ingress connection, live stream and outbound delivery holds a file descriptor. When
the process runs out of them first, ``accept()`` fails with EMFILE: senders hang without
the documented 503 and the admin socket stops answering. So at start the daemon works out
what its caps need (``ingress.max_connections`` + ``stream.max_clients`` +
``delivery.max_in_flight_total`` + :data:`RESERVE_FDS` for the admin socket, the stores, the
listening sockets and the connections being refused), raises its soft limit towards the
hard limit to fit, and where even the hard limit is too small lowers the ingress and
stream caps to what it can hold, with a warning that ``palyra daemon status`` repeats. A
limit too small to serve at all is refused at start.

:func:`plan_fds` is the pure rule; :func:`fit_open_file_limit` applies it to this process.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

RESERVE_FDS = 64
"""Descriptors kept back for everything but the caps: the admin socket and its clients,
the journal and delivery stores (with their WAL files), the listening sockets, the
keyring file, and connections being answered 503 (each needs one while it is refused)."""


class FdLimitError(Exception):
    """The open-file limit cannot hold even one connection and one stream."""


@dataclass(frozen=True, slots=True)
class FdBudget:
    limit: int
    """The soft ``RLIMIT_NOFILE`` in force after start."""
    hard: int | None
    """The hard limit (None: unlimited)."""
    needed: int
    """What the configured caps need, reserve included."""
    max_connections: int
    """``ingress.max_connections`` in force (lowered when the limit cannot hold it)."""
    max_streams: int
    """``stream.max_clients`` in force (likewise)."""
    raised_from: int | None = None
    """The soft limit before the daemon raised it (None: not raised)."""

    @property
    def lowered(self) -> bool:
        return self.limit < self.needed

    def warning(self, max_connections: int, max_streams: int) -> str:
        """What an operator is told when the caps were lowered ("" when they were not)."""
        if not self.lowered:
            return ""
        return (
            f"the open-file limit is {self.limit} (hard {self.hard or 'unlimited'}) but the "
            f"configured caps need {self.needed}: ingress.max_connections lowered "
            f"{max_connections} -> {self.max_connections}, stream.max_clients lowered "
            f"{max_streams} -> {self.max_streams}. Raise LimitNOFILE= (systemd) or "
            f"ulimit -n to at least {self.needed}"
        )


def needed_fds(max_connections: int, max_streams: int, outbound: int,
               reserve: int = RESERVE_FDS) -> int:
    return max_connections + max_streams + outbound + reserve


def plan_fds(limit: int, hard: int | None, *, max_connections: int, max_streams: int,
             outbound: int, reserve: int = RESERVE_FDS,
             raised_from: int | None = None) -> FdBudget:
    """The caps a soft limit of ``limit`` descriptors can hold. Past what it holds, the
    ingress and stream caps shrink in proportion (at least one each); below that,
    :class:`FdLimitError`."""
    needed = needed_fds(max_connections, max_streams, outbound, reserve)
    available = limit - reserve - outbound
    if available >= max_connections + max_streams:
        return FdBudget(limit, hard, needed, max_connections, max_streams, raised_from)
    if available < 2:
        raise FdLimitError(
            f"the open-file limit is {limit} (hard {hard or 'unlimited'}): after "
            f"{reserve} reserved and delivery.max_in_flight_total = {outbound} it cannot hold "
            f"one ingress connection and one stream; the configured caps need {needed}. "
            f"Raise LimitNOFILE= (systemd) or ulimit -n to at least {needed}"
        )
    connections = max(1, available * max_connections // (max_connections + max_streams))
    connections = min(connections, available - 1)
    return FdBudget(limit, hard, needed, connections, available - connections, raised_from)


def fit_open_file_limit(*, max_connections: int, max_streams: int,
                        outbound: int) -> FdBudget:
    """Raise this process's soft ``RLIMIT_NOFILE`` towards the hard limit as far as the
    caps need, then :func:`plan_fds` with the limit in force."""
    needed = needed_fds(max_connections, max_streams, outbound)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    raised_from = None
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                raised_from = soft
            except (ValueError, OSError):
                pass  # not allowed here: plan with the limit as it is
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = needed if soft == resource.RLIM_INFINITY else soft
    return plan_fds(limit, None if hard == resource.RLIM_INFINITY else hard,
                    max_connections=max_connections, max_streams=max_streams,
                    outbound=outbound, raised_from=raised_from)
