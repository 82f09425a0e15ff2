"""Subscription URLs that are credentials (Slack's and Discord's incoming webhooks, URLs
with a token in their query) and credential headers (Authorization, X-Api-Key...) on the
real daemon: kept in the keyring with a reference in the registry, resolved when
delivering, never shown or journaled; and URLs and header values given as references
(env:VAR)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from palyra_py.admin.subscriptions import header_keyring_name, journal_url
from palyra_py.registry.subscriptions import is_credential_header, is_credential_url
from palyra_py.secrets.refs import parse_secret_ref
from palyra_py.server.daemon import Daemon
from palyra_py.testing import CapturingReceiver, MemoryKeyring, running_daemon
from tests.fault_helpers import admin_session
from tests.test_cli_e2e import palyra, palyra_json

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
    outbound: Daemon, admin_o: aiohttp.ClientSession, receiver: CapturingReceiver,
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
    admin_o: aiohttp.ClientSession, receiver: CapturingReceiver, memory_keyring: MemoryKeyring,
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
    outbound: Daemon, admin_o: aiohttp.ClientSession, receiver: CapturingReceiver,
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
    admin_o: aiohttp.ClientSession, receiver: CapturingReceiver, memory_keyring: MemoryKeyring,
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


# Credentials in custom headers and URL queries (issue 9, item 11).
HEADER_SECRET = "Bearer hdr-s3cret-value-1"
API_KEY = "apikey-s3cret-value-2"


def everywhere_but_the_keyring(state_dir: Path) -> str:
    """The registry and every store file, as text (bytes decoded leniently)."""
    return "".join(p.read_bytes().decode("utf-8", "replace") for p in state_dir.rglob("*")
                   if p.is_file() and not p.is_socket() and not p.name.startswith("secrets."))


async def test_credential_headers_are_kept_in_the_keyring_and_still_sent(
    outbound: Daemon, admin_o: aiohttp.ClientSession, receiver: CapturingReceiver,
    memory_keyring: MemoryKeyring, state_dir: Path,
) -> None:
    created = await call(admin_o, "POST", "/v1/subscriptions", 201, subscription_id="hdrs",
                         url=receiver.url, events=["qa.*"],
                         headers={"Authorization": HEADER_SECRET, "X-Api-Key": API_KEY,
                                  "X-Team": "docs"})
    assert created["subscription"]["headers"] == {
        "Authorization": "keyring:subscription-header:hdrs:authorization",
        "X-Api-Key": "keyring:subscription-header:hdrs:x-api-key", "X-Team": "docs"}
    assert memory_keyring.passwords[("palyra", "subscription-header:hdrs:authorization")] == (
        HEADER_SECRET)
    await call(admin_o, "POST", "/v1/events", 201, type="qa.x", data={})
    await outbound.dispatcher.wait_for_attempts(1)
    (got,) = receiver.received
    assert got.headers["Authorization"] == HEADER_SECRET and got.headers["X-Api-Key"] == API_KEY
    assert got.headers["X-Team"] == "docs"
    shown = [await call(admin_o, "GET", "/v1/subscriptions", 200),
             await call(admin_o, "GET", "/v1/subscriptions/hdrs", 200),
             await call(admin_o, "GET", "/v1/events", 200, )]
    on_disk = everywhere_but_the_keyring(state_dir)
    for secret in ("hdr-s3cret-value-1", API_KEY):
        assert secret not in repr(shown) and secret not in on_disk

    # A new value replaces the stored one; a header dropped takes its secret with it.
    await call(admin_o, "PATCH", "/v1/subscriptions/hdrs", 200,
               headers={"Authorization": "Bearer rotated-s3cret-3", "X-Team": "docs"})
    assert memory_keyring.passwords[("palyra", "subscription-header:hdrs:authorization")] == (
        "Bearer rotated-s3cret-3")
    assert ("palyra", "subscription-header:hdrs:x-api-key") not in memory_keyring.passwords
    assert "rotated-s3cret-3" not in everywhere_but_the_keyring(state_dir)
    await call(admin_o, "DELETE", "/v1/subscriptions/hdrs", 200)
    assert not [k for k in memory_keyring.passwords if k[1].startswith("subscription-header:")]


async def test_a_url_with_a_credential_in_its_query_goes_to_the_keyring(
    outbound: Daemon, admin_o: aiohttp.ClientSession, receiver: CapturingReceiver,
    memory_keyring: MemoryKeyring, state_dir: Path,
) -> None:
    url = f"{receiver.url}/q?access_token=q-s3cret-value&team=docs"
    created = await call(admin_o, "POST", "/v1/subscriptions", 201, subscription_id="q",
                         url=url, events=["qa.*"])
    assert created["subscription"]["url"] == "keyring:subscription-url:q"
    assert memory_keyring.passwords[("palyra", "subscription-url:q")] == url
    # A plain URL stays in the registry, but the journal (any token can read it) holds
    # only its origin: the path may be a credential no rule can see.
    await call(admin_o, "POST", "/v1/subscriptions", 201, subscription_id="plain",
               url=f"{receiver.url}/opaque-path-part", events=["qa.*"])
    await call(admin_o, "POST", "/v1/events", 201, type="qa.x", data={})
    await outbound.dispatcher.wait_for_attempts(2)
    assert sorted(r.path for r in receiver.received) == ["/hook/opaque-path-part", "/hook/q"]
    events = await call(admin_o, "GET", "/v1/events", 200)
    created_urls = [e["payload"]["url"] for e in events["events"]
                    if e["kind"] == "subscription.created"]
    origin = receiver.url.removesuffix("/hook")
    assert created_urls == ["keyring:subscription-url:q", f"{origin}/..."]
    assert "q-s3cret-value" not in everywhere_but_the_keyring(state_dir)
    assert "opaque-path-part" not in repr(events)


async def test_header_values_may_be_references(
    outbound: Daemon, admin_o: aiohttp.ClientSession, receiver: CapturingReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PALYRA_TEST_HDR", "from-env-s3cret")
    monkeypatch.delenv("PALYRA_TEST_HDR_UNSET", raising=False)
    await call(admin_o, "POST", "/v1/subscriptions", 201, subscription_id="env", url=receiver.url,
               events=["x.*"], headers={"X-Api-Key": "env:PALYRA_TEST_HDR"})
    await call(admin_o, "POST", "/v1/subscriptions", 201, subscription_id="unset",
               url=receiver.url, events=["x.*"], retry_schedule=["0s"],
               headers={"X-Api-Key": "env:PALYRA_TEST_HDR_UNSET"})
    assert (await call(admin_o, "GET", "/v1/subscriptions/env", 200))["subscription"][
        "headers"] == {"X-Api-Key": "env:PALYRA_TEST_HDR"}
    answer = await call(admin_o, "POST", "/v1/subscriptions", 400, subscription_id="bad",
                        url=receiver.url, headers={"X-Api-Key": "keyring:no spaces"})
    assert answer["field"] == "headers" and "X-Api-Key" in answer["message"]
    await call(admin_o, "POST", "/v1/events", 201, type="x.y", data={})
    await outbound.dispatcher.wait_for_attempts(2)
    (got,) = receiver.received
    assert got.headers["X-Api-Key"] == "from-env-s3cret"
    unset = await last_attempt(admin_o, "unset")
    assert unset["error_class"] == "connect"
    assert unset["error_detail"].startswith("header X-Api-Key: reference unavailable")


async def test_cli_list_and_show_never_print_a_credential_header(daemon: Daemon) -> None:
    sd = daemon.state_dir
    code, out, err = await palyra(sd, "subscriptions", "add", "cli", "--url",
                                  "https://hooks.example/in?token=cli-url-s3cret",
                                  "-H", "X-Auth-Token: cli-hdr-s3cret", "-H", "X-Team: ops")
    assert code == 0, err
    listed = await palyra_json(sd, "subscriptions", "list")
    shown = await palyra_json(sd, "subscriptions", "show", "cli")
    code, human, err = await palyra(sd, "subscriptions", "show", "cli")
    events = await palyra_json(sd, "system", "events", "list", "--type", "subscription.*")
    text = json.dumps([listed, shown, events]) + out + err + human
    for secret in ("cli-url-s3cret", "cli-hdr-s3cret"):
        assert secret not in text and secret not in everywhere_but_the_keyring(sd)
    assert shown["subscription"]["headers"]["X-Team"] == "ops"


@pytest.mark.parametrize(("name", "value", "credential"), [
    ("Authorization", "x", True), ("Proxy-Authorization", "x", True), ("Cookie", "a=b", True),
    ("X-Api-Key", "k", True), ("X-Auth-Token", "t", True), ("X-Access-Key", "k", True),
    ("X-Client-Secret", "s", True), ("X-Signature", "s", True), ("Api-Key", "k", True),
    ("X-Custom", "Bearer abc", True), ("X-Custom", "Basic dXNlcjpwdw==", True),
    ("X-Team", "docs", False), ("Accept", "application/json", False),
    ("X-Keyboard", "qwerty", False), ("X-Request-Source", "palyra", False),
])
def test_which_headers_count_as_credentials(name: str, value: str, credential: bool) -> None:
    assert is_credential_header(name, value) is credential


@pytest.mark.parametrize(("url", "credential"), [
    ("https://h.example/x?token=1", True), ("https://h.example/x?access_token=1", True),
    ("https://h.example/x?api_key=1", True), ("https://h.example/x?key=1", True),
    ("https://h.example/x?sv=2&sig=1", True), ("https://h.example/api/f?code=abc", True),
    ("https://h.example/x?page=2&team=docs", False), ("https://h.example/x", False),
])
def test_which_urls_count_as_credentials(url: str, credential: bool) -> None:
    assert is_credential_url(url) is credential


def test_what_the_journal_and_the_keyring_call_them() -> None:
    assert journal_url("https://h.example:8443/p/a?t=1") == "https://h.example:8443/..."
    assert journal_url("https://h.example") == journal_url("https://h.example/") == (
        "https://h.example/")
    assert journal_url("env:HOOK_URL") == "env:HOOK_URL"
    assert header_keyring_name("s", "X-Api-Key") == "subscription-header:s:x-api-key"
    odd = header_keyring_name("s", "X-Odd!Token")
    assert odd.startswith("subscription-header:s:h-") and odd == header_keyring_name(
        "s", "x-odd!token")
    parse_secret_ref(f"keyring:{header_keyring_name('s' * 64, 'X-' + 'a' * 126)}")
