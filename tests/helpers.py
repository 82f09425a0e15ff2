"""Small helpers shared by the end-to-end tests (not our components: HTTP plumbing)."""

from __future__ import annotations

from typing import Any, NamedTuple

import aiohttp

from palyra_py.providers import get_provider
from palyra_py.server.daemon import Daemon


async def add_integration(
    admin: aiohttp.ClientSession, integration_id: str, provider: str = "github",
    secret: str = "It's a Secret to Everybody", **fields: Any,
) -> dict[str, Any]:
    body = {"integration_id": integration_id, "provider": provider,
            "secret": {"value": secret}, **fields}
    async with admin.post("/v1/webhooks", json=body) as resp:
        data: dict[str, Any] = await resp.json()
        assert resp.status == 201, data
        return data


class NewToken(NamedTuple):
    """An API token just created: its id and the headers that present it."""

    token_id: str
    bearer: dict[str, str]

    @property
    def secret(self) -> str:
        """The token itself (``plt_...``), for requests written by hand."""
        return self.bearer["Authorization"].removeprefix("Bearer ")


async def create_token(admin: aiohttp.ClientSession, name: str, **fields: Any) -> NewToken:
    """A new API token (``fields``: ``scopes``, ``expires_in_s``, ...), created over the
    admin API; the 201 is asserted."""
    async with admin.post("/v1/tokens", json={"name": name, **fields}) as resp:
        answer = await resp.json()
        assert resp.status == 201, answer
    return NewToken(answer["token"]["token_id"], {"Authorization": f"Bearer {answer['secret']}"})


async def send_signed(
    http: aiohttp.ClientSession, daemon: Daemon, integration_id: str, body: bytes, *,
    provider: str = "github", secret: str = "It's a Secret to Everybody",
    event: str = "push", delivery_id: str = "8f7d1c3e-0000-4000-8000-000000000001",
    now: float | None = None, extra_headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], aiohttp.typedefs.LooseHeaders]:
    signed = get_provider(provider).sign(
        body, secret, daemon.clock() if now is None else now, event, delivery_id
    )
    headers = {**signed.headers, **(extra_headers or {})}
    async with http.post(daemon.ingress_url_for(integration_id, local=True),
                         data=signed.body, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers


async def events(admin: aiohttp.ClientSession, **query: Any) -> list[dict[str, Any]]:
    async with admin.get("/v1/events", params={k: str(v) for k, v in query.items()}) as resp:
        data = await resp.json()
        assert resp.status == 200, data
        result: list[dict[str, Any]] = data["events"]
        return result
