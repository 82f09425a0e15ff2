"""Hostile senders against the real daemon: real HTTP over loopback, raw sockets where
aiohttp's client will not send the malformed thing. Every case asserts the documented answer
(``docs/reasons.md``) and that ``/healthz`` still answers afterwards.

The families share one daemon for the module: each request stands alone, and "nothing was
journaled" is checked as an unchanged journal head. Cases that count journal rows, stream
clients or log lines get a daemon of their own (``fresh``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import hmac
import json
import logging
import socket
import sqlite3
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from palyra_py.providers import get_provider
from palyra_py.reasons import Reason
from palyra_py.server.daemon import Daemon
from palyra_py.testing import ManualClock, MemoryKeyring, running_daemon
from tests.helpers import add_integration, create_token, events
from tests.raw_http import (
    RawConnection,
    RawResponse,
    chunk,
    exchange,
    read_response,
    request_bytes,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

Headers = list[tuple[str, str]]

SECRET = "It's a Secret to Everybody"
SW_SECRET = "whsec_" + base64.b64encode(b"standard-webhooks-key-32-bytes!!").decode()
NOW = int(ManualClock().now)  # the daemons' clock never moves in this module
LIMIT = 1024  # max_payload_bytes of "gh"
BIG_LIMIT = 4 * 1024 * 1024  # of "big": 100,000 keys get in, so the schema decides
BODY_TIMEOUT_S = 0.5
ADMIN_MAX_BODY = 64 * 1024
SETTINGS: dict[str, Any] = {
    "ingress__body_timeout_s": BODY_TIMEOUT_S,
    "ingress__rejection_window_s": 3600,  # only the tests flush rejections
    "stream__buffer_events": 10,
    "admin__max_body_bytes": ADMIN_MAX_BODY,
}
DOCUMENTED = {reason.value for reason in Reason}


@dataclass
class World:
    daemon: Daemon
    admin: aiohttp.ClientSession

    @property
    def port(self) -> int:
        return self.daemon.ingress_port

    async def head(self) -> int:
        return await self.daemon.journal.last_seq()


@contextlib.asynccontextmanager
async def started(**integrations: dict[str, Any]) -> AsyncIterator[World]:
    # running_daemon makes (and removes) a short_state_dir: the socket path stays short.
    async with running_daemon(clock=ManualClock(), keyring=MemoryKeyring(), **SETTINGS) as d:
        connector = aiohttp.UnixConnector(path=str(d.socket_path))
        async with aiohttp.ClientSession(connector=connector, base_url="http://admin") as admin:
            for integration_id, fields in integrations.items():
                await add_integration(admin, integration_id, **fields)
            yield World(d, admin)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world() -> AsyncIterator[World]:
    async with started(
        gh={"max_payload_bytes": LIMIT}, big={"max_payload_bytes": BIG_LIMIT},
        pay={"provider": "stripe"}, sl={"provider": "slack"}, gl={"provider": "gitlab"},
        sw={"provider": "standard-webhooks", "secret": SW_SECRET},
    ) as w:
        yield w


@pytest_asyncio.fixture(loop_scope="module")
async def fresh() -> AsyncIterator[World]:
    async with started(gh={"max_payload_bytes": LIMIT}) as w:
        yield w


# -- plumbing -------------------------------------------------------------------------------

async def assert_healthy(port: int) -> None:
    """A new connection gets 200 from /healthz: the daemon kept serving."""
    resp = await exchange(port, request_bytes("GET", "/healthz"), timeout=5)
    assert (resp.status, resp.json()) == (200, {"status": "ok"})


def assert_refused(resp: RawResponse, status: int, reason: str) -> None:
    body = resp.json()
    assert (resp.status, body["error"]) == (status, reason), body


def gh_headers(body: bytes, *extra: tuple[str, str]) -> Headers:
    """GitHub's headers for ``body``, signed, with a new delivery id, then ``extra``."""
    signed = get_provider("github").sign(body, SECRET, NOW, "push", uuid.uuid4().hex)
    return [*signed.headers.items(), *extra]


async def post(world: World, path: str, headers: Iterable[tuple[str, str]], body: bytes,
               **kw: Any) -> RawResponse:
    return await exchange(world.port, request_bytes("POST", path, headers, body, **kw))


def hexmac(message: bytes) -> str:
    return hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest()


def signed_with_stamp(provider: str, stamp: str, body: bytes) -> Headers:
    """Headers with a *valid* signature over ``stamp`` exactly as given (the providers' own
    ``sign`` writes whole seconds only), so that only the timestamp itself is judged."""
    json_ct = ("Content-Type", "application/json")
    if provider == "stripe":
        signature = hexmac(f"{stamp}.".encode() + body)
        return [json_ct, ("Stripe-Signature", f"t={stamp},v1={signature}")]
    if provider == "slack":
        return [json_ct, ("X-Slack-Request-Timestamp", stamp),
                ("X-Slack-Signature", "v0=" + hexmac(f"v0:{stamp}:".encode() + body))]
    msg_id = "msg_" + uuid.uuid4().hex
    key = base64.b64decode(SW_SECRET.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return [json_ct, ("webhook-id", msg_id), ("webhook-timestamp", stamp),
            ("webhook-signature", "v1," + base64.b64encode(mac).decode())]


def provider_body(provider: str) -> bytes:
    """A body with a new idempotency key (Stripe and Slack take it from the body)."""
    key = uuid.uuid4().hex
    if provider == "stripe":
        return json.dumps({"id": f"evt_{key}", "type": "charge.succeeded"}).encode()
    if provider == "slack":
        return json.dumps({"type": "event_callback", "event_id": f"Ev{key}",
                           "event": {"type": "message"}}).encode()
    return json.dumps({"type": "invoice.paid", "n": key}).encode()


def journaled_text(daemon: Daemon, event_id: str) -> str:
    """The stored ``payload_json`` of one event, read straight from the SQLite file."""
    uri = f"file:{daemon.journal_path}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        row = db.execute("SELECT payload_json FROM journal_events WHERE event_id = ?",
                         (event_id,)).fetchone()
    assert row is not None
    return str(row[0])


def rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


# -- body size ------------------------------------------------------------------------------

@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(("size", "status"), [(LIMIT, 202), (LIMIT + 1, 413)],
                         ids=["at-limit", "one-over"])
async def test_body_at_the_limit_and_one_byte_over(
    world: World, size: int, status: int, chunked: bool
) -> None:
    # Each case its own content: the same signed body again would be a replay (duplicate).
    body = b'{"p":"' + (b"c" if chunked else b"x") * (size - 8) + b'"}'
    headers = gh_headers(body, *([("Transfer-Encoding", "chunked")] if chunked else []))
    wire = chunk(body[:300]) + chunk(body[300:]) + chunk(b"") if chunked else body
    before = await world.head()
    resp = await post(world, "/hooks/gh", headers, wire)
    if status == 202:
        assert (resp.status, resp.json()["seq"]) == (202, before + 1), resp.body
    else:
        assert_refused(resp, 413, "payload_too_large")
        assert await world.head() == before
    await assert_healthy(world.port)


async def test_gzip_bomb_is_cut_off_at_the_limit(world: World) -> None:
    # 20 MiB of zeros in ~20 KB: the cap counts decompressed bytes, not the Content-Length.
    bomb = gzip.compress(b"0" * (20 * 1024 * 1024))
    before = await world.head()
    resp = await post(world, "/hooks/big", gh_headers(bomb, ("Content-Encoding", "gzip")), bomb)
    assert_refused(resp, 413, "payload_too_large")
    assert await world.head() == before
    await assert_healthy(world.port)


async def test_corrupt_gzip_body_gets_a_documented_4xx(world: World) -> None:
    body = b'{"not": "gzip"}'
    before = await world.head()
    resp = await post(world, "/hooks/gh", gh_headers(body, ("Content-Encoding", "gzip")), body)
    assert await world.head() == before
    await assert_healthy(world.port)
    assert 400 <= resp.status < 500, (resp.status, resp.body)
    assert resp.json()["error"] in DOCUMENTED


