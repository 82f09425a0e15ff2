"""Admin API: daemon status and registry reload. The other resources live in
``admin.webhooks``, ``admin.subscriptions``, ``admin.deliveries`` and ``admin.events``."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from typing import Any

from aiohttp import web

from palyra_py import __version__
from palyra_py.admin.context import DaemonRuntime, StatusContext
from palyra_py.admin.errors import ApiError
from palyra_py.journal.journal import JournalUnavailable
from palyra_py.registry.positions import RegistryError
from palyra_py.settings import storage_location


def open_files(runtime: DaemonRuntime) -> dict[str, Any]:
    """The open-file limit against what the caps need, and the warning when it lowered
    them."""
    budget = runtime.fd_budget
    if budget is None:
        return {"limit": None, "hard": None, "needed": None, "lowered": False, "warning": None}
    return {"limit": budget.limit, "hard": budget.hard, "needed": budget.needed,
            "lowered": budget.lowered, "warning": runtime.fd_warning or None}


def per_node_warnings(ctx: StatusContext) -> list[dict[str, str]]:
    """In cluster mode, each integration whose secret is per node (``keyring:``)."""
    rows = []
    for integration_id, integ in sorted(ctx.reloader.registry.integrations.items()):
        warning = ctx.secrets.per_node_warning(integ.secret_ref)
        if warning is not None:
            rows.append({"integration_id": integration_id, "warning": warning})
    return rows


class AdminApi:
    def __init__(self, context: StatusContext) -> None:
        self.ctx = context

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/status", self.status), web.post("/v1/reload", self.reload)]

    async def status(self, request: web.Request) -> web.Response:
        ctx = self.ctx
        readiness = await asyncio.gather(
            *(ctx.readiness.readiness_of(i) for i in ctx.reloader.registry.integrations.values())
        )
        counts = Counter(r for r, _ in readiness)
        by_readiness = {k: counts.get(k, 0) for k in
                        ("ready", "disabled", "invalid_secret_ref", "secret_not_found")}
        now = ctx.time.clock()
        problem = ctx.journal.check_file()
        try:
            last_seq: int | None = await ctx.journal.last_seq()
        except JournalUnavailable as exc:
            last_seq, problem = None, problem or str(exc)
        storage = storage_location(ctx.settings)
        processes = await ctx.runtime.processes()  # first: it refreshes the workers' figures
        started_at = ctx.runtime.started_at
        connections = ctx.listener.connections
        cluster = await ctx.runtime.cluster_view()
        return web.json_response({
            "version": __version__,
            "pid": os.getpid(),
            "started_at": started_at,
            "uptime_s": round(now - started_at, 3),
            "state_dir": str(ctx.state_dir),
            "listeners": [{"kind": x.kind, "address": x.address}
                          for x in ctx.runtime.listeners],
            "processes": processes,
            "admin_socket": str(ctx.admin_socket),
            "registry": str(ctx.registry_path),
            "deliveries": {"path": ctx.deliveries_location, "storage": storage,
                           "problem": (ctx.deliveries.check_file()
                                       or ctx.deliveries.down_reason)},
            "journal": {
                # On PostgreSQL: the URI without its password.
                "path": (str(ctx.journal_path) if storage == "sqlite" else storage),
                "storage": storage,
                "size_bytes": ctx.journal.size_bytes(),
                "last_seq": last_seq,
                "problem": problem,
                "commits": ctx.runtime.journal_commits(),
                "retention": {
                    "days": ctx.settings.get("journal", "retention_days"),
                    "max_bytes": ctx.settings.get("journal", "retention_max_bytes"),
                },
            },
            "integrations": {"total": len(ctx.reloader.registry.integrations),
                             "by_readiness": by_readiness,
                             "warnings": per_node_warnings(ctx)},
            "ingress": {**ctx.runtime.ingress_figures(),
                        "max_connections": connections.limit,
                        "max_connections_per_source": connections.per_source},
            "keyring": {"backend": ctx.secrets.backend_name,
                        "fallback": ctx.secrets.is_fallback,
                        "warning": ctx.secrets.new_secrets_warning()},
            "open_files": open_files(ctx.runtime),
            "settings": ctx.settings.table(),
            **({} if cluster is None else {"cluster": cluster}),
        })

    async def reload(self, request: web.Request) -> web.Response:
        try:
            registry = await self.ctx.reloader.reload()
        except RegistryError as exc:
            extra = {"location": exc.location} if exc.location else {}
            raise ApiError(422, "registry_invalid",
                           f"{exc} (the previous registry stays in force)", **extra) from None
        return web.json_response(
            {"status": "reloaded", "integrations": len(registry.integrations)}
        )
