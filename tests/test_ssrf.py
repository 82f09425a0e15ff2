from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer

from palyra_py.outbound.http import LITERAL_VERDICTS, Sender
from palyra_py.outbound.ssrf import (
    AddressPolicy,
    GuardedConnector,
    GuardedResolver,
    SsrfBlocked,
    check_url,
    find_ssrf_blocked,
)
from palyra_py.server.daemon import Daemon
from palyra_py.testing import CapturingReceiver

BLOCKED = [
    ("127.0.0.1", "loopback"),
    ("127.255.0.9", "loopback"),
    ("::1", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.5.4", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("fd12:3456::1", "private"),
    ("169.254.169.254", "metadata"),
    ("169.254.170.2", "metadata"),
    ("fd00:ec2::254", "metadata"),
    ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("100.64.0.1", "cgnat"),
    ("100.127.255.254", "cgnat"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("::", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("192.0.2.10", "reserved"),
    ("2001:db8::1", "reserved"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.1.2.3", "private"),
    ("::ffff:169.254.169.254", "metadata"),
    ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
    ("2002:a00:1::", "private"),  # 6to4 of 10.0.0.1
    ("::127.0.0.1", "reserved"),  # IPv4-compatible (deprecated)
]

ALLOWED = ["93.184.216.34", "8.8.8.8", "172.32.0.1", "100.128.0.1", "2606:4700::1111",
           "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::"]


@pytest.mark.parametrize(("ip", "reason"), BLOCKED)
def test_blocked_by_default(ip: str, reason: str) -> None:
    assert AddressPolicy().check(ip) == reason


@pytest.mark.parametrize("ip", ALLOWED)
def test_public_addresses_allowed(ip: str) -> None:
    assert AddressPolicy().check(ip) is None


def test_invalid_text() -> None:
    assert AddressPolicy().check("localhost") == "invalid"
    assert AddressPolicy().check("") == "invalid"


@pytest.mark.parametrize(("ip", "reason"), [b for b in BLOCKED if b[1] != "metadata"])
def test_allow_private_allows_all_but_metadata(ip: str, reason: str) -> None:
    assert AddressPolicy(allow_private=True).check(ip) is None


@pytest.mark.parametrize("ip", ["169.254.169.254", "::ffff:169.254.169.254", "fd00:ec2::254"])
def test_metadata_needs_an_exact_allow_entry(ip: str) -> None:
    assert AddressPolicy(allow_private=True).check(ip) == "metadata"
    broad = AddressPolicy(allow_cidrs=["169.254.0.0/16", "0.0.0.0/0", "::/0"])
    assert broad.check(ip) == "metadata"
    exact = AddressPolicy(allow_cidrs=["169.254.169.254/32", "fd00:ec2::254"])
    assert exact.check(ip) is None


def test_allow_cidrs_win_over_the_block() -> None:
    policy = AddressPolicy(allow_cidrs=["10.0.0.0/8", "127.0.0.1/32", "fd12::/16"])
    assert policy.check("10.0.0.1") is None
    assert policy.check("::ffff:10.9.9.9") is None
    assert policy.check("127.0.0.1") is None
    assert policy.check("127.0.0.2") == "loopback"
    assert policy.check("192.168.1.1") == "private"
    assert policy.check("fd12:3456::1") is None


def test_bad_cidr_is_refused() -> None:
    with pytest.raises(ValueError, match="allow_cidrs"):
        AddressPolicy(allow_cidrs=["10.0.0.1/8"])
    with pytest.raises(ValueError, match="allow_cidrs"):
        AddressPolicy(allow_cidrs=["intranet"])


def test_check_literal_host() -> None:
    policy = AddressPolicy()
    for host in ("127.0.0.1", "[::1]", "[::ffff:127.0.0.1]", "169.254.169.254"):
        with pytest.raises(SsrfBlocked) as info:
            policy.check_literal_host(host)
        assert info.value.host == host
    policy.check_literal_host("example.com")  # names are the resolver's job
    policy.check_literal_host("8.8.8.8")
    AddressPolicy(allow_private=True).check_literal_host("[::1]")


@pytest.mark.parametrize(
    ("url", "https_only", "problem"),
    [
        ("https://hooks.example.com/x?y=1", False, None),
        ("http://hooks.example.com:8080/x", False, None),
        ("HTTPS://Hooks.Example.com/", True, None),
        ("http://hooks.example.com/", True, "https"),
        ("ftp://hooks.example.com/", False, "scheme"),
        ("file:///etc/passwd", False, "scheme"),
        ("https://user:pass@hooks.example.com/", False, "credentials"),
        ("https://user@hooks.example.com/", False, "credentials"),
        ("https:///path", False, "no host"),
        ("https://hooks.example.com:99999/", False, "malformed"),
        ("https://[::1/", False, "malformed"),
        ("https://hooks.example.com/a b", False, "whitespace"),
        ("https://hooks.example.com/\n", False, "whitespace"),
        ("https://e.com/" + "a" * 2048, False, "2048"),
        # Spellings the HTTP client maps onto an address without asking the resolver.
        ("http://127\u30020\u30020\u30021:8080/", False, "non-ASCII"),
        ("http://\uff11\uff12\uff17\uff0e\uff10\uff0e\uff10\uff0e\uff11/", False, "non-ASCII"),
        ("http://\u2460\u2461\u2466.0.0.1/", False, "non-ASCII"),
        ("http://\uff11\uff16\uff19.254.169.254/", False, "non-ASCII"),
        ("http://\uff10\uff58\uff17\uff46.1/", False, "non-ASCII"),
        ("http://2130706433/", False, "legacy"),
        ("http://0177.0.0.1/", False, "legacy"),
        ("http://0x7f.0.0.1/", False, "legacy"),
        ("http://127.1/", False, "legacy"),
        ("http://127.0.0.1./", False, "legacy"),
        ("http://127.0.0.1\u3002/", False, "non-ASCII"),  # yarl: 127.0.0.1. (trailing dot)
        ("http://hooks.example.com./", False, None),
        ("http://m\u00fcnchen.example/", False, None),  # an internationalised name is fine
        ("http://\u24db\u24de\u24d2\u24d0\u24db\u24d7\u24de\u24e2\u24e3/", False, None),
    ],
)
def test_check_url(url: str, https_only: bool, problem: str | None) -> None:
    result = check_url(url, https_only)
    if problem is None:
        assert result is None
    else:
        assert result is not None and problem in result


class StaticResolver(AbstractResolver):
    """Answers every name with fixed addresses: a DNS record we control."""

    def __init__(self, *ips: str) -> None:
        self.ips = ips
        self.closed = False

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [ResolveResult(hostname=host, host=ip, port=port, family=socket.AF_INET,
                              proto=0, flags=0) for ip in self.ips]

    async def close(self) -> None:
        self.closed = True


async def test_any_blocked_address_refuses_the_name() -> None:
    inner = StaticResolver("8.8.8.8", "10.0.0.7")
    resolver = GuardedResolver(AddressPolicy(), inner)
    with pytest.raises(SsrfBlocked) as info:
        await resolver.resolve("mixed.example", 443)
    assert (info.value.host, info.value.ip, info.value.reason) == ("mixed.example", "10.0.0.7",
                                                                   "private")
    assert isinstance(info.value, OSError)
    ok = await GuardedResolver(AddressPolicy(), StaticResolver("8.8.8.8")).resolve("p.example")
    assert [r["host"] for r in ok] == ["8.8.8.8"]
    await resolver.close()
    assert inner.closed


@pytest.fixture
async def local_server() -> AsyncIterator[TestServer]:
    app = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="reached")

    app.router.add_get("/", hello)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


async def test_real_request_to_localhost_is_refused(local_server: TestServer) -> None:
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(AddressPolicy()))
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(aiohttp.ClientConnectionError) as info:
            await session.get(f"http://localhost:{local_server.port}/")
    blocked = find_ssrf_blocked(info.value)
    assert blocked is not None
    assert (blocked.host, blocked.ip, blocked.reason) == ("localhost", "127.0.0.1", "loopback")


async def test_real_request_to_localhost_allowed_by_policy(local_server: TestServer) -> None:
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(AddressPolicy(allow_private=True)))
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"http://localhost:{local_server.port}/") as response:
            assert response.status == 200
            assert await response.text() == "reached"


