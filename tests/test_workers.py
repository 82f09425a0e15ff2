"""``palyra daemon run --workers 2``: a control process and two ingress workers on one
listening socket, as real processes over real HTTP and a real journal."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from palyra_py.providers import get_provider
from tests.daemon_process import DaemonProcess

SECRET = "workers-secret-one"
NEW_SECRET = "workers-secret-two"
GITHUB = get_provider("github")


def admin_session(state_dir: Path) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.UnixConnector(path=str(state_dir / "palyra.sock")),
        base_url="http://admin",
    )


@pytest.fixture
async def daemon(state_dir: Path) -> AsyncIterator[DaemonProcess]:
    process = await DaemonProcess(state_dir, workers="2").start()
    try:
        yield process
    finally:
        await process.stop()


async def _admin(state_dir: Path, method: str, path: str,
                 body: dict[str, Any] | None = None) -> dict[str, Any]:
    async with admin_session(state_dir) as admin, admin.request(method, path,
                                                                 json=body) as resp:
        answer: dict[str, Any] = await resp.json()
        assert resp.status < 300, answer
        return answer


async def _add_github(state_dir: Path, integration_id: str = "gh") -> None:
    await _admin(state_dir, "POST", "/v1/webhooks", {
        "integration_id": integration_id, "provider": "github", "secret": {"value": SECRET}})


def _signed(delivery: str, secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"ref": "refs/heads/main", "delivery": delivery}).encode()
    signed = GITHUB.sign(body, secret, time.time(), "push", delivery)
    return signed.body, dict(signed.headers)


async def _send_each_on_its_own_connection(
    url: str, deliveries: list[str], secret: str = SECRET, concurrency: int = 16,
) -> dict[str, int]:
    """POST one signed webhook per delivery id, each on a new connection (so that the
    kernel hands them to whichever worker accepts first); the status of each."""
    statuses: dict[str, int] = {}
    connector = aiohttp.TCPConnector(force_close=True, limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        async def one(delivery: str) -> None:
            body, headers = _signed(delivery, secret)
            async with http.post(url, data=body, headers=headers) as resp:
                statuses[delivery] = resp.status

        await asyncio.gather(*(one(d) for d in deliveries))
    return statuses


async def _journaled_deliveries(state_dir: Path) -> list[str]:
    found: list[str] = []
    after = 0
    while True:
        page = await _admin(state_dir, "GET", f"/v1/events?type=webhook.received"
                                              f"&after_seq={after}&limit=1000")
        found += [event["payload"]["payload"]["delivery"] for event in page["events"]]
        if page["next_after_seq"] is None:
            return found
        after = page["next_after_seq"]


async def _workers(state_dir: Path) -> list[dict[str, Any]]:
    status = await _admin(state_dir, "GET", "/v1/status")
    return [p for p in status["processes"] if p["role"] == "worker"]


def sample(exposition: str, name: str) -> float:
    """The value of sample ``name`` in a Prometheus text exposition: a bare name, or one
    with its labels as exposed (``x_total{a="1",b="2"}``, labels in name order)."""
    for line in exposition.splitlines():
        if line.startswith(f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}")


async def _verify(state_dir: Path) -> dict[str, Any]:
    return await _admin(state_dir, "POST", "/v1/journal/verify")


async def test_webhooks_spread_over_the_workers_are_journaled_once(
    state_dir: Path, daemon: DaemonProcess
) -> None:
    status = await _admin(state_dir, "GET", "/v1/status")
    roles = [p["role"] for p in status["processes"]]
    assert roles == ["control", "worker", "worker"]
    assert all(p["pid"] != os.getpid() and p["restarts"] == 0 for p in status["processes"])
    await _add_github(state_dir)
    deliveries = [f"spread-{n:04d}" for n in range(300)]
    statuses = await _send_each_on_its_own_connection(f"{daemon.ingress}/hooks/gh",
                                                      deliveries)
    assert set(statuses.values()) == {202}
    journaled = await _journaled_deliveries(state_dir)
    assert sorted(journaled) == sorted(deliveries)  # every one, once
    status = await _admin(state_dir, "GET", "/v1/status")
    assert status["ingress"]["answers"]["accepted"] == len(deliveries)  # all workers'
    workers = [p for p in status["processes"] if p["role"] == "worker"]
    assert sum(w["accepted"] for w in workers) == len(deliveries)
    assert all(w["accepted"] > 0 for w in workers), workers  # both took some
    assert (await _verify(state_dir))["ok"] is True
    # /metrics, whichever worker answers, counts every worker's webhooks.
    created = await _admin(state_dir, "POST", "/v1/tokens",
                           {"name": "scraper", "scopes": ["metrics"]})
    auth = {"Authorization": f"Bearer {created['secret']}"}
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        for _ in range(6):
            async with http.get(f"{daemon.ingress}/metrics", headers=auth) as resp:
                assert resp.status == 200
                text = await resp.text()
            accepted = [line for line in text.splitlines()
                        if line.startswith("palyra_ingress_requests_total{")
                        and 'reason="accepted"' in line]
            assert [float(line.rsplit(" ", 1)[1]) for line in accepted] == [len(deliveries)]
            # Every process counted its own commits' events: together, the whole journal
            # (each process's head moved past the others' rows too).
            assert sample(text, "palyra_journal_batch_events_sum") == sample(
                text, "palyra_journal_last_seq")
    # journal.commits counts the workers' commits too: one at a time, each is its own.
    before = (await _admin(state_dir, "GET", "/v1/status"))["journal"]["commits"]
    one_by_one = [f"alone-{n}" for n in range(6)]
    for delivery in one_by_one:
        assert await _send_each_on_its_own_connection(
            f"{daemon.ingress}/hooks/gh", [delivery]) == {delivery: 202}
    status = await _admin(state_dir, "GET", "/v1/status")
    assert status["journal"]["commits"] - before >= len(one_by_one), status["journal"]


async def test_an_edit_is_in_force_on_every_worker_when_the_call_returns(
    state_dir: Path, daemon: DaemonProcess
) -> None:
    url = f"{daemon.ingress}/hooks/gh"
    await _add_github(state_dir)
    # At once, on many connections (both workers): no worker still answers 404.
    added = await _send_each_on_its_own_connection(url, [f"add-{n}" for n in range(40)])
    assert set(added.values()) == {202}

    await _admin(state_dir, "POST", "/v1/webhooks/gh/rotate-secret",
                 {"grace_s": 0, "secret": {"value": NEW_SECRET}})
    old = await _send_each_on_its_own_connection(url, [f"old-{n}" for n in range(40)])
    assert set(old.values()) == {401}
    new = await _send_each_on_its_own_connection(url, [f"new-{n}" for n in range(40)],
                                                 NEW_SECRET)
    assert set(new.values()) == {202}

    await _admin(state_dir, "DELETE", "/v1/webhooks/gh")
    gone = await _send_each_on_its_own_connection(url, [f"gone-{n}" for n in range(40)],
                                                  NEW_SECRET)
    assert set(gone.values()) == {404}

    # A hand edit and a reload: in force everywhere when reload returns.
    (state_dir / "webhooks.toml").write_text(
        '[[webhooks]]\nintegration_id = "hand"\nprovider = "github"\n'
        "signature_required = false\n", encoding="utf-8")
    await _admin(state_dir, "POST", "/v1/reload")
    hand = await _send_each_on_its_own_connection(f"{daemon.ingress}/hooks/hand",
                                                  [f"hand-{n}" for n in range(40)])
    assert set(hand.values()) == {202}


async def test_a_killed_worker_is_restarted_and_nothing_acknowledged_is_lost(
    state_dir: Path, daemon: DaemonProcess
) -> None:
    await _add_github(state_dir)
    victim = (await _workers(state_dir))[0]
    url = f"{daemon.ingress}/hooks/gh"
    acked: set[str] = set()
    target = 200
    reached = asyncio.Event()
    stop_sending = asyncio.Event()

    async def sender(lane: int, http: aiohttp.ClientSession) -> None:
        n = 0
        while not stop_sending.is_set():
            delivery = f"kill-{lane:02d}-{n:06d}"
            n += 1
            body, headers = _signed(delivery)
            try:
                async with http.post(url, data=body, headers=headers) as resp:
                    if resp.status == 202:
                        acked.add(delivery)
            except aiohttp.ClientError:
                continue  # the killed worker's connection: not acknowledged, sent again
            if len(acked) >= target:
                reached.set()

    mark = len(daemon.log)
    connector = aiohttp.TCPConnector(force_close=True, limit=16)
    async with aiohttp.ClientSession(connector=connector) as http:
        lanes = [asyncio.create_task(sender(lane, http)) for lane in range(8)]
        await asyncio.wait_for(reached.wait(), 120)
        os.kill(victim["pid"], signal.SIGKILL)  # in the middle of the traffic
        restarted = await daemon.wait_for_log(("worker_restarted",), mark)
        # Traffic goes on being acknowledged after the restart.
        target = len(acked) + 100
        reached.clear()
        await asyncio.wait_for(reached.wait(), 120)
        stop_sending.set()
        await asyncio.gather(*lanes)

    assert restarted["previous_pid"] == victim["pid"]
    assert restarted["signal"] == "SIGKILL"
    workers = await _workers(state_dir)
    slot = next(w for w in workers if w["index"] == victim["index"])
    assert slot["pid"] != victim["pid"] and slot["restarts"] == 1
    journaled = await _journaled_deliveries(state_dir)
    assert acked <= set(journaled)
    assert len(journaled) == len(set(journaled))
    events = await _admin(state_dir, "GET", "/v1/events?type=daemon.worker_restarted")
    assert [e["payload"]["previous_pid"] for e in events["events"]] == [victim["pid"]]
    assert (await _verify(state_dir))["ok"] is True


async def test_sigterm_drains_every_process(state_dir: Path, daemon: DaemonProcess) -> None:
    await _add_github(state_dir)
    pids = [w["pid"] for w in await _workers(state_dir)]
    url = f"{daemon.ingress}/hooks/gh"
    acked: set[str] = set()
    reached = asyncio.Event()

    async def sender(lane: int, http: aiohttp.ClientSession) -> None:
        for n in range(100_000):
            delivery = f"term-{lane:02d}-{n:06d}"
            body, headers = _signed(delivery)
            try:
                async with http.post(url, data=body, headers=headers) as resp:
                    if resp.status == 202:
                        acked.add(delivery)
            except aiohttp.ClientError:
                return  # the listener is closed: the daemon is going
            if len(acked) >= 100:
                reached.set()

    mark = len(daemon.log)
    connector = aiohttp.TCPConnector(force_close=True, limit=16)
    async with aiohttp.ClientSession(connector=connector) as http:
        lanes = [asyncio.create_task(sender(lane, http)) for lane in range(8)]
        await asyncio.wait_for(reached.wait(), 120)
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)  # requests are in flight on both workers
        await asyncio.gather(*lanes)
    assert await daemon.stop() == 0
    drained = {r["pid"] for r in daemon.log[mark:] if r.get("event") == "worker_draining"}
    assert drained == set(pids)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

    again = await DaemonProcess(state_dir).start()
    try:
        journaled = await _journaled_deliveries(state_dir)
        stopped = await _admin(state_dir, "GET", "/v1/events?type=daemon.stopped")
        verdict = await _verify(state_dir)
    finally:
        await again.stop()
    assert acked <= set(journaled)
    assert len(journaled) == len(set(journaled))
    assert len(stopped["events"]) == 1
    assert verdict["ok"] is True


async def _read_stream_until(resp: aiohttp.ClientResponse, seq: int) -> list[int]:
    seen: list[int] = []
    while True:
        line = await asyncio.wait_for(resp.content.readline(), 30)
        assert line, "the stream ended"
        if line.startswith(b"data: "):
            seen.append(json.loads(line[len(b"data: "):])["seq"])
            if seen[-1] >= seq:
                return seen


async def test_a_commit_in_any_process_reaches_the_streams_of_the_others(
    state_dir: Path, daemon: DaemonProcess
) -> None:
    created = await _admin(state_dir, "POST", "/v1/tokens",
                           {"name": "reader", "scopes": ["read", "publish"]})
    auth = {"Authorization": f"Bearer {created['secret']}"}
    head = (await _admin(state_dir, "GET", "/v1/status"))["journal"]["last_seq"]
    base = daemon.ingress
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http, \
            admin_session(state_dir) as admin:
        # Streams on several connections (the workers'), and one on the admin socket (the
        # control process's), all open before anything is committed.
        public = [await http.get(f"{base}/v1/events/stream", params={"after_seq": str(head)},
                                 headers=auth) for _ in range(6)]
        control = await admin.get("/v1/events/stream", params={"after_seq": str(head)})
        try:
            assert all(resp.status == 200 for resp in [*public, control])
            # Committed by the control process: every worker's streams see it.
            published = await _admin(state_dir, "POST", "/v1/events", {"type": "cross.admin"})
            for resp in [*public, control]:
                assert published["seq"] in await _read_stream_until(resp, published["seq"])
            # Committed by a worker: the control process's stream and the other worker's.
            async with http.post(f"{base}/v1/events", json={"type": "cross.public"},
                                 headers=auth) as resp:
                answer = await resp.json()
                assert resp.status == 201, answer
            for resp in [*public, control]:
                assert answer["seq"] in await _read_stream_until(resp, answer["seq"])
        finally:
            for resp in [*public, control]:
                resp.close()


@pytest.fixture
async def quick_to_replace(state_dir: Path) -> AsyncIterator[DaemonProcess]:
    """The ``daemon`` fixture's, waiting 2 s (not 10) for a worker to take an edit."""
    process = await DaemonProcess(
        state_dir, workers="2", env={"PALYRA_DAEMON_WORKER_ACK_TIMEOUT_S": "2"}).start()
    try:
        yield process
    finally:
        await process.stop()


async def test_a_worker_that_does_not_acknowledge_an_edit_is_replaced(
    state_dir: Path, quick_to_replace: DaemonProcess
) -> None:
    daemon = quick_to_replace
    await _add_github(state_dir)
    victim = (await _workers(state_dir))[0]
    mark = len(daemon.log)
    os.kill(victim["pid"], signal.SIGSTOP)  # alive, holding its old registry, deaf
    try:
        # Returns once the stopped worker is gone (after the acknowledgement timeout).
        await _admin(state_dir, "DELETE", "/v1/webhooks/gh")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim["pid"], signal.SIGCONT)
    gone = await _send_each_on_its_own_connection(f"{daemon.ingress}/hooks/gh",
                                                  [f"deaf-{n}" for n in range(40)])
    assert set(gone.values()) == {404}
    restarted = await daemon.wait_for_log(("worker_restarted",), mark)
    assert restarted["previous_pid"] == victim["pid"]
    assert any(r.get("event") == "worker_not_acknowledging" for r in daemon.log[mark:])
    settings = (await _admin(state_dir, "GET", "/v1/status"))["settings"]
    assert {"section": "daemon", "key": "worker_ack_timeout_s", "value": 2.0,
            "source": "env"} in settings
