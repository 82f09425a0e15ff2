"""Subscription URLs that are credentials (Slack's and Discord's incoming webhooks) on the
real daemon: kept in the keyring with a reference in the registry, resolved when
delivering, never shown; and URLs given as references (env:VAR)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from palyra_py.daemon import Daemon
from palyra_py.testing import MemoryKeyring, running_daemon
from tests.fault_helpers import admin_session
from tests.receiver import Receiver

SECRET_PART = "T0AAAA/B0BBBB/s3cretPathPart"


async def call(admin: aiohttp.ClientSession, method: str, path: str, expect: int,
               **body: Any) -> dict[str, Any]:
    async with admin.request(method, path, json=body) as resp:
        answer: dict[str, Any] = await resp.json()
        assert resp.status == expect, answer
        return answer


async def sub_url(admin: aiohttp.ClientSession, sid: str) -> str:
    return str((await call(admin, "GET", f"/v1/subscriptions/{sid}", 200))["subscription"]["url"])


async def last_attempt(admin: aiohttp.ClientSession, sid: str) -> dict[str, Any]:
    async with admin.get("/v1/deliveries", params={"subscription": sid}) as resp:
        (row,) = (await resp.json())["deliveries"]
    shown = await call(admin, "GET", f"/v1/deliveries/{row['delivery_id']}", 200)
    attempt: dict[str, Any] = shown["attempts"][-1]
    return attempt


async def test_a_slack_url_is_kept_in_the_keyring_and_still_delivered_to(
    outbound: Daemon, admin_o: aiohttp.ClientSession, receiver: Receiver,
    memory_keyring: MemoryKeyring, state_dir: Path,
) -> None:
    url = f"{receiver.url}/services/{SECRET_PART}"
    created = await call(admin_o, "POST", "/v1/subscriptions", 201, subscription_id="chat",
                         url=url, format="slack", events=["qa.*"])
    assert created["subscription"]["url"] == "keyring:subscription-url:chat"
    assert memory_keyring.passwords[("palyra", "subscription-url:chat")] == url
    assert SECRET_PART not in (state_dir / "webhooks.toml").read_text()

    await call(admin_o, "POST", "/v1/events", 201, type="qa.validation_failed",
               data={"kb": "docs"})
    await outbound.dispatcher.wait_for_attempts(1)
    (got,) = receiver.received
    assert got.path == f"/hook/services/{SECRET_PART}"
    assert "text" in got.json()  # Slack's message body
    events = await call(admin_o, "GET", "/v1/events", 200)
    listed = await call(admin_o, "GET", "/v1/subscriptions", 200)
    assert SECRET_PART not in repr(events) + repr(listed)

    await call(admin_o, "DELETE", "/v1/subscriptions/chat", 200)
    assert ("palyra", "subscription-url:chat") not in memory_keyring.passwords


async def test_where_a_given_url_is_kept(
    admin_o: aiohttp.ClientSession, receiver: Receiver, memory_keyring: MemoryKeyring,
) -> None:
    await call(admin_o, "POST", "/v1/subscriptions", 201, subscription_id="std",
               url=receiver.url + "/std")
    assert await sub_url(admin_o, "std") == receiver.url + "/std"
    await call(admin_o, "POST", "/v1/subscriptions", 201, subscription_id="kept",
               url=receiver.url + "/kept", url_in_keyring=True)
    assert await sub_url(admin_o, "kept") == "keyring:subscription-url:kept"
    await call(admin_o, "POST", "/v1/subscriptions", 201, subscription_id="chat",
               url=receiver.url + "/chat", format="discord", url_in_keyring=False)
    assert await sub_url(admin_o, "chat") == receiver.url + "/chat"
    # A new URL for a subscription that becomes a Slack one goes to the keyring.
    await call(admin_o, "PATCH", "/v1/subscriptions/std", 200, format="slack",
               url=receiver.url + "/std-slack")
    assert await sub_url(admin_o, "std") == "keyring:subscription-url:std"
    assert memory_keyring.passwords[("palyra", "subscription-url:std")] == (
        receiver.url + "/std-slack")
    answer = await call(admin_o, "POST", "/v1/subscriptions", 400, subscription_id="odd",
                        url=receiver.url, url_in_keyring="yes")
    assert answer["field"] == "url_in_keyring"
    answer = await call(admin_o, "POST", "/v1/subscriptions", 400, subscription_id="odd",
                        url="keyring:no spaces allowed")
    assert answer["field"] == "url"


async def test_becoming_a_slack_subscription_moves_its_url_to_the_keyring() -> None:
    # Not in a scanned state dir: the URL was plain in the registry before, and the journal
    # keeps the subscription.created event of that time (history is append-only).
    keyring = MemoryKeyring()
    async with running_daemon(keyring=keyring) as d:
        async with admin_session(d.socket_path) as admin:
            await call(admin, "POST", "/v1/subscriptions", 201, subscription_id="std",
                       url="https://hooks.example/services/plain-before")
            await call(admin, "PATCH", "/v1/subscriptions/std", 200, format="slack")
            assert await sub_url(admin, "std") == "keyring:subscription-url:std"
        registry = (d.state_dir / "webhooks.toml").read_text()
    assert "plain-before" not in registry
    assert keyring.passwords[("palyra", "subscription-url:std")].endswith("/plain-before")


async def test_an_env_reference_is_resolved_and_a_bad_one_fails_without_quoting_it(
    outbound: Daemon, admin_o: aiohttp.ClientSession, receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PALYRA_TEST_HOOK_URL", receiver.url + "/from-env")
    monkeypatch.setenv("PALYRA_TEST_NOT_A_URL", "ftp://files.example/drop-sekrit")
    monkeypatch.delenv("PALYRA_TEST_UNSET", raising=False)
    for sid, ref in (("env", "env:PALYRA_TEST_HOOK_URL"), ("bad", "env:PALYRA_TEST_NOT_A_URL"),
                     ("unset", "env:PALYRA_TEST_UNSET")):
        await call(admin_o, "POST", "/v1/subscriptions", 201, subscription_id=sid, url=ref,
                   events=["x.*"], retry_schedule=["0s"])
        assert await sub_url(admin_o, sid) == ref
    await call(admin_o, "POST", "/v1/events", 201, type="x.y", data={})
    await outbound.dispatcher.wait_for_attempts(3)
    assert [r.path for r in receiver.received] == ["/hook/from-env"]
    bad, unset = await last_attempt(admin_o, "bad"), await last_attempt(admin_o, "unset")
    assert bad["error_class"] == unset["error_class"] == "connect"
    assert "does not hold a delivery URL" in bad["error_detail"]
    assert "sekrit" not in repr(bad)
    assert "url reference unavailable" in unset["error_detail"]


async def test_a_refused_edit_leaves_the_keyring_as_it_was(
    admin_o: aiohttp.ClientSession, receiver: Receiver, memory_keyring: MemoryKeyring,
    state_dir: Path,
) -> None:
    first = f"{receiver.url}/services/first-{SECRET_PART}"
    await call(admin_o, "POST", "/v1/subscriptions", 201, subscription_id="chat", url=first,
               format="slack")
    registry = state_dir / "webhooks.toml"
    registry.write_text(registry.read_text()
                        + '\n[[subscriptions]]\nsubscription_id = "x"\nurl = "mailto:a"\n')
    answer = await call(admin_o, "PATCH", "/v1/subscriptions/chat", 422,
                        url=f"{receiver.url}/services/second-{SECRET_PART}")
    assert answer["error"] == "registry_invalid"
    assert memory_keyring.passwords[("palyra", "subscription-url:chat")] == first
    # So does a refused rotation: the receiver's secret stays where the registry points.
    signing = memory_keyring.passwords[("palyra", "subscription:chat")]
    await call(admin_o, "POST", "/v1/subscriptions/chat/rotate-secret", 422, grace_s=60)
    assert memory_keyring.passwords[("palyra", "subscription:chat")] == signing
    assert ("palyra", "subscription:chat:previous") not in memory_keyring.passwords
