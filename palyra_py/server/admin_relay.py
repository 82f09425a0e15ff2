"""The admin routes a token with the ``admin`` scope may use on the TCP listener
(``GET /v1/registry``, ``POST /v1/registry/import``: git-ops from CI), served as the
admin socket serves them.

In one process the admin handler answers at once. An ingress worker does not write the
registry (its control process is the one writer of a node), so it hands the request to
its control process's admin socket and gives back that answer unchanged: an import from
a worker is in force on every process of the node when it answers, as from the CLI.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web

from palyra_py.admin.errors import ApiError

__all__ = ["RELAY_TIMEOUT_S", "relay_to_admin_socket"]

RELAY_TIMEOUT_S = 60.0
"""Longest wait for the control process's answer (an import waits for every worker)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def relay_to_admin_socket(socket: Path) -> Handler:
    """A handler that sends the request (method, path, query, JSON body) to the admin
    API on ``socket`` and answers what it answered; 503 ``registry_unavailable`` when the
    control process does not answer."""

    async def relay(request: web.Request) -> web.StreamResponse:
        # body_exists, not can_read_body: a guard before it may have read (and so cached)
        # the body already (admin.destination_guard).
        body = await request.read() if request.body_exists else None
        connector = aiohttp.UnixConnector(path=str(socket))
        timeout = aiohttp.ClientTimeout(total=RELAY_TIMEOUT_S)
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session, \
                    session.request(request.method, f"http://admin{request.rel_url}",
                                    data=body,
                                    headers={"Content-Type": "application/json"}) as answer:
                payload = await answer.read()
                return web.Response(body=payload, status=answer.status,
                                    content_type="application/json")
        except (aiohttp.ClientError, OSError, TimeoutError):
            raise ApiError(503, "registry_unavailable",
                           "the control process did not answer; try again") from None

    return relay