# -- lying Content-Length, endless and trickling bodies ------------------------------------

async def test_content_length_shorter_than_the_body(world: World) -> None:
    # The first 8 bytes are the body; the rest is parsed as a next request, and refused.
    body = b'{"a": 1, "bbbbbbbbbbbbbbbbbb": 2}'
    before = await world.head()
    conn = await RawConnection.tcp(world.port)
    try:
        await conn.send(request_bytes("POST", "/hooks/gh", gh_headers(body), body,
                                      content_length=8))
        first = await conn.response()
        assert 400 <= first.status < 500, first.body
        assert await conn.closed_by_peer(timeout=5)
    finally:
        await conn.close()
    assert await world.head() == before
    await assert_healthy(world.port)


async def test_content_length_longer_than_the_body_then_silence(world: World) -> None:
    body = b'{"a": 1}'
    before, started_at = await world.head(), time.monotonic()
    resp = await post(world, "/hooks/gh", gh_headers(body), body, content_length=100)
    assert_refused(resp, 408, "request_timeout")
    assert time.monotonic() - started_at >= BODY_TIMEOUT_S * 0.9
    assert await world.head() == before
    await assert_healthy(world.port)


async def hang_up_mid_body(world: World) -> bytes:
    """Declare 100 bytes, send 8, send FIN; whatever the daemon says before it closes."""
    body = b'{"a": 1}'
    conn = await RawConnection.tcp(world.port)
    try:
        await conn.send(request_bytes("POST", "/hooks/gh", gh_headers(body), body,
                                      content_length=100))
        conn.half_close()
        async with asyncio.timeout(5):
            return await conn.reader.read()
    except ConnectionError:
        return b""
    finally:
        await conn.close()


async def test_content_length_longer_than_the_body_then_close(world: World) -> None:
    before = await world.head()
    answer = await hang_up_mid_body(world)
    assert not answer.startswith(b"HTTP/1.1 2"), answer
    assert await world.head() == before
    await assert_healthy(world.port)


