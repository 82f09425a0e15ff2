"""Replies to the sender in cluster mode: the response fields travel with the registry
document in PostgreSQL, and another node's workers answer with the command."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from tests.pg import PgServer
from tests.test_registry_cluster import cluster
from tests.test_replies import SECRET, SLASH, STATIC, post_slash


async def test_in_cluster_mode_the_fields_travel_with_the_registry_document(
    pg_server: PgServer, tmp_path: Path
) -> None:
    """Added on node A, answered by node B's workers: the response fields are in the
    document both nodes read from PostgreSQL, and the journal is PostgreSQL's."""
    async with cluster(pg_server, tmp_path, SL_SECRET=SECRET) as (a, b):
        mark = b.mark()
        await a.ok("POST", "/v1/webhooks", {
            "integration_id": "sl", "provider": "slack", "secret": {"ref": "env:SL_SECRET"},
            "response": STATIC, "response_command": ["/bin/sh", "-c", "echo \"$PALYRA_SEQ\""],
            "response_timeout_s": 5})
        registry = await a.ok("GET", "/v1/registry")
        assert 'response_command = ["/bin/sh", "-c",' in registry["document"]
        await asyncio.wait_for(b.in_force(registry["version"], mark), 5)
        url, now = f"{b.process.ingress}/hooks/sl", time.time()
        async with aiohttp.ClientSession() as http:
            status, body, headers = await post_slash(http, url, SLASH, now)
            again = await post_slash(http, url, SLASH, now)  # the same signed request
        assert status == 200 and body.decode().strip() == headers["Palyra-Seq"]
        assert again[0] == 200 and again[1] == b"On it."
        assert again[2]["Palyra-Event-Id"] == headers["Palyra-Event-Id"]
