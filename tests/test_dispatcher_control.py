"""The dispatcher on its own, with real parts (a journal, a bus, a SQLite delivery store,
a sender, a receiver on loopback):

- its two loops are guarded: one that crashes on an unexpected error is logged and
  started again, and delivery goes on (before, ``Dispatcher.run`` gathered them bare: the
  crash of one ended ``run`` while the other went on alone);
- with leases (cluster mode) it delivers only what it was told to
  (``start_delivering``), resumes from the store's cursor and pending deliveries, not
  from what it cached, and ``stop_delivering`` cancels what is in flight."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog.testing

from palyra_py.bus.local import SeqBus
from palyra_py.delivery.store import DeliveryStore
from palyra_py.journal.journal import Journal, NewEvent
from palyra_py.outbound.dispatcher import Dispatcher
from palyra_py.outbound.http import Sender
from palyra_py.outbound.ssrf import AddressPolicy
from palyra_py.registry.subscriptions import Subscription, parse_subscriptions
from palyra_py.secrets.store import SecretStore
from palyra_py.testing import CapturingReceiver, MemoryKeyring


async def _nothing(*_args: Any) -> None:
    return None


def app_subscription(tmp_path: Path, url: str, **fields: Any) -> Mapping[str, Subscription]:
    secret = tmp_path / "signing-secret"
    secret.write_text("whsec_" + base64.b64encode(b"k" * 24).decode())
    secret.chmod(0o600)
    return parse_subscriptions({"subscriptions": [
        {"subscription_id": "app", "url": url, "events": ["job.*"],
         "secret_ref": f"file:{secret}", **fields}]})


async def job(journal: Journal, n: int) -> str:
    result = await journal.append(NewEvent(kind="job.done", source="api",
                                           payload={"data": {"n": n}}))
    return result.event_id


async def test_a_crashed_loop_is_logged_and_started_again_and_delivery_goes_on(
    parts: tuple[Journal, SeqBus], tmp_path: Path, receiver: CapturingReceiver,
) -> None:
    journal, bus = parts
    store = DeliveryStore(tmp_path / "deliveries.db")
    await store.start()
    await store.set_cursor("app", 0)  # from the journal's start (a new one starts at its head)
    sender = Sender(AddressPolicy(allow_private=True))
    await sender.start()
    subs = app_subscription(tmp_path, receiver.url)
    calls = 0

    def registry_view() -> Mapping[str, Subscription]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("the registry view failed once")
        return subs

    dispatcher = Dispatcher(
        journal=journal, bus=bus, store=store, sender=sender, subscriptions=registry_view,
        secrets=SecretStore(tmp_path, backend=MemoryKeyring()), journal_event=_nothing,
        disable_subscription=_nothing)
    with structlog.testing.capture_logs() as logs:
        running = asyncio.create_task(dispatcher.run())
        try:
            await job(journal, 1)
            await receiver.wait_for(1, timeout=15)
            assert not running.done()
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await sender.close()
            await store.close()
    assert dispatcher.loop_crashes == 1
    (crash,) = [e for e in logs if e["event"] == "dispatcher_loop_crashed"]
    assert crash["loop"] in ("enqueuer", "scheduler") and crash["log_level"] == "error"
    assert receiver.received[0].json()["data"] == {"n": 1}


async def test_with_leases_it_delivers_what_it_leases_from_the_stores_cursor_only(
    parts: tuple[Journal, SeqBus], tmp_path: Path, receiver: CapturingReceiver,
) -> None:
    journal, bus = parts
    store = DeliveryStore(tmp_path / "deliveries.db")
    await store.start()
    await store.set_cursor("app", 0)
    sender = Sender(AddressPolicy(allow_private=True))
    await sender.start()
    subs = app_subscription(tmp_path, receiver.url, max_in_flight=2)
    dispatcher = Dispatcher(
        journal=journal, bus=bus, store=store, sender=sender, subscriptions=lambda: subs,
        secrets=SecretStore(tmp_path, backend=MemoryKeyring()), journal_event=_nothing,
        disable_subscription=_nothing, leased=True)
    running = asyncio.create_task(dispatcher.run())
    try:
        first = await job(journal, 1)
        # Not leased: nothing is enqueued, the cursor stays.
        assert await dispatcher.enqueue_once() is False
        assert await store.cursor("app") == 0
        dispatcher.start_delivering("app")
        assert dispatcher.delivering() == ["app"]
        await receiver.wait_for(1)
        # The next attempt hangs at the receiver: the lease is given up with no grace,
        # the attempt is cancelled and stays pending.
        receiver.script = [lambda _got: None]
        second = await job(journal, 2)
        await receiver.wait_for(2)
        await dispatcher.stop_delivering("app", grace_s=0)
        assert dispatcher.in_flight("app") == (0, 0) and dispatcher.delivering() == []
        assert await store.pending_count() == 1
        # Meanwhile another node moved the cursor past a third event: the next lease
        # starts there (the third is not delivered) and sends the pending second again.
        third = await job(journal, 3)
        await store.set_cursor("app", await journal.last_seq())
        receiver.script.clear()
        receiver.hang.set()
        dispatcher.start_delivering("app")
        await receiver.wait_for(3)
        fourth = await job(journal, 4)
        await receiver.wait_for(4)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await sender.close()
        await store.close()
    ids = [r.headers["webhook-id"] for r in receiver.received]
    assert ids == [first, second, second, fourth] and third not in ids
