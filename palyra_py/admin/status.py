"""Admin API: daemon status and registry reload. The other resources live in
``admin_webhooks`` and ``admin_events``."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from typing import TYPE_CHECKING, Any

from aiohttp import web

from palyra_py import __version__
from palyra_py.admin.errors import ApiError
from palyra_py.journal.journal import JournalUnavailable
from palyra_py.registry.integrations import RegistryError

if TYPE_CHECKING:
    from palyra_py.server.daemon import Daemon


def open_files(d: Daemon) -> dict[str, Any]:
    """The open-file limit against what the caps need, and the warning when it lowered
    them."""
    budget = d.fd_budget
    if budget is None:
        return {"limit": None, "hard": None, "needed": None, "lowered": False, "warning": None}
    return {"limit": budget.limit, "hard": budget.hard, "needed": budget.needed,
            "lowered": budget.lowered, "warning": d.fd_warning or None}


class AdminApi:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/status", self.status), web.post("/v1/reload", self.reload)]

    async def status(self, request: web.Request) -> web.Response:
        d = self.d
        readiness = await asyncio.gather(
            *(d.readiness_of(i) for i in d.registry.integrations.values())
        )
        counts = Counter(r for r, _ in readiness)
        by_readiness = {k: counts.get(k, 0) for k in
                        ("ready", "disabled", "invalid_secret_ref", "secret_not_found")}
        now = d.clock()
        problem = d.journal.check_file()
        try:
            last_seq: int | None = await d.journal.last_seq()
        except JournalUnavailable as exc:
            last_seq, problem = None, problem or str(exc)
        processes = await d.processes()  # first: it refreshes the workers' figures
        return web.json_response({
            "version": __version__,
            "pid": os.getpid(),
            "started_at": d.started_at,
            "uptime_s": round(now - d.started_at, 3),
            "state_dir": str(d.state_dir),
            "listeners": [{"kind": x.kind, "address": x.address} for x in d.listeners],
            "processes": processes,
            "admin_socket": str(d.socket_path),
            "registry": str(d.registry_file.path),
            "deliveries": {"path": str(d.deliveries.path),
                           "problem": d.deliveries.check_file()},
            "journal": {
                "path": str(d.journal_path),
                "size_bytes": d.journal.size_bytes(),
                "last_seq": last_seq,
                "problem": problem,
                "commits": getattr(d.journal, "commits", None),
                "retention": {
                    "days": d.settings.get("journal", "retention_days"),
                    "max_bytes": d.settings.get("journal", "retention_max_bytes"),
                },
            },
            "integrations": {"total": len(d.registry.integrations), "by_readiness": by_readiness},
            "ingress": {**d.ingress_figures(),
                        "max_connections": d.connections.limit,
                        "max_connections_per_source": d.connections.per_source},
            "keyring": {"backend": d.secrets.backend_name, "fallback": d.secrets.is_fallback},
            "open_files": open_files(d),
            "settings": d.settings.table(),
        })

    async def reload(self, request: web.Request) -> web.Response:
        try:
            registry = await self.d.reload()
        except RegistryError as exc:
            extra = {"location": exc.location} if exc.location else {}
            raise ApiError(422, "registry_invalid",
                           f"{exc} (the previous registry stays in force)", **extra) from None
        return web.json_response(
            {"status": "reloaded", "integrations": len(registry.integrations)}
        )
