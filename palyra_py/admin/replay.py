"""Admin API: replay and backfill (``POST /v1/subscriptions/{id}/replay``): past journal
events delivered to a subscription, one page per request (``outbound.replay``)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from palyra_py.admin.context import ReplayContext
from palyra_py.admin.errors import invalid, read_json_object
from palyra_py.admin.events import parse_time_ms
from palyra_py.admin.records import path_id
from palyra_py.outbound.replay import PAGE, ReplaySpan, replay_page


def _seq(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise invalid(f"{name}: a journal seq (an integer from 1)", name)
    return value


def _time(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise invalid(f"{name}: RFC 3339 or unix seconds", name)
    return parse_time_ms(str(value), name)


class ReplayApi:
    def __init__(self, context: ReplayContext) -> None:
        self.ctx = context

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/subscriptions/{id}/replay", self.replay)]

    async def replay(self, request: web.Request) -> web.Response:
        subscriptions = self.ctx.registry_view.registry.subscriptions
        sub = subscriptions[path_id(request, subscriptions, noun="subscription",
                                    field="subscription_id")]
        body = await read_json_object(request)
        from_seq, to_seq = _seq(body, "from_seq"), _seq(body, "to_seq")
        since, until = _time(body, "since"), _time(body, "until")
        if from_seq is None and since is None:
            raise invalid("give from_seq (a journal seq) or since (a time)", "from_seq")
        limit = body.get("limit", PAGE)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= PAGE:
            raise invalid(f"limit: an integer from 1 to {PAGE}", "limit")
        head = await self.ctx.journal.last_seq()
        # Up to the head when the replay began: what comes later is delivered as usual.
        span = ReplaySpan(after_seq=(from_seq or 1) - 1,
                          to_seq=head if to_seq is None else min(to_seq, head),
                          since_ms=since, until_ms=until)
        page = await replay_page(self.ctx.journal, self.ctx.deliveries, sub, span,
                                 now_ms=self.ctx.time.now_ms(), limit=limit)
        if page.replayed:
            self.ctx.dispatcher.wake(everywhere=True)
        return web.json_response({
            "replayed": page.replayed, "scanned": page.scanned, "to_seq": span.to_seq,
            "next_from_seq": None if page.done else page.last_seq + 1,
        })