async def test_ip_literal_skips_the_resolver_so_check_it_first(local_server: TestServer) -> None:
    # Documents the aiohttp behaviour behind check_literal_host: with an IP literal the
    # resolver is never asked, so the connection would go through.
    resolver = GuardedResolver(AddressPolicy())
    connector = aiohttp.TCPConnector(resolver=resolver)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(f"http://127.0.0.1:{local_server.port}/") as response:
            assert response.status == 200
    with pytest.raises(SsrfBlocked):
        resolver.check_literal_host("127.0.0.1")


def test_find_ssrf_blocked_on_unrelated_errors() -> None:
    assert find_ssrf_blocked(None) is None
    assert find_ssrf_blocked(ValueError("x")) is None
    try:
        try:
            raise SsrfBlocked("h", "10.0.0.1", "private")
        except SsrfBlocked as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as outer:
        found = find_ssrf_blocked(outer)
    assert found is not None and found.reason == "private"


async def test_sender_refuses_an_ip_literal_on_every_attempt(local_server: TestServer) -> None:
    # The verdict on an IP literal is kept per URL; the refusal still answers every attempt,
    # and an allowed literal still reaches the server.
    sender = Sender(AddressPolicy())
    await sender.start()
    try:
        url = f"http://127.0.0.1:{local_server.port}/"
        for _ in range(2):
            outcome = await sender.post(url, b"{}", {}, 5)
            assert (outcome.error_class, outcome.error_detail) == (
                "ssrf_blocked", "127.0.0.1 is loopback")
        for n in range(LITERAL_VERDICTS + 5):  # past the memo's bound it starts again
            await sender.post(f"http://10.0.0.{n % 250}:{n}/x", b"{}", {}, 5)
        outcome = await sender.post(url, b"{}", {}, 5)
        assert outcome.error_class == "ssrf_blocked"
    finally:
        await sender.close()
    allowed = Sender(AddressPolicy(allow_private=True))
    await allowed.start()
    try:
        outcome = await allowed.post(f"http://127.0.0.1:{local_server.port}/", b"{}", {}, 5)
        assert outcome.error_class == "http_status" and outcome.status_code == 405  # GET-only
    finally:
        await allowed.close()


