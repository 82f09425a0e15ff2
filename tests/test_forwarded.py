"""The sender behind a load balancer (``[ingress] trusted_proxies``): X-Forwarded-For is
read only from a trusted peer, walked from the right past the trusted proxies; the real
daemon's ``allowed_sources`` and rejection samples use it."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from palyra_py.inbound.forwarded import MAX_FORWARDED_HOPS, ClientAddress, parse_proxies
from palyra_py.server.daemon import Daemon
from palyra_py.settings import SettingsError, load_settings
from palyra_py.testing import ManualClock, MemoryKeyring, running_daemon
from tests.fault_helpers import admin_session
from tests.helpers import add_integration, send_signed

PUSH = b'{"ref": "refs/heads/main"}'
LB = ClientAddress(parse_proxies("10.0.0.0/8, 127.0.0.1"))


@pytest.mark.parametrize(("peer", "header", "sender"), [
    ("127.0.0.1", "203.0.113.7", "203.0.113.7"),
    ("127.0.0.1", "198.51.100.1, 203.0.113.7", "203.0.113.7"),  # the left one is the sender's claim
    ("127.0.0.1", "203.0.113.7, 10.2.3.4", "203.0.113.7"),  # past a second trusted proxy
    ("127.0.0.1", "10.9.9.9, 10.2.3.4", "10.9.9.9"),  # all trusted: the left-most
    ("127.0.0.1", "203.0.113.7:4711", "203.0.113.7"),
    ("127.0.0.1", "[2001:db8::1]:443", "2001:db8::1"),
    ("127.0.0.1", "::ffff:203.0.113.7", "203.0.113.7"),
    ("127.0.0.1", "unknown", "127.0.0.1"),  # garbled: the peer
    ("127.0.0.1", "", "127.0.0.1"),
    ("192.0.2.50", "203.0.113.7", "192.0.2.50"),  # not a trusted peer: the header is ignored
])
def test_the_sender_is_read_only_through_trusted_proxies(
        peer: str, header: str, sender: str) -> None:
    assert LB.sender(peer, header) == sender


def test_no_proxies_means_the_peer_and_a_long_header_is_bounded() -> None:
    assert ClientAddress().sender("127.0.0.1", "203.0.113.7") == "127.0.0.1"
    hops = ", ".join(["203.0.113.9"] + ["10.0.0.1"] * MAX_FORWARDED_HOPS)
    assert LB.sender("127.0.0.1", hops) == "10.0.0.1"  # past the bound: the left-most looked at


def test_a_bad_cidr_stops_the_start_with_the_setting_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"ingress\.trusted_proxies .*'10\.0\.0\.300'"):
        load_settings(state_dir=tmp_path,
                      env={"PALYRA_INGRESS_TRUSTED_PROXIES": "10.0.0.0/8,10.0.0.300"})


async def test_allowed_sources_sees_the_sender_behind_a_trusted_balancer(
        state_dir: Path, clock: ManualClock, memory_keyring: MemoryKeyring,
        http: aiohttp.ClientSession) -> None:
    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring,
                              ingress__trusted_proxies="127.0.0.1/32") as daemon, \
            admin_session(daemon.socket_path) as admin:
        await add_integration(admin, "ci", allowed_sources=["203.0.113.0/24"])
        allowed = await send_signed(http, daemon, "ci", PUSH,
                                    extra_headers={"X-Forwarded-For": "203.0.113.7"})
        assert allowed[0] == 202
        refused = await send_signed(http, daemon, "ci", PUSH, delivery_id="b" * 36,
                                    extra_headers={"X-Forwarded-For": "198.51.100.1"})
        assert (refused[0], refused[1]["error"]) == (403, "source_not_allowed")
        # A sender cannot claim an allowed address past the balancer's own entry.
        spoofed = await send_signed(
            http, daemon, "ci", PUSH, delivery_id="c" * 36,
            extra_headers={"X-Forwarded-For": "203.0.113.7, 198.51.100.1"})
        assert spoofed[0] == 403


async def test_without_trusted_proxies_the_header_is_ignored(
        daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession) -> None:
    await add_integration(admin, "ci", allowed_sources=["203.0.113.0/24"])
    status, body, _ = await send_signed(http, daemon, "ci", PUSH,
                                        extra_headers={"X-Forwarded-For": "203.0.113.7"})
    assert (status, body["error"]) == (403, "source_not_allowed")
