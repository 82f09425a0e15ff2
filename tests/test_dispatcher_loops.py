"""The dispatcher's two loops are guarded: one that crashes on an unexpected error is
logged and started again, and delivery goes on (before, ``Dispatcher.run`` gathered them
bare: the crash of one ended ``run`` while the other went on alone, and nothing was
delivered any more). Real parts: a journal, a bus, a delivery store and a sender; the
registry view (the ``subscriptions`` the daemon passes) fails once."""

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


async def test_a_crashed_loop_is_logged_and_started_again_and_delivery_goes_on(
    parts: tuple[Journal, SeqBus], tmp_path: Path, receiver: CapturingReceiver,
) -> None:
    journal, bus = parts
    store = DeliveryStore(tmp_path / "deliveries.db")
    await store.start()
    await store.set_cursor("app", 0)  # from the journal's start (a new one starts at its head)
    sender = Sender(AddressPolicy(allow_private=True))
    await sender.start()
    secret = tmp_path / "signing-secret"
    secret.write_text("whsec_" + base64.b64encode(b"k" * 24).decode())
    secret.chmod(0o600)
    subs = parse_subscriptions({"subscriptions": [
        {"subscription_id": "app", "url": receiver.url, "events": ["job.*"],
         "secret_ref": f"file:{secret}"}]})
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
            await journal.append(NewEvent(kind="job.done", source="api",
                                          payload={"data": {"n": 1}}))
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
