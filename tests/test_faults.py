"""Fault injection against the real daemon, inbound and storage side: a full disk, a file
size limit, the journal removed or locked under it, a keyring that fails, the registry
deleted, and a wall clock that jumps. The outbound side is in ``test_faults_outbound.py``.

Each test asserts the documented behaviour (docs/reasons.md, docs/outbound.md, the module
docstrings); where palyra_py falls short, the test states the correct behaviour and is
marked ``xfail(strict=True)`` with the bug in its reason. The faults, their observed
behaviour and the bugs are summarised in RELIABILITY.md.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from standardwebhooks import Webhook

from palyra_py.providers import get_provider
from palyra_py.server.daemon import Daemon
from palyra_py.testing import CapturingReceiver, ManualClock, running_daemon
from tests.daemon_process import DaemonProcess
from tests.fault_helpers import (
    FlakyKeyring,
    admin_session,
    fill_file_system,
    journaled_nonces,
    limit_file_size,
    publish,
    small_tmpfs,
    subscribe,
    verify,
    write_lock_held_elsewhere,
)
from tests.helpers import add_integration, events, send_signed

SECRET = "It's a Secret to Everybody"
SW_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the Standard Webhooks docs' example
def push_body(delivery: str) -> bytes:
    """A push of some 6 KB whose content is its own delivery's: the same signed content
    under another delivery id would be a replay, answered duplicate."""
    return json.dumps({"ref": "refs/heads/main", "delivery": delivery, "pad": "x" * 6000}
                      ).encode()
JOURNAL_FILES = ("journal.db", "journal.db-wal", "journal.db-shm")


def delivery_id(tag: str, n: int) -> str:
    """A GitHub delivery id of 16+ characters: the envelope keeps it as the nonce."""
    return f"{tag}-{n:06d}-fault-delivery"


async def send(http: aiohttp.ClientSession, daemon: Daemon, tag: str, n: int,
               integration_id: str = "gh") -> tuple[int, dict[str, Any], Any]:
    return await send_signed(http, daemon, integration_id, push_body(delivery_id(tag, n)),
                             delivery_id=delivery_id(tag, n))


def assert_refused_as_journal_unavailable(status: int, body: dict[str, Any], headers: Any
                                          ) -> None:
    assert (status, body.get("error")) == (503, "journal_unavailable"), (status, body)
    assert headers.get("Retry-After") == "60"


# -- the disk fills up -------------------------------------------------------------------


async def test_disk_full_refuses_with_503_keeps_the_chain_and_recovers(
    clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """A tmpfs filled to the last page: appends that need space are refused (503, nothing
    acknowledged), the chain is intact, and service resumes as soon as space returns."""
    with small_tmpfs("8m") as state:
        async with running_daemon(state, clock=clock) as daemon, \
                admin_session(daemon.socket_path) as admin:
            await add_integration(admin, "gh")
            acked = [delivery_id("full", n) for n in range(5)]
            for n in range(5):
                assert (await send(http, daemon, "full", n))[0] == 202
            filler = fill_file_system(state)
            refused: list[int] = []
            # The WAL may still have room for a few frames: keep sending (bounded) until
            # the journal has to grow.
            for n in range(5, 400):
                status, body, headers = await send(http, daemon, "full", n)
                if status == 202:
                    acked.append(delivery_id("full", n))
                    continue
                assert_refused_as_journal_unavailable(status, body, headers)
                refused.append(n)
                if len(refused) == 5:
                    break
            assert len(refused) == 5, "the full disk never refused an append"
            assert daemon.journal.failed_batches >= 5
            # Reads go on; exactly what was acknowledged is there, and nothing is broken.
            assert await journaled_nonces(admin) == acked
            assert (await verify(admin))["ok"]

            filler.unlink()
            # The provider retries what was refused: accepted now, and journaled once.
            status, body, _ = await send(http, daemon, "full", refused[0])
            assert (status, body["status"]) == (202, "accepted"), body
            assert await journaled_nonces(admin) == [*acked, delivery_id("full", refused[0])]
            verdict = await verify(admin)
            assert verdict["ok"] and verdict["first_broken_seq"] is None
            # The refusals were counted while the disk was full and journaled once it wasn't.
            await daemon.rejections.flush(daemon.journal)
            rejected = await events(admin, type="webhook.rejected")
            assert sum(e["payload"]["count"] for e in rejected
                       if e["payload"]["reason"] == "journal_unavailable") == 5


async def test_file_size_limit_on_a_child_daemon_never_acknowledges_a_lost_event(
    state_dir: Path,
) -> None:
    """RLIMIT_FSIZE on a real ``palyra daemon run`` (writes past it fail with EFBIG): it
    answers 503 rather than 202, and after a restart without the limit everything
    acknowledged is there, nothing refused is, and the chain verifies."""
    github = get_provider("github")
    daemon = await DaemonProcess(state_dir, preexec_fn=limit_file_size(1 << 20)).start()
    acked: list[str] = []
    refused: list[str] = []
    try:
        async with admin_session(state_dir / "palyra.sock") as admin:
            await add_integration(admin, "gh", secret=SECRET)
        async with aiohttp.ClientSession() as http:
            for n in range(600):
                delivery = delivery_id("fsize", n)
                signed = github.sign(push_body(delivery), SECRET, time.time(), "push",
                                     delivery)
                async with http.post(f"{daemon.ingress}/hooks/gh", data=signed.body,
                                     headers=signed.headers) as resp:
                    status, body = resp.status, await resp.json()
                    headers = resp.headers
                if status == 202:
                    acked.append(delivery)
                    continue
                assert_refused_as_journal_unavailable(status, body, headers)
                refused.append(delivery)
                if len(refused) == 5:
                    break
        assert len(refused) == 5 and len(acked) >= 5
        failure = await daemon.wait_for_log(("journal_unavailable",))
        assert "journal write failed" in failure["error"]
    finally:
        await daemon.stop()

    restarted = await DaemonProcess(state_dir).start()
    try:
        async with admin_session(state_dir / "palyra.sock") as admin:
            assert await journaled_nonces(admin) == acked
            assert (await verify(admin))["ok"]
    finally:
        await restarted.stop()


# -- the journal file removed or locked --------------------------------------------------

# What happens today: SQLite keeps the unlinked inode open and goes on committing into it
# (and into the -wal file, linked or not), so the ingress keeps answering 202; at the next
# start the daemon creates a new, empty journal and every event acknowledged since the
# removal is gone.
JOURNAL_REMOVED_BUG = (
    "BUG: after journal.db is removed under the running daemon, appends still commit into "
    "the unlinked inode and are answered 202; they vanish at the next start. The writer "
    "should notice the file is gone (its path no longer names the inode it has open) and "
    "answer journal_unavailable."
)


@pytest.mark.parametrize("removed", [JOURNAL_FILES[:1], JOURNAL_FILES], ids=["db", "db-wal-shm"])
async def test_journal_removed_under_the_daemon_acknowledges_nothing_more(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession,
    removed: tuple[str, ...],
) -> None:
    await add_integration(admin, "gh")
    assert (await send(http, daemon, "rm", 0))[0] == 202
    for name in removed:
        (daemon.state_dir / name).unlink(missing_ok=True)
    status, body, headers = await send(http, daemon, "rm", 1)
    assert_refused_as_journal_unavailable(status, body, headers)


async def test_verify_with_the_journal_removed_says_journal_unavailable(
    daemon: Daemon, admin: aiohttp.ClientSession
) -> None:
    (daemon.state_dir / "journal.db").unlink()
    async with admin.post("/v1/journal/verify") as resp:
        assert (resp.status, (await resp.json())["error"]) == (503, "journal_unavailable")


async def test_subscriptions_test_with_the_journal_removed_says_journal_unavailable(
    outbound: Daemon, admin_o: aiohttp.ClientSession, receiver: CapturingReceiver
) -> None:
    """The test event is journaled like any other: a documented 503, never a 500."""
    async with admin_o.post("/v1/subscriptions", json={
            "subscription_id": "probe", "url": receiver.url, "events": ["*"]}) as resp:
        assert resp.status == 201, await resp.text()
    (outbound.state_dir / "journal.db").unlink()
    async with admin_o.post("/v1/subscriptions/probe/test", json={}) as resp:
        assert (resp.status, (await resp.json())["error"]) == (503, "journal_unavailable")
    # The subscription's own subscription.created may arrive (it matches "*"); no test event.
    assert [r for r in receiver.received if b'"palyra.test"' in r.body] == []


async def test_journal_locked_by_another_process_refuses_then_recovers(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession
) -> None:
    """Another process holds the write lock longer than the busy timeout (5 s): ingress and
    publishing answer 503 journal_unavailable, reads and verify go on (WAL), and the first
    request after the release is journaled."""
    await add_integration(admin, "gh")
    assert (await send(http, daemon, "lock", 0))[0] == 202
    async with write_lock_held_elsewhere(daemon.journal_path):
        ingress, published = await asyncio.gather(
            send(http, daemon, "lock", 1), publish(admin, "app.locked"))
        assert_refused_as_journal_unavailable(*ingress)
        assert (published[0], published[1]["error"]) == (503, "journal_unavailable")
        assert await journaled_nonces(admin) == [delivery_id("lock", 0)]
        assert (await verify(admin))["ok"]
    status, body, _ = await send(http, daemon, "lock", 1)
    assert (status, body["status"]) == (202, "accepted")
    assert (await publish(admin, "app.unlocked"))[0] == 201
    assert await journaled_nonces(admin) == [delivery_id("lock", 0), delivery_id("lock", 1)]
    assert (await verify(admin))["ok"]
    assert [e["kind"] for e in await events(admin, type="app.*")] == ["app.unlocked"]


# -- the keyring fails -------------------------------------------------------------------


def write_registry(state_dir: Path, secret_file: Path) -> None:
    """``gh`` and ``gh2`` take their secrets from the keyring, ``gl`` from a file."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    secret_file.write_text("gitlab-token-for-faults\n")
    secret_file.chmod(0o600)
    (state_dir / "webhooks.toml").write_text(
        "version = 1\n"
        '[[webhooks]]\nintegration_id = "gh"\nprovider = "github"\n'
        'secret_ref = "keyring:webhook:gh"\n'
        '[[webhooks]]\nintegration_id = "gh2"\nprovider = "github"\n'
        'secret_ref = "keyring:webhook:gh2"\n'
        '[[webhooks]]\nintegration_id = "gl"\nprovider = "gitlab"\n'
        f'secret_ref = "file:{secret_file}"\n'
    )