def fullwidth(text: str) -> str:
    """``text`` with digits, dots and x in their fullwidth forms (１２７．０．０．１)."""
    return text.translate({ord(c): ord(c) + 0xFEE0 for c in "0123456789.x"})


IDEOGRAPHIC = "127\u30020\u30020\u30021"  # 127。0。0。1
CIRCLED = "\u2460\u2461\u2466.0.0.1"  # ①②⑦.0.0.1
# Every spelling of 127.0.0.1 a URL parser might disagree about.
LOOPBACK_SPELLINGS = [
    "127.0.0.1", IDEOGRAPHIC, fullwidth("127.0.0.1"), CIRCLED, "127\uff0e0\uff0e0\uff0e1",
    "2130706433", "0177.0.0.1",
    "0x7f.0.0.1", "0x7f000001", "127.1", "127.0.0.1.", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]",
    "localhost", "\u24db\u24de\u24d2\u24d0\u24db\u24d7\u24de\u24e2\u24e3",
]
METADATA_SPELLINGS = [
    "169.254.169.254", fullwidth("169.254.169.254"),
    "169\u3002254\u3002169\u3002254", "2852039166", "0251.0376.0251.0376", "0xa9.0xfe.0xa9.0xfe",
    "0xa9fea9fe", "[::ffff:169.254.169.254]", "[::ffff:a9fe:a9fe]", "[::169.254.169.254]",
    "[64:ff9b::a9fe:a9fe]", "[2002:a9fe:a9fe::]", "[fd00:ec2::254]",
]


def port_of(receiver: CapturingReceiver) -> int:
    return int(receiver.url.rsplit(":", 1)[1].split("/", 1)[0])


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
async def test_no_spelling_of_loopback_reaches_a_receiver(
    receiver: CapturingReceiver, host: str
) -> None:
    # http://127。0。0。1/ used to be judged as the name urlsplit saw (not an address, so
    # "the resolver's job"), while the client mapped it to 127.0.0.1 and never resolved.
    sender = Sender(AddressPolicy())
    await sender.start()
    try:
        outcome = await sender.post(f"http://{host}:{port_of(receiver)}/hook", b"{}", {}, 5)
    finally:
        await sender.close()
    assert not outcome.ok and outcome.status_code is None and outcome.excerpt is None
    assert outcome.error_class in ("ssrf_blocked", "connect")  # connect: the client refuses
    assert receiver.received == []