async def test_a_sender_hanging_up_mid_body_is_not_an_internal_error(
    fresh: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with capture_logs() as logs:
        await hang_up_mid_body(fresh)
        await assert_healthy(fresh.port)  # a full round trip later: the handler has ended
    errors = [e.get("event") for e in logs if e.get("log_level") in ("error", "critical")]
    errors += [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


async def test_endless_chunked_body_is_cut_off_at_the_limit(world: World) -> None:
    before = await world.head()
    conn = await RawConnection.tcp(world.port)
    try:
        await conn.send(request_bytes(
            "POST", "/hooks/gh", gh_headers(b"{}", ("Transfer-Encoding", "chunked"))))
        # Past the limit and never the last chunk: the daemon answers anyway.
        await conn.send(b"".join(chunk(b" " * 256) for _ in range(LIMIT // 256 + 1)))
        assert_refused(await conn.response(timeout=5), 413, "payload_too_large")
    finally:
        await conn.close()
    assert await world.head() == before
    await assert_healthy(world.port)


async def test_trickling_chunked_body_times_out(world: World) -> None:
    before, started_at = await world.head(), time.monotonic()
    conn = await RawConnection.tcp(world.port)
    try:
        await conn.send(request_bytes(
            "POST", "/hooks/gh", gh_headers(b"{}", ("Transfer-Encoding", "chunked"))))
        answer = asyncio.create_task(conn.response(timeout=10))
        for _ in range(200):  # bounded: 10 s of trickle at most
            if answer.done():
                break
            with contextlib.suppress(ConnectionError):
                await conn.send(chunk(b" "))
            await asyncio.sleep(0.05)  # the slowness under test: one byte per 50 ms
        assert_refused(await answer, 408, "request_timeout")
    finally:
        await conn.close()
    assert time.monotonic() - started_at >= BODY_TIMEOUT_S * 0.9
    assert await world.head() == before
    await assert_healthy(world.port)


# -- bodies that are not a JSON object ------------------------------------------------------

NOT_AN_OBJECT = [
    pytest.param(b'{"s": "\xff"}', "malformed_json", id="utf8-ff"),
    pytest.param(b'{"s": "\xc0\xaf"}', "malformed_json", id="utf8-overlong"),
    pytest.param(b'{"s": "\xed\xa0\x80"}', "malformed_json", id="utf8-surrogate"),
    pytest.param(b'{"s": "\xe2\x82"}', "malformed_json", id="utf8-truncated"),
    pytest.param(b'{"s": "\\ud800"}', "malformed_json", id="escaped-lone-surrogate"),
    pytest.param('{"s": 1}'.encode("utf-16"), "malformed_json", id="utf16"),
    pytest.param(b'{"x": NaN}', "malformed_json", id="nan"),
    pytest.param(b'{"x": Infinity}', "malformed_json", id="infinity"),
    pytest.param(b'{"x": -Infinity}', "malformed_json", id="minus-infinity"),
    # 10**5000 is valid RFC 8259 but overflows a double: orjson refuses it.
    pytest.param(b'{"x": 1' + b"0" * 5000 + b"}", "malformed_json", id="10**5000"),
    pytest.param(b'{"x": 1e400}', "malformed_json", id="1e400"),
    pytest.param(b'{"x": 1,}', "malformed_json", id="trailing-comma"),
    pytest.param(b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "malformed_json",
                 id="objects-10000-deep"),
    pytest.param(b"[" * 10_000 + b"]" * 10_000, "malformed_json", id="arrays-10000-deep"),
    pytest.param(b'{"a":' * 65 + b"1" + b"}" * 65, "malformed_json", id="objects-65-deep"),
    pytest.param(b"[1, 2]", "schema_violation", id="array"),
    pytest.param(b'"a string"', "schema_violation", id="string"),
    pytest.param(b"42", "schema_violation", id="number"),
    pytest.param(b"null", "schema_violation", id="null"),
    pytest.param(b"true", "schema_violation", id="true"),
]


@pytest.mark.parametrize(("body", "reason"), NOT_AN_OBJECT)
async def test_body_that_is_not_a_json_object(world: World, body: bytes, reason: str) -> None:
    before = await world.head()
    assert_refused(await post(world, "/hooks/big", gh_headers(body), body), 400, reason)
    assert await world.head() == before
    await assert_healthy(world.port)


@pytest.mark.parametrize(("integration", "keys", "status", "reason"), [
    ("big", 2048, 202, "accepted"),
    ("big", 2049, 400, "schema_violation"),
    ("big", 100_000, 400, "schema_violation"),
    ("gh", 100_000, 413, "payload_too_large"),  # refused on its Content-Length, unread
], ids=["2048", "2049", "100000", "100000-over-size-limit"])
async def test_many_top_level_keys(
    world: World, integration: str, keys: int, status: int, reason: str
) -> None:
    body = json.dumps({f"k{i}": i for i in range(keys)}).encode()
    before = await world.head()
    resp = await post(world, f"/hooks/{integration}", gh_headers(body), body)
    answer = resp.json()
    assert (resp.status, answer.get("error", answer.get("status"))) == (status, reason)
    assert await world.head() == before + (status == 202)
    await assert_healthy(world.port)


async def test_64_deep_is_still_accepted(world: World) -> None:
    body = b'{"a":' * 64 + b"1" + b"}" * 64
    assert (await post(world, "/hooks/gh", gh_headers(body), body)).status == 202
    await assert_healthy(world.port)


async def test_duplicate_keys_are_accepted_and_stored_verbatim(world: World) -> None:
    body = b'{"a": 1, "a": 2, "b": {"c": true, "c": false}}'
    resp = await post(world, "/hooks/gh", gh_headers(body), body)
    assert resp.status == 202, resp.body
    # Byte for byte: both "a" and both "c", as the provider signed them.
    assert '"payload":' + body.decode() in journaled_text(world.daemon, resp.json()["event_id"])
    await assert_healthy(world.port)


async def test_integer_past_64_bits_keeps_its_digits_in_the_journal(world: World) -> None:
    body = b'{"n": ' + str(2**64 + 1).encode() + b"}"
    resp = await post(world, "/hooks/gh", gh_headers(body), body)
    assert resp.status == 202, resp.body
    assert str(2**64 + 1) in journaled_text(world.daemon, resp.json()["event_id"])
    await assert_healthy(world.port)


async def test_integer_past_64_bits_reads_back_exactly(world: World) -> None:
    body = b'{"n": ' + str(2**64 + 1).encode() + b', "read": true}'
    resp = await post(world, "/hooks/gh", gh_headers(body), body)
    assert resp.status == 202, resp.body
    (event,) = await events(world.admin, after_seq=resp.json()["seq"] - 1, limit=1)
    await assert_healthy(world.port)
    assert event["payload"]["payload"]["n"] == 2**64 + 1


# -- HTTP framing that aiohttp refuses before the ingress runs ------------------------------

def framing_cases() -> list[Any]:
    body = b"{}"

    def hook(*extra: tuple[str, str], wire: bytes = body, method: str = "POST") -> bytes:
        return request_bytes(method, "/hooks/gh", gh_headers(body, *extra), wire)

    pads = [(f"X-Pad-{i}", "v") for i in range(200)]
    return [
        pytest.param(hook(*pads), id="200-headers"),
        pytest.param(hook(("X-Big", "a" * 65536)), id="64k-header"),
        pytest.param(hook(("X-Hub-Signature-256", ",".join(["sha256=" + "0" * 64] * 1000))),
                     id="github-1000-signatures"),  # 71 KB: past max_header_bytes
        pytest.param(hook(("X" * 65536, "v")), id="64k-header-name"),
        pytest.param(hook(("Transfer-Encoding", "chunked"), ("Content-Length", "2"),
                          wire=chunk(body) + chunk(b"")), id="chunked-and-content-length"),
        pytest.param(hook(("Content-Length", "2"), ("Content-Length", "3")),
                     id="two-content-lengths"),
        pytest.param(hook(("Content-Length", "-1")), id="negative-content-length"),
        pytest.param(hook(("Content-Length", str(10**30))), id="huge-content-length"),
        pytest.param(hook(("Transfer-Encoding", "chunked"), wire=b"zz\r\n{}\r\n0\r\n\r\n"),
                     id="bad-chunk-size"),
        pytest.param(hook(("Content-Encoding", "br")), id="undecodable-content-encoding"),
        pytest.param(hook(method="FOO"), id="unknown-method"),
        pytest.param(b"POST /hooks/gh HTTP/9.9\r\nHost: x\r\n\r\n", id="bad-version"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
                     id="tls-hello-on-plain-http"),
    ]


@pytest.mark.parametrize("wire", framing_cases())
async def test_malformed_http_gets_a_4xx_and_the_daemon_keeps_serving(
    world: World, wire: bytes
) -> None:
    before = await world.head()
    resp = await exchange(world.port, wire)
    assert 400 <= resp.status < 500, (resp.status, resp.body[:200])
    assert await world.head() == before
    await assert_healthy(world.port)


# -- signature headers ----------------------------------------------------------------------

def signature_cases() -> list[Any]:
    body, stamp = b'{"hello": "world"}', str(NOW)
    good = hexmac(body)
    sha1 = hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest()
    stripe_good = hexmac(f"{stamp}.".encode() + body)
    sw = dict(signed_with_stamp("standard-webhooks", stamp, body))
    sw_good = sw["webhook-signature"]
    json_ct = ("Content-Type", "application/json")

    def gh(value: str) -> Headers:
        return [json_ct, ("X-GitHub-Event", "push"), ("X-Hub-Signature-256", value)]

    def sw_with(value: str) -> Headers:
        return [json_ct, ("webhook-id", sw["webhook-id"]), ("webhook-timestamp", stamp),
                ("webhook-signature", value)]

    def stripe(value: str) -> Headers:
        return [json_ct, ("Stripe-Signature", value)]

    def case(integration: str, headers: Headers, reason: str, case_id: str) -> Any:
        return pytest.param(integration, headers, body, reason, id=case_id)

    junk_v1 = ",".join(["v1=00"] * 999)
    return [
        case("gh", gh("garbage"), "signature_mismatch", "github-garbage"),
        case("gh", gh(f"sha1={sha1}"), "signature_mismatch", "github-sha1-prefix"),
        case("gh", gh("sha256=" + "zz" * 32), "signature_mismatch", "github-not-hex"),
        case("gh", gh("sha256=" + good.upper()), "signature_mismatch", "github-upper-hex"),
        case("gh", gh("sha256=" + good[:-1]), "signature_mismatch", "github-truncated"),
        case("gh", gh(",".join([f"sha256={good}"] * 100)), "signature_mismatch",
             "github-list-100"),
        case("gh", gh("   "), "signature_missing", "github-blank"),
        case("gh", gh("sha256=\udcff\udcfe" + "0" * 62), "signature_mismatch",
             "github-non-ascii-bytes"),  # sent as raw bytes 0xff 0xfe
        case("sw", sw_with("v2," + sw_good[3:]), "signature_mismatch", "sw-v2-prefix"),
        case("sw", sw_with("v1a," + sw_good[3:]), "signature_mismatch", "sw-v1a-prefix"),
        case("sw", sw_with("v1,!!!not-base64!!!"), "signature_mismatch", "sw-garbage"),
        case("sw", sw_with(" ".join(["v1,AA=="] * 1000)), "signature_mismatch",
             "sw-list-1000"),
        case("sw", sw_with(" ".join([*["v1,AA=="] * 16, sw_good])), "signature_mismatch",
             "sw-valid-17th"),  # only the first 16 entries are compared (documented)
        case("pay", stripe("garbage"), "signature_mismatch", "stripe-garbage"),
        case("pay", stripe(f"t={stamp},v0={stripe_good}"), "signature_mismatch",
             "stripe-v0-only"),
        case("pay", stripe(f"v1={stripe_good}"), "signature_mismatch", "stripe-no-t"),
        case("pay", stripe(f"t={stamp},{junk_v1},v1={stripe_good}"), "signature_mismatch",
             "stripe-valid-1000th"),
        case("sl", [json_ct, ("X-Slack-Request-Timestamp", stamp),
                    ("X-Slack-Signature", "v1=" + hexmac(f"v0:{stamp}:".encode() + body))],
             "signature_mismatch", "slack-v1-prefix"),
    ]


@pytest.mark.parametrize(("integration", "headers", "body", "reason"), signature_cases())
async def test_hostile_signature_headers(
    world: World, integration: str, headers: Headers, body: bytes, reason: str
) -> None:
    before = await world.head()
    assert_refused(await post(world, f"/hooks/{integration}", headers, body), 401, reason)
    assert await world.head() == before
    await assert_healthy(world.port)


@pytest.mark.parametrize(("integration", "provider", "name", "sep", "junk"), [
    ("pay", "stripe", "Stripe-Signature", ",", "v1=00"),
    ("sw", "standard-webhooks", "webhook-signature", " ", "v1,AA=="),
], ids=["stripe", "standard-webhooks"])
async def test_valid_signature_first_of_a_1000_entry_list_is_accepted(
    world: World, integration: str, provider: str, name: str, sep: str, junk: str
) -> None:
    body = provider_body(provider)
    headers = [(k, sep.join([v, *[junk] * 999]) if k == name else v)
               for k, v in signed_with_stamp(provider, str(NOW), body)]
    assert (await post(world, f"/hooks/{integration}", headers, body)).status == 202
    await assert_healthy(world.port)


# -- timestamps -----------------------------------------------------------------------------

@pytest.mark.parametrize(("stamp", "reason"), [
    pytest.param(f"{NOW}.5", "signature_mismatch", id="float"),
    pytest.param(f"-{NOW}", "signature_mismatch", id="negative"),
    pytest.param(f"+{NOW}", "signature_mismatch", id="plus-sign"),
    pytest.param("1" * 16, "signature_mismatch", id="16-digits"),
    pytest.param("١٨٠٠٠٠٠٠٠٠", "signature_mismatch", id="arabic-indic-digits"),
    pytest.param(str(NOW + 10**6), "timestamp_out_of_tolerance", id="far-future"),
    pytest.param("9" * 15, "timestamp_out_of_tolerance", id="15-digits"),
    pytest.param("0", "timestamp_out_of_tolerance", id="epoch"),
    pytest.param(str(NOW + 301), "timestamp_out_of_tolerance", id="tolerance-plus-1"),
    pytest.param(str(NOW - 300), "accepted", id="tolerance-edge"),
])
@pytest.mark.parametrize(("integration", "provider"),
                         [("pay", "stripe"), ("sl", "slack"), ("sw", "standard-webhooks")])
async def test_hostile_timestamps(
    world: World, integration: str, provider: str, stamp: str, reason: str
) -> None:
    body = provider_body(provider)
    before = await world.head()
    resp = await post(world, f"/hooks/{integration}", signed_with_stamp(provider, stamp, body),
                      body)
    if reason == "accepted":
        assert resp.status == 202, resp.body
    else:
        assert_refused(resp, 401, reason)
        assert await world.head() == before
    await assert_healthy(world.port)


# -- Slack and GitLab specifics -------------------------------------------------------------

@pytest.mark.parametrize(("header", "value"), [
    ("X-Slack-Request-Timestamp", None), ("X-Slack-Request-Timestamp", " "),
    ("X-Slack-Signature", None),
], ids=["no-timestamp", "blank-timestamp", "no-signature"])
async def test_slack_missing_header(world: World, header: str, value: str | None) -> None:
    body = provider_body("slack")
    headers = [(k, v if k != header else value)
               for k, v in signed_with_stamp("slack", str(NOW), body)]
    sent = [(k, v) for k, v in headers if v is not None]
    assert_refused(await post(world, "/hooks/sl", sent, body), 401, "signature_missing")
    await assert_healthy(world.port)


@pytest.mark.parametrize("token", [
    pytest.param("x", id="one-char"),
    pytest.param(SECRET[:-1], id="one-short"),
    pytest.param(SECRET[:-1] + "?", id="same-length"),
    pytest.param(SECRET + "x", id="one-long"),
    pytest.param(SECRET.upper(), id="other-case"),
    pytest.param("x" * 8000, id="8000-chars"),
    pytest.param("\udcff\udcfe\udc80\udc81", id="non-ascii-bytes"),  # raw bytes on the wire
])
async def test_gitlab_wrong_token_answers_alike_whatever_its_length(
    world: World, token: str
) -> None:
    headers = [("Content-Type", "application/json"), ("X-Gitlab-Event", "Push Hook"),
               ("X-Gitlab-Token", token)]
    before = await world.head()
    resp = await post(world, "/hooks/gl", headers, b'{"object_kind": "push"}')
    # The same status and words for every length: nothing tells a prober how close it came.
    assert (resp.status, resp.json()) == (
        401, {"error": "signature_mismatch", "detail": "X-Gitlab-Token does not match"})
    assert await world.head() == before
    await assert_healthy(world.port)


async def test_gitlab_missing_token(world: World) -> None:
    resp = await post(world, "/hooks/gl", [("Content-Type", "application/json")], b"{}")
    assert_refused(resp, 401, "signature_missing")
    await assert_healthy(world.port)


# -- replays of a captured request ----------------------------------------------------------

def rewritten(headers: Headers, names: Iterable[str], value: str | None) -> Headers:
    """``headers`` with every header in ``names`` set to ``value`` (dropped when None)."""
    lower = {name.lower() for name in names}
    kept = [(k, v) for k, v in headers if k.lower() not in lower]
    return kept if value is None else [*kept, *((name, value) for name in names)]


GH_ID, GL_IDS = ("X-GitHub-Delivery",), ("Idempotency-Key", "X-Gitlab-Event-UUID")
REPLAYS: dict[str, Any] = {
    "new-delivery-id": lambda h, ids, _: rewritten(h, ids, str(uuid.uuid4())),
    "no-delivery-id": lambda h, ids, _: rewritten(h, ids, None),
    "empty-delivery-id": lambda h, ids, _: rewritten(h, ids, ""),
    "two-delivery-ids": lambda h, ids, _: [*h, *((name, str(uuid.uuid4())) for name in ids)],
    "lower-case-new-id": lambda h, ids, _: rewritten(h, [n.lower() for n in ids], "x" * 300),
    "relabelled-event": lambda h, _, event: rewritten(h, [event], "release"),
    "no-event-header": lambda h, _, event: rewritten(h, [event], None),
    "new-id-and-event": lambda h, ids, event: rewritten(
        rewritten(h, ids, str(uuid.uuid4())), [event], "deployment"),
}


@pytest.mark.parametrize("replay", sorted(REPLAYS))
@pytest.mark.parametrize("integration", ["gh", "gl"])
async def test_a_captured_request_replays_only_as_a_duplicate(
    world: World, integration: str, replay: str
) -> None:
    """The delivery id and event type headers of GitHub and GitLab are not signed: a request
    copied from a "Recent deliveries" page, however its unsigned headers are rewritten, is
    the event it was, answered 200 duplicate and journaled once."""
    body = json.dumps({"ref": "refs/heads/main", "case": f"{integration}-{replay}"}).encode()
    if integration == "gh":
        headers, ids, event = gh_headers(body), GH_ID, "X-GitHub-Event"
    else:
        signed = get_provider("gitlab").sign(body, SECRET, NOW, "Push Hook", str(uuid.uuid4()))
        headers, ids, event = list(signed.headers.items()), GL_IDS, "X-Gitlab-Event"
    first = await post(world, f"/hooks/{integration}", headers, body)
    assert first.status == 202, first.body
    head = await world.head()
    again = await post(world, f"/hooks/{integration}", REPLAYS[replay](headers, ids, event), body)
    assert (again.status, again.json()) == (200, {**first.json(), "status": "duplicate"})
    assert await world.head() == head
    await assert_healthy(world.port)


# -- integration ids in the URL -------------------------------------------------------------

@pytest.mark.parametrize(("path", "status", "reason"), [
    pytest.param("/hooks/..%2Fgh", 404, "unknown_integration", id="dotdot-slash-encoded"),
    pytest.param("/hooks/%2e%2e", 404, "unknown_integration", id="dotdot-encoded"),
    pytest.param("/hooks/%2e%2e%2fgh", 404, "unknown_integration", id="dotdot-all-encoded"),
    pytest.param("/hooks/gh%00", 404, "unknown_integration", id="nul"),
    pytest.param("/hooks/gh%2F", 404, "unknown_integration", id="slash-encoded"),
    pytest.param("/hooks/p%D0%B0y", 404, "unknown_integration", id="cyrillic-a"),
    pytest.param("/hooks/GH", 404, "unknown_integration", id="upper-case"),
    pytest.param("/hooks/%20gh", 404, "unknown_integration", id="leading-space"),
    pytest.param("/hooks/" + "a" * 4000, 404, "unknown_integration", id="4000-chars"),
    # Outside /hooks/{id} (the router's plain 404) or not HTTP at all (aiohttp's 400):
    pytest.param("/hooks/%2e%2e/gh", 404, None, id="dotdot-encoded-then-slash"),
    pytest.param("/hooks/../hooks/gh", 404, None, id="dotdot-literal"),
    pytest.param("/hooks/./gh", 404, None, id="dot-literal"),
    pytest.param("/hooks/gh/", 404, None, id="trailing-slash"),
    pytest.param("/hooks/p\udcd0\udcb0y", 400, None, id="raw-utf8-bytes"),
    pytest.param("/hooks/" + "a" * 9000, 400, None, id="9000-chars"),
])
async def test_hostile_integration_ids(
    world: World, path: str, status: int, reason: str | None
) -> None:
    body = provider_body("stripe")  # signed for "gh" and "pay" alike: a misroute would be 2xx
    headers = [*gh_headers(body), signed_with_stamp("stripe", str(NOW), body)[1]]
    before = await world.head()
    resp = await post(world, path, headers, body)
    assert resp.status == status, resp.body[:200]
    if reason is not None:
        assert resp.json()["error"] == reason
    assert await world.head() == before
    await assert_healthy(world.port)


async def test_hostile_ids_are_journaled_short_and_printable(fresh: World) -> None:
    await fresh.daemon.rejections.flush(fresh.daemon.journal)
    head = await fresh.head()
    for path in ("/hooks/gh%00", "/hooks/" + "b" * 4000, "/hooks/g%0Ah%1B%5B31m"):
        resp = await post(fresh, path, [("Content-Type", "application/json")], b"{}")
        assert_refused(resp, 404, "unknown_integration")
    await fresh.daemon.rejections.flush(fresh.daemon.journal)
    (row,) = await events(fresh.admin, after_seq=head, type="webhook.rejected")
    samples = row["payload"]["requested_ids"]
    assert (row["payload"]["count"], len(samples)) == (3, 3)
    assert all(s.isprintable() and len(s) <= 64 for s in samples), samples
    await assert_healthy(fresh.port)


# -- methods --------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path", "status", "reason"), [
    *[(m, "/hooks/gh", 405, "method_not_allowed")
      for m in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE")],
    ("GET", "/hooks/nope", 404, "unknown_integration"),  # the id is checked first
])
async def test_methods_other_than_post(
    world: World, method: str, path: str, status: int, reason: str
) -> None:
    body = b'{"a": 1}'
    before = await world.head()
    resp = await exchange(world.port, request_bytes(method, path, gh_headers(body), body))
    assert_refused(resp, status, reason)
    assert await world.head() == before
    await assert_healthy(world.port)


async def test_head_is_refused_without_a_body(world: World) -> None:
    conn = await RawConnection.tcp(world.port)
    try:
        await conn.send(request_bytes("HEAD", "/hooks/gh"))
        assert (await conn.response(head=True)).status == 405
        # Had any body bytes followed that head, this next answer would not parse.
        await conn.send(request_bytes("GET", "/healthz"))
        after = await conn.response()
        assert (after.status, after.json()) == (200, {"status": "ok"})
    finally:
        await conn.close()
    await assert_healthy(world.port)


# -- many slow or many bad clients ----------------------------------------------------------

async def test_slowloris_does_not_starve_a_normal_sender(world: World) -> None:
    head = request_bytes("POST", "/hooks/gh", gh_headers(b"{}", ("X-Pad", "z" * 300)), b"{}")
    trickle = head[: head.index(b"\r\n\r\n")]  # never the blank line that ends the head
    slow = [await RawConnection.tcp(world.port) for _ in range(50)]
    sent = 0

    async def one_byte_each() -> None:
        nonlocal sent
        for conn in slow:
            await conn.send(trickle[sent : sent + 1])
        sent += 1
        await asyncio.sleep(0.01)  # the slowness under test, not a synchronisation

    try:
        for _ in range(20):  # all fifty are mid-request before the normal sender comes
            await one_byte_each()
        body = b'{"ok": true}'
        normal = asyncio.create_task(post(world, "/hooks/gh", gh_headers(body), body))
        while not normal.done() and sent < len(trickle):
            await one_byte_each()
        async with asyncio.timeout(2):
            assert (await normal).status == 202
        assert sent < len(trickle)  # answered while every slow request was still open
    finally:
        for conn in slow:
            await conn.close()
    await assert_healthy(world.port)


async def test_flood_of_unknown_integrations_is_one_journal_row(fresh: World) -> None:
    daemon = fresh.daemon
    await daemon.rejections.flush(daemon.journal)
    head = await fresh.head()

    async def sender(first: int) -> int:
        conn = await RawConnection.tcp(fresh.port)  # one keep-alive connection of a pool of 50
        refused = 0
        try:
            for i in range(first, 10_000, 50):
                await conn.send(request_bytes("POST", f"/hooks/ghost-{i}",
                                              [("Content-Type", "application/json")], b"{}"))
                refused += (await conn.response()).status == 404
        finally:
            await conn.close()
        return refused

    with capture_logs():  # rendering 10,000 console lines would be most of the test's time
        assert sum(await asyncio.gather(*(sender(i) for i in range(50)))) == 10_000
    assert daemon.rejections.pending() == 10_000
    await daemon.rejections.flush(daemon.journal)
    assert await fresh.head() == head + 1
    (row,) = await events(fresh.admin, after_seq=head)
    payload = row["payload"]
    assert (row["kind"], payload["reason"], payload["count"]) == (
        "webhook.rejected", "unknown_integration", 10_000)
    assert payload["remote_addresses"] == ["127.0.0.1"] and len(payload["requested_ids"]) == 5
    await assert_healthy(fresh.port)


# -- admin API ------------------------------------------------------------------------------

def admin_cases() -> list[Any]:
    oversized = b'{"integration_id": "' + b"a" * ADMIN_MAX_BODY + b'"}'
    too_large, invalid = (413, "payload_too_large"), (400, "invalid_request")
    return [
        pytest.param("/v1/webhooks", oversized, False, too_large, id="oversized"),
        pytest.param("/v1/webhooks", oversized, True, too_large, id="oversized-chunked"),
        pytest.param("/v1/events", oversized, False, too_large, id="oversized-event"),
        pytest.param("/v1/webhooks", b'{"integration_id": ', False, invalid, id="truncated"),
        pytest.param("/v1/webhooks", b'{"integration_id": "\xff"}', False, invalid,
                     id="invalid-utf8"),
        pytest.param("/v1/webhooks", b"[" * 10_000 + b"]" * 10_000, False, invalid,
                     id="arrays-10000-deep"),
        pytest.param("/v1/events", b'{"type": "app.x", "data": ' + b'{"a":' * 5000 + b"1"
                     + b"}" * 5001, False, invalid, id="data-5000-deep"),
        pytest.param("/v1/events", b'{"type": "app.x", "data": {"n": 1' + b"0" * 5000 + b"}}",
                     False, invalid, id="int-5001-digits"),
        pytest.param("/v1/webhooks", b"[]", False, invalid, id="array"),
        pytest.param("/v1/webhooks/gh/rotate-secret", b'{"grace_s": ', False, invalid,
                     id="truncated-rotate"),
        pytest.param("/v1/events", b'{"type": "app.x", "data": {"v": NaN}}', False, invalid,
                     id="nan"),
        pytest.param("/v1/events", b'{"type": "app.x", "data": {"v": -Infinity}}', False,
                     invalid, id="infinity"),
    ]


@pytest.mark.parametrize(("path", "body", "chunked", "expected"), admin_cases())
async def test_hostile_admin_requests(
    world: World, path: str, body: bytes, chunked: bool, expected: tuple[int, str]
) -> None:
    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    before = await world.head()
    async with world.admin.post(path, data=pieces() if chunked else body,
                                headers={"Content-Type": "application/json"}) as resp:
        status, answer = resp.status, await resp.json()
    assert await world.head() == before
    async with world.admin.get("/v1/status") as resp:
        assert resp.status == 200
    await assert_healthy(world.port)
    assert (status, answer.get("error")) == expected, answer
    assert isinstance(answer["message"], str) and answer["message"]


# -- a stream client that never reads -------------------------------------------------------

BLOB = 7000  # bytes of data per published event (the admin API allows 8 KiB)
AFTER_OVERFLOW = 150  # events published once the slow client has overflowed


async def test_a_stream_client_that_never_reads_is_cut_loose(fresh: World) -> None:
    daemon, loop = fresh.daemon, asyncio.get_running_loop()
    seen: asyncio.Queue[int] = asyncio.Queue()

    async def follow(resp: aiohttp.ClientResponse) -> None:
        async for line in resp.content:
            assert not line.startswith(b"event: stream.overflow")
            if line.startswith(b"id: "):
                seen.put_nowait(int(line[4:]))

    async def publish(i: int) -> int:
        async with fresh.admin.post("/v1/events", json={
                "type": "app.blob", "data": {"i": i, "blob": "x" * BLOB}}) as resp:
            assert resp.status == 201
            seq: int = (await resp.json())["seq"]
            return seq

    async def reader_reached(seq: int) -> None:
        async with asyncio.timeout(10):
            while await seen.get() < seq:
                pass

    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.setblocking(False)
    try:
        await loop.sock_connect(slow, str(daemon.socket_path))
        await loop.sock_sendall(
            slow, b"GET /v1/events/stream?type=app.* HTTP/1.1\r\nHost: admin\r\n\r\n")
        data = b""
        async with asyncio.timeout(5):  # the stream's opening comment: it has joined the hub
            while b": palyra event stream" not in data:
                data += await loop.sock_recv(slow, 4096)
        # From here the slow client reads nothing until the end.
        async with fresh.admin.get("/v1/events/stream", params={"type": "app.*"}) as fast:
            assert await fast.content.readline() == b": palyra event stream\n"
            reader = asyncio.create_task(follow(fast))
            # Socket buffers differ between machines: publish until the slow client's
            # buffer has overflowed (bounded), whatever the kernel held for it.
            for i in range(5000):
                overflow_seq = await publish(i)
                if daemon.stream_hub.overflows:
                    break
            assert daemon.stream_hub.overflows == 1
            await reader_reached(overflow_seq)
            rss_before = rss_bytes()
            tracemalloc.start()
            try:
                for i in range(AFTER_OVERFLOW):
                    last = await publish(i)
                await reader_reached(last)  # the reading client still gets every event
                retained = tracemalloc.get_traced_memory()[0]
            finally:
                tracemalloc.stop()
            rss_growth = rss_bytes() - rss_before
            assert not reader.done()  # and it never overflowed
            reader.cancel()
        # The megabyte published after the overflow was dropped for the slow client, not
        # kept: what stayed allocated is a fraction of it.
        assert retained < AFTER_OVERFLOW * BLOB // 4, retained
        assert rss_growth < 64 * 1024 * 1024, rss_growth
        async with asyncio.timeout(10):
            while not data.endswith(b"\r\n0\r\n\r\n"):  # the stream's last chunk
                data += await loop.sock_recv(slow, 65536)
    finally:
        slow.close()
    received = asyncio.StreamReader()
    received.feed_data(data)
    received.feed_eof()
    frames = (await read_response(received)).body.decode().strip().split("\n\n")
    delivered = [int(f.split("\n", 1)[0][4:]) for f in frames if f.startswith("id: ")]
    assert delivered and max(delivered) <= overflow_seq < last, (delivered[-1:], overflow_seq)
    assert frames[-1].startswith("event: stream.overflow"), frames[-1]
    await assert_healthy(fresh.port)


# -- one token's streams and bodies (issue 9, item 2) ---------------------------------------

async def new_token(world: World, name: str) -> str:
    """A new publish-and-read token, as the text a client presents."""
    return (await create_token(world.admin, name, scopes=["publish", "read"])).secret


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def owner_of(token: str) -> str:
    """How the stream hub names a token's streams: ``token:<token_id>``."""
    return "token:" + token.split("_")[1]


@contextlib.asynccontextmanager
async def tcp_client(world: World) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=0)  # one connection per open stream
    async with aiohttp.ClientSession(
            connector=connector, base_url=f"http://127.0.0.1:{world.port}") as http:
        yield http


@contextlib.asynccontextmanager
async def open_streams(
    http: aiohttp.ClientSession, token: str, queries: list[list[tuple[str, str]]]
) -> AsyncIterator[list[aiohttp.ClientResponse]]:
    """One stream per query, each past its opening comment (it has joined the hub)."""
    async with contextlib.AsyncExitStack() as stack:
        streams = []
        for query in queries:
            resp = await stack.enter_async_context(
                http.get("/v1/events/stream", params=query, headers=bearer(token)))
            assert resp.status == 200, await resp.text()
            assert await resp.content.readline() == b": palyra event stream\n"
            streams.append(resp)
        yield streams


async def refused_stream(http: aiohttp.ClientSession, token: str,
                         query: list[tuple[str, str]]) -> tuple[int, str]:
    async with http.get("/v1/events/stream", params=query, headers=bearer(token)) as resp:
        body = await resp.json()
        assert isinstance(body["message"], str) and body["message"]
        return resp.status, body["error"]


async def test_a_token_gets_at_most_its_streams_and_each_stream_its_patterns(
    fresh: World,
) -> None:
    hub = fresh.daemon.stream_hub
    first, second = await new_token(fresh, "app-one"), await new_token(fresh, "app-two")
    sixteen = [("type", f"app.p{i}.*") for i in range(16)]
    seventeen = [*sixteen, ("type", "app.one-too-many")]
    async with tcp_client(fresh) as http:
        assert await refused_stream(http, first, seventeen) == (400, "too_many_patterns")
        # Globs that need a regular expression cost its compilation: 256 characters in all.
        costly = [("type", "?" * 127 + str(i)) for i in range(3)]
        assert await refused_stream(http, first, costly) == (400, "too_many_patterns")
        async with open_streams(http, await new_token(fresh, "app-three"), [costly[:2]]):
            pass
        async with fresh.admin.get("/v1/events/stream", params=seventeen) as resp:
            assert (resp.status, (await resp.json())["error"]) == (400, "too_many_patterns")
        async with open_streams(http, first, [sixteen] * 16):
            assert hub.owned(owner_of(first)) == 16
            assert await refused_stream(http, first, []) == (429, "too_many_streams_for_token")
            # The limit is the token's own: another token, and the admin socket, still stream.
            async with open_streams(http, second, [[]]):
                assert hub.owned(owner_of(second)) == 1
            async with fresh.admin.get("/v1/events/stream") as resp:
                assert await resp.content.readline() == b": palyra event stream\n"
    await assert_healthy(fresh.port)


async def test_a_webhook_is_answered_while_many_streams_with_many_globs_are_open(
    fresh: World,
) -> None:
    # 8 tokens x 16 streams x 16 globs (a backtracking-prone one, fourteen that never match,
    # half of them needing a regular expression, then "push"): every stream is its own
    # group, the webhook is acknowledged, every stream gets it, and the hub judged each
    # group once.
    hub, tokens, per_token = fresh.daemon.stream_hub, 8, 16
    body = b'{"ref": "refs/heads/main"}'
    async with tcp_client(fresh) as http, contextlib.AsyncExitStack() as stack:
        streams: list[aiohttp.ClientResponse] = []
        # Tokens that may read GitHub webhooks: a bare read scope never sees one, live or not.
        names = [(await create_token(fresh.admin, f"app-{t}", scopes=["read:github.*"])).secret
                 for t in range(tokens)]
        for t, token in enumerate(names):  # no event is journaled while they open
            queries = [[("type", "*a" * 32),
                        *(("type", f"t{t}.s{s}.n{p}.[!x]?") for p in range(7)),
                        *(("type", f"t{t}.s{s}.never{p}.*") for p in range(7)),
                        ("type", "push")] for s in range(per_token)]
            streams += await stack.enter_async_context(open_streams(http, token, queries))
        assert hub.groups == tokens * per_token
        resp = await post(fresh, "/hooks/gh", gh_headers(body), body)
        assert resp.status == 202, resp.body
        seq = resp.json()["seq"]
        for stream in streams:
            async with asyncio.timeout(10):
                while not (line := await stream.content.readline()).startswith(b"id: "):
                    assert line, "the stream ended"
            assert int(line[4:]) == seq
        assert hub.type_matches == tokens * per_token  # one per group: one distinct type
    await assert_healthy(fresh.port)


TOKEN_BODY_CAP = 64 * 1024  # admin_events.MAX_TOKEN_BODY_BYTES, as documented


def padded_event(size: int) -> bytes:
    """A valid event of exactly ``size`` bytes (whitespace pads it: what a caller may send)."""
    event = b'{"type": "app.padded", "data": {"k": 1}}'
    return event[:-1] + b" " * (size - len(event)) + b"}"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(("size", "status"), [(TOKEN_BODY_CAP, 201), (TOKEN_BODY_CAP + 1, 413)],
                         ids=["at-cap", "one-over"])
async def test_token_route_body_at_its_cap_and_one_byte_over(
    world: World, size: int, status: int, chunked: bool
) -> None:
    token = await new_token(world, f"cap-{uuid.uuid4().hex[:8]}")
    body = padded_event(size)
    headers = [("Authorization", f"Bearer {token}"), ("Content-Type", "application/json"),
               *([("Transfer-Encoding", "chunked")] if chunked else [])]
    wire = b"".join(chunk(body[i:i + 8192]) for i in range(0, size, 8192)) + chunk(b"") \
        if chunked else body
    before = await world.head()
    resp = await post(world, "/v1/events", headers, wire)
    if status == 201:
        assert (resp.status, resp.json()["seq"]) == (201, before + 1), resp.body
    else:
        assert_refused(resp, 413, "payload_too_large")
        assert await world.head() == before
    await assert_healthy(world.port)


async def test_token_route_refuses_a_large_content_length_before_reading(world: World) -> None:
    # 32 MiB declared, not one byte sent: the answer comes at once, from the head alone.
    token = await new_token(world, f"cap-{uuid.uuid4().hex[:8]}")
    before = await world.head()
    conn = await RawConnection.tcp(world.port)
    try:
        await conn.send(request_bytes("POST", "/v1/events", [
            ("Authorization", f"Bearer {token}"), ("Content-Type", "application/json")],
            content_length=32 * 1024 * 1024))
        assert_refused(await conn.response(timeout=5), 413, "payload_too_large")
    finally:
        await conn.close()
    assert await world.head() == before
    await assert_healthy(world.port)


async def test_token_route_cuts_off_an_endless_chunked_body_at_its_cap(world: World) -> None:
    token = await new_token(world, f"cap-{uuid.uuid4().hex[:8]}")
    before = await world.head()
    conn = await RawConnection.tcp(world.port)
    try:
        await conn.send(request_bytes("POST", "/v1/events", [
            ("Authorization", f"Bearer {token}"), ("Content-Type", "application/json"),
            ("Transfer-Encoding", "chunked")]))
        # Past the cap and never the last chunk: the daemon answers anyway.
        await conn.send(chunk(b'{"type": "app.x", "data": {"k": "')
                        + b"".join(chunk(b"x" * 4096) for _ in range(TOKEN_BODY_CAP // 4096 + 1)))
        assert_refused(await conn.response(timeout=5), 413, "payload_too_large")
    finally:
        await conn.close()
    assert await world.head() == before
    await assert_healthy(world.port)


async def test_token_route_cuts_off_a_gzip_bomb_at_its_cap(world: World) -> None:
    # 1 MiB of spaces in about 1 KB: the cap counts what the body inflates to.
    token = await new_token(world, f"cap-{uuid.uuid4().hex[:8]}")
    bomb = gzip.compress(padded_event(1024 * 1024))
    before = await world.head()
    resp = await post(world, "/v1/events", [
        ("Authorization", f"Bearer {token}"), ("Content-Type", "application/json"),
        ("Content-Encoding", "gzip")], bomb)
    assert_refused(resp, 413, "payload_too_large")
    assert await world.head() == before
    await assert_healthy(world.port)


# -- timing: a presented secret's length is not compared (item 16) ---------------------------

def record_compares(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The lengths of both arguments of every ``hmac.compare_digest`` call from now on."""
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    return calls


@pytest.mark.parametrize("token", ["x", SECRET[:-1], SECRET + "!", "t" * 4000],
                         ids=["short", "one-less", "one-more", "long"])
async def test_gitlab_token_compare_does_not_depend_on_its_length(
    world: World, monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    """compare_digest returns early on unequal lengths: only equal-length digests reach it."""
    calls = record_compares(monkeypatch)
    headers = [("Content-Type", "application/json"), ("X-Gitlab-Event", "Push Hook"),
               ("X-Gitlab-Token", token)]
    resp = await post(world, "/hooks/gl", headers, b'{"object_kind": "push"}')
    assert_refused(resp, 401, "signature_mismatch")
    assert calls and all(a == b for a, b in calls), calls


async def test_api_token_compare_does_not_depend_on_its_length(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = (await create_token(world.admin, "timing")).secret
    calls = record_compares(monkeypatch)
    url = f"http://127.0.0.1:{world.port}/v1/events"
    async with aiohttp.ClientSession() as http:
        # A well-formed but short guess: the id, then 16 of the random characters (the
        # random part may itself hold "_", so the cut is at the separator after the id).
        cut = secret.index("_", len("plt_")) + 17
        assert cut < len(secret)
        for guess in (secret[:cut], secret + "A" * 40):
            async with http.post(url, json={"type": "app.timing", "data": {}},
                                 headers={"Authorization": f"Bearer {guess}"}) as answer:
                assert answer.status == 401
    assert calls and all(a == b for a, b in calls), calls


# -- one sender holding the connection slots ------------------------------------------------

@contextlib.asynccontextmanager
async def slots_daemon(**settings: Any) -> AsyncIterator[World]:
    """A daemon with "gh" and small connection caps of its own (``section__key`` settings)."""
    async with running_daemon(clock=ManualClock(), keyring=MemoryKeyring(),
                              **{**SETTINGS, **settings}) as d:
        connector = aiohttp.UnixConnector(path=str(d.socket_path))
        async with aiohttp.ClientSession(connector=connector, base_url="http://admin") as admin:
            await add_integration(admin, "gh", max_payload_bytes=LIMIT)
            yield World(d, admin)


async def webhook_from(world: World, source: str) -> RawResponse:
    """A signed GitHub push sent from the loopback address ``source``."""
    conn = await RawConnection.tcp(world.port, source=source)
    try:
        body = b'{"zen": "from ' + source.encode() + b'"}'
        await conn.send(request_bytes("POST", "/hooks/gh", gh_headers(body), body))
        return await conn.response()
    finally:
        await conn.close()


async def test_one_address_reconnecting_cannot_take_every_slot() -> None:
    async with slots_daemon(ingress__max_connections=64,
                            ingress__max_connections_per_source=8) as world:
        held: list[RawConnection] = []
        answers: list[int] = []
        try:
            for _ in range(2):  # every slot it can get, then again for each refusal
                for _ in range(64 - len(held)):
                    conn = await RawConnection.tcp(world.port)
                    await conn.send(request_bytes("GET", "/healthz"))  # kept alive when served
                    answers.append((await conn.response()).status)
                    if answers[-1] == 200:
                        held.append(conn)
                    else:
                        await conn.close()
            assert (answers.count(200), answers.count(503)) == (8, 56 + 56)
            assert world.daemon.connections.by_source == {"127.0.0.1": 8}
            assert_refused(await webhook_from(world, "127.0.0.1"), 503,
                           "too_many_source_connections")
            resp = await webhook_from(world, "127.0.0.2")  # every other sender is served
            assert (resp.status, resp.json()["status"]) == (202, "accepted")
        finally:
            for conn in held:
                await conn.close()


async def test_a_token_filling_the_stream_cap_leaves_providers_their_slots() -> None:
    async with slots_daemon(ingress__max_connections=8, stream__max_clients=16,
                            stream__max_per_token=32) as world:
        token = (await create_token(world.admin, "greedy", scopes=["read"])).secret
        stream = request_bytes("GET", "/v1/events/stream",
                               [("Authorization", f"Bearer {token}")])
        streams: list[RawConnection] = []
        try:
            for _ in range(16):  # twice the connection cap
                conn = await RawConnection.tcp(world.port)
                await conn.send(stream)
                async with asyncio.timeout(10):
                    head = await conn.reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 "), head
                streams.append(conn)
            assert (world.daemon.connections.streams, world.daemon.connections.open) == (16, 0)
            resp = await exchange(world.port, stream)
            assert_refused(resp, 503, "too_many_streams")
            resp = await webhook_from(world, "127.0.0.1")
            assert (resp.status, resp.json()["status"]) == (202, "accepted")
        finally:
            for conn in streams:
                await conn.close()
        await assert_healthy(world.port)


# -- request heads that never end -----------------------------------------------------------

async def test_unfinished_heads_are_cut_off_at_max_head_bytes(world: World) -> None:
    """The issue's attack in small: many connections each sending header lines (each within
    ``ingress.max_header_bytes``, fewer than ``ingress.max_headers``) without the blank line.
    Each is answered 431 once its head passes ``ingress.max_head_bytes`` (64 KiB), instead
    of being held until the idle timeout."""
    line = b"X-Pad: " + b"p" * 8000 + b"\r\n"
    conns = [await RawConnection.tcp(world.port) for _ in range(24)]
    try:
        for conn in conns:
            await conn.send(b"POST /hooks/gh HTTP/1.1\r\nHost: x\r\n")
        for _ in range(16):  # 128 KB each, 3 MB in all
            for conn in conns:
                await conn.send(line)
        for conn in conns:
            resp = await conn.response()
            assert_refused(resp, 431, "head_too_large")
            assert await conn.closed_by_peer()
    finally:
        for conn in conns:
            await conn.close()
    await assert_healthy(world.port)


# -- hostile token holders (issue 9: token scopes, items 3 and 15) -----------------------------


async def as_token(world: World, bearer: dict[str, str], method: str, path: str,
                   body: Any = None, **query: str) -> tuple[int, str]:
    """``(status, body text)`` of one request to the TCP listener with ``bearer``."""
    async with aiohttp.ClientSession() as http, http.request(
        method, f"http://127.0.0.1:{world.port}{path}", json=body, params=query,
        headers=bearer,
    ) as resp:
        return resp.status, await resp.text()


@pytest.mark.parametrize(("body", "field"), [
    pytest.param({"type": "github.push", "source": "gh", "actor": "github"}, "type",
                 id="github-push-as-gh"),
    pytest.param({"type": " GitHub.Push "}, "type", id="github-mixed-case"),
    pytest.param({"type": "github:push"}, "type", id="github-colon"),
    pytest.param({"name": "gitlab.push_hook"}, "type", id="gitlab-via-name"),
    pytest.param({"type": "stripe.charge.succeeded"}, "type", id="stripe"),
    pytest.param({"type": "slack"}, "type", id="slack-bare"),
    pytest.param({"type": "shopify.orders_create"}, "type", id="shopify"),
    pytest.param({"type": "standard-webhooks.invoice.paid"}, "type", id="standard-webhooks"),
    pytest.param({"type": "standard_webhooks.invoice.paid"}, "type", id="standard_webhooks"),
    pytest.param({"type": "generic.ping"}, "type", id="generic"),
    pytest.param({"type": "svix.x"}, "type", id="svix"),
    pytest.param({"type": "palyra.test", "data": {"subscription_id": "s"}}, "type",
                 id="palyra-test"),
    pytest.param({"type": "webhook.received"}, "type", id="webhook-received"),
    pytest.param({"type": "entry.created", "source": "gh"}, "source", id="integration-source"),
    pytest.param({"type": "entry.created", "source": "pay", "actor": "stripe"}, "source",
                 id="stripe-integration-source"),
])
async def test_a_token_cannot_publish_as_a_provider(
    world: World, body: dict[str, Any], field: str
) -> None:
    bearer = (await create_token(world.admin, "forger")).bearer
    before = await world.head()
    status, text = await as_token(world, bearer, "POST", "/v1/events", body)
    answer = json.loads(text)
    assert (status, answer["error"], answer.get("field")) == (400, "invalid_request", field)
    assert await world.head() == before
    await assert_healthy(world.port)


@pytest.mark.parametrize("event_type", ["entry", "entryx.created", "other.entry.created",
                                        "deploy.done"])
async def test_a_publish_glob_is_not_escaped(
    world: World, event_type: str
) -> None:
    bearer = (await create_token(world.admin, "narrow", scopes=["publish:entry.*"])).bearer
    before = await world.head()
    status, text = await as_token(world, bearer, "POST", "/v1/events", {"type": event_type})
    assert (status, json.loads(text)["error"]) == (403, "scope_denied")
    assert await world.head() == before


@pytest.mark.parametrize("scopes", [("read",), ("read:*",), ("read:*.*",), ("read:?ithub.*",),
                                    ("read:webhook.*",), ("read:gh*",), ("publish:github.*",)])
async def test_a_broad_read_glob_never_shows_a_received_webhook(
    world: World, scopes: tuple[str, ...]
) -> None:
    # A body of its own: the same signed content twice would be a replay (a duplicate).
    body = json.dumps({"ref": "refs/heads/secret-branch", "n": uuid.uuid4().hex}).encode()
    assert (await post(world, "/hooks/gh", gh_headers(body), body)).status == 202
    bearer = (await create_token(world.admin, "snoop", scopes=list(scopes))).bearer
    status, text = await as_token(world, bearer, "GET", "/v1/events", limit="10000")
    assert status == (403 if scopes[0].startswith("publish") else 200), text
    assert "secret-branch" not in text and "webhook.received" not in text


async def test_a_guessed_idempotency_key_suppresses_nothing(
    world: World
) -> None:
    squatter = (await create_token(world.admin, "squatter")).bearer
    victim = (await create_token(world.admin, "victim")).bearer
    event = {"type": "billing.invoice_sent", "idempotency_key": "invoice-2026-0001"}
    assert (await as_token(world, squatter, "POST", "/v1/events", event))[0] == 201
    status, text = await as_token(world, victim, "POST", "/v1/events", event)
    assert (status, json.loads(text)["duplicate"]) == (201, False)


@pytest.mark.parametrize("authorization", [
    "Bearer", "Bearer ", "Basic cGx0Og==", "Bearer plt_", "Bearer plt_abcdefgh_" + "A" * 16,
    "Bearer plt_ABCDEFGH_" + "A" * 16, "Bearer " + "plt_" + "a" * 5000,
    "Bearer plt_abcdefgh_" + "A" * 16 + "\u00e9",
])
async def test_malformed_or_unknown_tokens_are_401_everywhere(
    world: World, authorization: str
) -> None:
    for method, path in [("POST", "/v1/events"), ("GET", "/v1/events"),
                         ("GET", "/v1/events/stream"), ("GET", "/metrics")]:
        raw = request_bytes(method, path, [("Authorization", authorization)],
                            b'{"type": "a.b"}' if method == "POST" else b"")
        resp = await exchange(world.port, raw, timeout=5)
        assert resp.status in (400, 401), (path, resp.status)
        if resp.status == 401:
            assert resp.json()["error"] == "unauthorized"
    await assert_healthy(world.port)


async def test_metrics_and_banners_leak_nothing_to_strangers(world: World) -> None:
    resp = await exchange(world.port, request_bytes("GET", "/metrics"), timeout=5)
    assert_refused(resp, 401, "unauthorized")
    assert "gh" not in resp.body.decode()
    for raw in (request_bytes("GET", "/healthz"),
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
                b"BREW /healthz HTTP/1.1\r\nHost: x\r\n\r\n"):
        answer = await exchange(world.port, raw, timeout=5)
        assert answer.headers.get("server") == "palyra", answer.headers