def keyring_with_secrets(*, failing: bool) -> FlakyKeyring:
    keyring = FlakyKeyring(failing=failing)
    keyring.passwords[("palyra", "webhook:gh")] = SECRET
    keyring.passwords[("palyra", "webhook:gh2")] = SECRET
    return keyring


async def readiness(admin: aiohttp.ClientSession) -> dict[str, tuple[str, str]]:
    async with admin.get("/v1/webhooks/readiness") as resp:
        rows = (await resp.json())["readiness"]
    return {r["integration_id"]: (r["readiness"], r["detail"]) for r in rows}


async def test_keyring_unavailable_at_start(
    state_dir: Path, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """The daemon starts, says which integrations cannot resolve their secret and why,
    answers 503 secret_unavailable (with Retry-After) for those only, and recovers without
    a restart when the keyring comes back."""
    write_registry(state_dir, state_dir / "gl.secret")
    keyring = keyring_with_secrets(failing=True)
    async with running_daemon(state_dir, clock=clock, keyring=keyring) as daemon, \
            admin_session(daemon.socket_path) as admin:
        base = daemon.ingress_url_for("x", local=True).rsplit("/hooks", 1)[0]
        for probe in ("/healthz", "/readyz"):
            async with http.get(base + probe) as resp:
                assert resp.status == 200
        ready = await readiness(admin)
        assert ready["gl"][0] == "ready"
        for integration_id in ("gh", "gh2"):
            state, detail = ready[integration_id]
            assert state == "secret_not_found" and "KeyringLocked" in detail, detail
        async with admin.get("/v1/status") as resp:
            by_readiness = (await resp.json())["integrations"]["by_readiness"]
        assert (by_readiness["ready"], by_readiness["secret_not_found"]) == (1, 2)

        status, body, headers = await send(http, daemon, "kr", 0)
        assert (status, body["error"], headers.get("Retry-After")) == (
            503, "secret_unavailable", "60")
        status, _, _ = await send_signed(http, daemon, "gl", b'{"object_kind":"push"}',
                                         provider="gitlab", secret="gitlab-token-for-faults",
                                         event="Push Hook", delivery_id=delivery_id("gl", 0))
        assert status == 202

        keyring.failing = False  # a failure is not cached: the next request resolves again
        assert (await send(http, daemon, "kr", 0))[0] == 202
        assert (await readiness(admin))["gh"][0] == "ready"


async def test_keyring_failing_mid_run_keeps_cached_secrets(
    state_dir: Path, http: aiohttp.ClientSession, receiver: CapturingReceiver
) -> None:
    """Secrets resolved before the keyring failed keep verifying (ingress) and signing
    (deliveries); one never resolved gets 503 secret_unavailable; a reload drops the cache
    (documented in ``SecretStore``), so after it every keyring integration waits for the
    keyring."""
    clock = ManualClock(start=time.time())  # the reference verifier checks the timestamp
    write_registry(state_dir, state_dir / "gl.secret")
    keyring = keyring_with_secrets(failing=False)
    async with running_daemon(state_dir, clock=clock, keyring=keyring,
                              delivery__allow_private_networks=True) as daemon, \
            admin_session(daemon.socket_path) as admin:
        signing_secret = (await subscribe(admin, "app", receiver.url,
                                          events=["app.*"]))["secret"]
        # Used once each before the fault: the ingress secret and the signing secret.
        assert (await send(http, daemon, "mid", 0))[0] == 202
        assert (await publish(admin, "app.before"))[0] == 201
        await receiver.wait_for(1)
        keyring.failing = True
        calls = keyring.calls

        assert (await send(http, daemon, "mid", 1))[0] == 202
        status, body, _ = await send(http, daemon, "mid", 2, integration_id="gh2")
        assert (status, body["error"]) == (503, "secret_unavailable")
        assert (await publish(admin, "app.signed"))[0] == 201
        got = (await receiver.wait_for(2))[1]
        assert Webhook(signing_secret).verify(got.body, got.headers)["type"] == "app.signed"
        assert keyring.calls == calls + 1  # only gh2 went to the keyring

        async with admin.post("/v1/reload") as resp:
            assert resp.status == 200
        status, body, _ = await send(http, daemon, "mid", 3)
        assert (status, body["error"]) == (503, "secret_unavailable")
        keyring.failing = False
        assert (await send(http, daemon, "mid", 3))[0] == 202


# -- the registry file deleted -----------------------------------------------------------


async def test_registry_deleted_under_the_daemon_keeps_serving(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession
) -> None:
    await add_integration(admin, "gh")
    (daemon.state_dir / "webhooks.toml").unlink()
    assert (await send(http, daemon, "reg", 0))[0] == 202
    async with admin.get("/v1/webhooks") as resp:
        assert [w["integration_id"] for w in (await resp.json())["webhooks"]] == ["gh"]


async def test_reload_with_the_registry_missing_keeps_the_last_good(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession
) -> None:
    await add_integration(admin, "gh")
    (daemon.state_dir / "webhooks.toml").unlink()
    async with admin.post("/v1/reload") as resp:
        assert resp.status >= 400, await resp.json()
    assert (await send(http, daemon, "reg", 1))[0] == 202


async def test_edit_with_the_registry_missing_keeps_the_other_integrations(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession
) -> None:
    await add_integration(admin, "gh")
    (daemon.state_dir / "webhooks.toml").unlink()
    async with admin.post("/v1/webhooks", json={"integration_id": "gh3", "provider": "github",
                                                "secret": {"value": SECRET}}):
        pass
    assert (await send(http, daemon, "reg", 2))[0] == 202
    async with admin.get("/v1/webhooks") as resp:
        assert "gh" in [w["integration_id"] for w in (await resp.json())["webhooks"]]


# -- the wall clock jumps ----------------------------------------------------------------


async def test_clock_jumps_keep_seq_increasing_and_replay_rules_on_the_wall_clock(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession,
    clock: ManualClock,
) -> None:
    """``seq`` never depends on the clock; event times, replay windows and timestamp
    tolerance follow the (injected) wall clock, wherever it jumps."""
    await add_integration(admin, "gh", replay_window_s=86400)
    await add_integration(admin, "sw", provider="standard-webhooks", secret=SW_SECRET)
    t0 = clock()

    def signed_sw(n: int, at: float) -> Any:
        return send_signed(http, daemon, "sw", b'{"n": 1}', provider="standard-webhooks",
                           secret=SW_SECRET, delivery_id=delivery_id("sw", n), now=at)

    first = (await send(http, daemon, "clk", 0))[1]
    clock.advance(-3600)
    second = (await send(http, daemon, "clk", 1))[1]
    assert second["seq"] > first["seq"]
    # The replay key outlives a step back: its expiry only got further away.
    assert (await send(http, daemon, "clk", 0))[1]["status"] == "duplicate"
    # Tolerance is judged against the daemon's clock, now an hour behind the sender's.
    assert (await signed_sw(0, t0))[1]["error"] == "timestamp_out_of_tolerance"
    assert (await signed_sw(1, clock()))[0] == 202

    clock.advance(2 * 86400)
    third = (await send(http, daemon, "clk", 2))[1]
    assert third["seq"] > second["seq"]
    # Past the one-day replay window, a redelivery is journaled again (documented).
    again = (await send(http, daemon, "clk", 0))[1]
    assert again["status"] == "accepted" and again["seq"] > third["seq"]
    assert (await signed_sw(2, t0 - 3600))[1]["error"] == "timestamp_out_of_tolerance"

    listed = await events(admin, type="webhook.received")
    seqs = [e["seq"] for e in listed]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) == 5
    # Time filters use the stamped time, so the event appended after the step back sorts
    # before the first one by time while it follows it by seq.
    since_t0 = await events(admin, type="webhook.received", since=str(t0))
    assert second["seq"] not in [e["seq"] for e in since_t0]
    assert first["seq"] in [e["seq"] for e in since_t0]
    assert (await verify(admin))["ok"]