@pytest.mark.parametrize("host", METADATA_SPELLINGS)
async def test_metadata_stays_blocked_under_every_spelling_with_allow_private(host: str) -> None:
    policy = AddressPolicy(allow_private=True, allow_cidrs=["0.0.0.0/0", "::/0"])
    sender = Sender(policy)
    await sender.start()
    try:
        outcome = await sender.post(f"http://{host}/latest/meta-data/", b"{}", {}, 5)
    finally:
        await sender.close()
    assert not outcome.ok and outcome.status_code is None and outcome.excerpt is None
    if outcome.error_class == "ssrf_blocked":
        assert outcome.error_detail is not None and outcome.error_detail.endswith("metadata")
    else:  # the HTTP client itself refuses legacy spellings (2852039166, 0251.0376...)
        assert outcome.error_class == "connect" and "canonical" in (outcome.error_detail or "")


def test_ipv4_compatible_metadata_is_metadata() -> None:
    for ip in ("::169.254.169.254", "::a9fe:a9fe"):
        assert AddressPolicy(allow_private=True).check(ip) == "metadata"
        assert AddressPolicy().check(ip) == "metadata"
    assert AddressPolicy().check("::127.0.0.1") == "reserved"  # as before


@pytest.mark.parametrize("host", ["127.0.0.1", IDEOGRAPHIC, "[::ffff:127.0.0.1]"])
async def test_the_connector_checks_every_socket_before_it_connects(
    receiver: CapturingReceiver, host: str
) -> None:
    # No literal check before the request, and aiohttp skips the resolver for an IP
    # literal: the socket's own address is what refuses it.
    async with aiohttp.ClientSession(connector=GuardedConnector(AddressPolicy()),
                                     trust_env=False) as session:
        with pytest.raises(aiohttp.ClientConnectionError) as info:
            await session.post(f"http://{host}:{port_of(receiver)}/hook", data=b"{}")
    blocked = find_ssrf_blocked(info.value)
    assert blocked is not None and blocked.reason == "loopback"
    assert receiver.received == []
    allowed = GuardedConnector(AddressPolicy(allow_cidrs=["127.0.0.1/32"]))
    async with aiohttp.ClientSession(connector=allowed, trust_env=False) as session:
        async with session.post(f"{receiver.url}/ok", data=b"{}") as response:
            assert response.status == 200
    assert [r.path for r in receiver.received] == ["/hook/ok"]


async def call(admin: aiohttp.ClientSession, method: str, path: str, expect: int,
               **body: object) -> dict[str, object]:
    async with admin.request(method, path, json=body) as resp:
        answer: dict[str, object] = await resp.json()
        assert resp.status == expect, answer
        return answer


async def test_unicode_addresses_are_refused_on_add_and_edit(
    daemon: Daemon, admin: aiohttp.ClientSession, receiver: CapturingReceiver
) -> None:
    port = port_of(receiver)
    for host in (IDEOGRAPHIC, fullwidth("127.0.0.1"), CIRCLED, "2130706433"):
        answer = await call(admin, "POST", "/v1/subscriptions", 400, subscription_id="u",
                            url=f"http://{host}:{port}/hook")
        assert answer["error"] == "invalid_request" and answer["field"] == "url"
        assert host not in str(answer["message"])
    await call(admin, "POST", "/v1/subscriptions", 201, subscription_id="ok",
               url="https://hooks.example/x")
    answer = await call(admin, "PATCH", "/v1/subscriptions/ok", 400,
                        url=f"http://{IDEOGRAPHIC}:{port}/hook")
    assert answer["field"] == "url"


async def test_a_blocked_target_shows_no_answer_in_test_or_deliveries_show(
    daemon: Daemon, admin: aiohttp.ClientSession, receiver: CapturingReceiver
) -> None:
    # The default policy: the receiver on loopback must never be reached, and nothing it
    # would have answered can be read back through `subscriptions test` or `deliveries show`.
    await call(admin, "POST", "/v1/subscriptions", 201, subscription_id="local",
               url=receiver.url, retry_schedule=["0s"])
    tested = await call(admin, "POST", "/v1/subscriptions/local/test", 200)
    attempt = tested["attempt"]
    assert isinstance(attempt, dict)
    assert attempt["error_class"] == "ssrf_blocked" and attempt["response_excerpt"] is None
    assert attempt["status_code"] is None
    delivery = tested["delivery"]
    assert isinstance(delivery, dict)
    shown = await call(admin, "GET", f"/v1/deliveries/{delivery['delivery_id']}", 200)
    attempts = shown["attempts"]
    assert isinstance(attempts, list) and attempts
    assert all(a["response_excerpt"] is None and a["error_class"] == "ssrf_blocked"
               for a in attempts)
    assert receiver.received == []
