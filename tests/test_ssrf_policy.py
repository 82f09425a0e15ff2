"""What the SSRF settings mean to an operator, through the real daemon and CLI: a
subscription to an address delivery is refused to is added with a warning naming the
setting, a metadata address is never added, and a refused attempt fails the delivery at
once (a policy answer is the same on every retry) until the setting changes and it is
retried."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from palyra_py.testing import CapturingReceiver, ManualClock, MemoryKeyring, running_daemon
from tests.test_cli_e2e import palyra, palyra_json


async def add_json(state_dir: Path, *args: str) -> Any:
    """``subscriptions add ... --json``, whose answer holds the new secret (shown once, so
    not recorded for the leak check)."""
    code, out, err = await palyra(state_dir, "subscriptions", "add", *args, "--json")
    assert code == 0, (args, out, err)
    return json.loads(out)


async def test_add_warns_for_a_private_address_and_refuses_a_metadata_one(
    state_dir: Path, memory_keyring: MemoryKeyring,
) -> None:
    async with running_daemon(state_dir, keyring=memory_keyring):
        code, out, err = await palyra(state_dir, "subscriptions", "add", "lan",
                                      "--url", "http://10.1.2.3:8080/hook")
        assert code == 0, err
        warning = " ".join(err.split())
        assert "warning: url: 10.1.2.3 is private" in warning
        assert "[delivery] allow_private_networks = true" in warning
        added = await add_json(state_dir, "local",
                                  "--url", "http://localhost:9/x")
        assert "127.0.0.1 is loopback" in added["warnings"][0]
        public = await add_json(state_dir, "pub",
                                   "--url", "https://example.com/hook")
        assert "warnings" not in public

        for url in ("http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/"):
            code, out, err = await palyra(state_dir, "subscriptions", "add", "meta",
                                          "--url", url)
            message = " ".join(err.split())
            assert code == 1, (out, err)
            assert "[ssrf_blocked]" in message
            assert "is metadata (a cloud metadata address" in message
            assert "allow_cidrs entry naming exactly this address" in message
        listed = await palyra_json(state_dir, "subscriptions", "list")
        assert sorted(s["subscription_id"] for s in listed["subscriptions"]) == [
            "lan", "local", "pub"]

    # Allowed by the settings: no warning.
    async with running_daemon(state_dir, keyring=memory_keyring,
                              delivery__allow_private_networks=True):
        added = await add_json(state_dir, "lan2",
                                  "--url", "http://10.1.2.3:8080/hook")
        assert "warnings" not in added


async def test_a_refused_address_fails_the_delivery_at_once_then_retry_after_the_setting(
    state_dir: Path, memory_keyring: MemoryKeyring, receiver: CapturingReceiver,
) -> None:
    clock = ManualClock()
    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring) as d:
        # The default schedule would retry for 27 hours.
        await add_json(state_dir, "local", "--url", receiver.url,
                          "--events", "app.*")
        await palyra_json(state_dir, "system", "events", "emit", "app.ping")
        await d.dispatcher.wait_for_attempts(1)
        (row,) = (await palyra_json(state_dir, "deliveries", "list"))["deliveries"]
        assert (row["status"], row["attempts"], row["last_error_class"]) == (
            "failed", 1, "ssrf_blocked")
        assert row["next_attempt_at"] is None
        shown = await palyra_json(state_dir, "deliveries", "show", row["delivery_id"])
        (attempt,) = shown["attempts"]
        assert "127.0.0.1 is loopback" in attempt["error_detail"]
        assert "allow_private_networks" in attempt["error_detail"]
        exhausted = await palyra_json(state_dir, "system", "events", "list", "--type",
                                      "delivery.exhausted")
        assert [e["payload"]["last_error_class"] for e in exhausted["events"]] == [
            "ssrf_blocked"]
    assert receiver.received == []

    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring,
                              delivery__allow_private_networks=True) as d:
        code, out, err = await palyra(state_dir, "deliveries", "retry", row["delivery_id"])
        assert code == 0, (out, err)
        (got,) = await receiver.wait_for(1)
        assert got.json()["type"] == "app.ping"
