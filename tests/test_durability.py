"""A 2xx means durable: SIGKILL the daemon while clients are sending; after a restart,
every delivery that was answered 2xx is in the journal and the hash chain verifies.

Each test runs with one process (``--workers 1``), two workers, and the default (no
``--workers`` flag: on this box a control process and one worker per core)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import aiohttp
import pytest

from palyra_py.providers import get_provider
from tests.daemon_process import DaemonProcess

SECRET = "durability-secret"
BODY = json.dumps({"ref": "refs/heads/main", "pad": "x" * 6000}).encode()


async def admin_session(state_dir: Path) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.UnixConnector(path=str(state_dir / "palyra.sock")),
        base_url="http://admin",
    )


WORKERS = pytest.mark.parametrize("workers", ["1", "2", None], ids=["1", "2", "default"])


@WORKERS
async def test_sigkill_while_sending_loses_no_acknowledged_event(
    state_dir: Path, workers: str | None
) -> None:
    """With ``--workers 2``, SIGKILL hits the control process: its workers drain and stop.
    With the default, every process of the daemon is SIGKILLed at once (the OOM killer
    ending a cgroup, a container killed): nobody drains."""
    daemon = await DaemonProcess(state_dir, workers=workers).start()
    async with await admin_session(state_dir) as admin:
        async with admin.post("/v1/webhooks", json={
            "integration_id": "gh", "provider": "github", "secret": {"value": SECRET},
        }) as resp:
            assert resp.status == 201, await resp.text()
        async with admin.get("/v1/status") as resp:
            pids = [p["pid"] for p in (await resp.json())["processes"]]

    github = get_provider("github")
    acked: set[str] = set()
    enough = asyncio.Event()
    url = f"{daemon.ingress}/hooks/gh"

    async def sender(lane: int, http: aiohttp.ClientSession) -> None:
        import time

        for n in range(10_000):
            delivery = f"{lane:04d}-{n:06d}-durability-test"
            # Each event its own content: the same content again would be a replay.
            body = BODY.replace(b'"ref"', f'"delivery": "{delivery}", "ref"'.encode(), 1)
            signed = github.sign(body, SECRET, time.time(), "push", delivery)
            try:
                async with http.post(url, data=signed.body, headers=signed.headers) as resp:
                    if resp.status == 202:
                        acked.add(delivery)
            except (TimeoutError, aiohttp.ClientError):
                return  # the daemon is gone
            if len(acked) >= 400:
                enough.set()

    async with aiohttp.ClientSession() as http:
        senders = [asyncio.create_task(sender(lane, http)) for lane in range(16)]
        await asyncio.wait_for(enough.wait(), 120)
        # In the middle of the traffic: requests are still in flight.
        for pid in pids if workers is None else pids[:1]:
            os.kill(pid, signal.SIGKILL)
        await asyncio.gather(*senders)
    assert await daemon.stop() != 0
    assert len(acked) >= 400

    restarted = await DaemonProcess(state_dir, workers=workers).start()
    try:
        async with await admin_session(state_dir) as admin:
            found: set[str] = set()
            after = 0
            while True:
                async with admin.get("/v1/events", params={
                    "type": "webhook.received", "after_seq": after, "limit": 1000,
                }) as resp:
                    page = await resp.json()
                for event in page["events"]:
                    found.add(event["payload"]["replay_protection"]["nonce"])
                if page["next_after_seq"] is None:
                    break
                after = page["next_after_seq"]
            async with admin.post("/v1/journal/verify") as resp:
                verdict = await resp.json()
        assert acked <= found, f"{len(acked - found)} acknowledged deliveries lost"
        assert verdict["ok"], verdict
    finally:
        await restarted.stop()


@WORKERS
async def test_sighup_reloads_a_hand_edit_and_refuses_a_broken_one(
    state_dir: Path, workers: str | None
) -> None:
    """With workers, the control process reloads and every worker takes the registry."""
    daemon = await DaemonProcess(state_dir, workers=workers).start()
    try:
        registry = state_dir / "webhooks.toml"
        registry.write_text(
            "version = 1\n# hand-written\n[[webhooks]]\nintegration_id = \"hand\"\n"
            "provider = \"gitlab\"\nsecret_ref = \"env:HAND_TOKEN\"\n"
        )
        assert daemon.proc is not None
        seen = len(daemon.log)
        daemon.proc.send_signal(signal.SIGHUP)
        record = await daemon.wait_for_log(("registry_reloaded", "registry_reload_refused"), seen)
        assert record["event"] == "registry_reloaded" and record["integrations"] == 1

        registry.write_text(registry.read_text() + "max_payload_bytes = -1\n")
        seen = len(daemon.log)
        daemon.proc.send_signal(signal.SIGHUP)
        record = await daemon.wait_for_log(("registry_reloaded", "registry_reload_refused"), seen)
        assert record["event"] == "registry_reload_refused"
        assert f"{registry}:7:" in record["error"] and "max_payload_bytes" in record["error"]
        async with await admin_session(state_dir) as admin:
            async with admin.get("/v1/webhooks") as resp:
                hooks = (await resp.json())["webhooks"]
        assert [h["integration_id"] for h in hooks] == ["hand"]
    finally:
        await daemon.stop()
