"""Replay and backfill through the real daemon and the real CLI, on both delivery stores:
past journal events delivered to a subscription added after them, matching its events
only, once; replayed again, its deliveries are sent again with the same ids; the live
flow goes on meanwhile and nothing is delivered twice by the two."""

from __future__ import annotations

import aiohttp

from palyra_py.server.daemon import Daemon
from palyra_py.testing import CapturingReceiver
from tests.fault_helpers import subscribe
from tests.test_cli_e2e import palyra, palyra_json
from tests.test_redeliver import admin_g as admin_g
from tests.test_redeliver import clock as clock
from tests.test_redeliver import gateway as gateway
from tests.test_redeliver import published


async def test_replay_backfills_a_new_subscription_then_sends_again(
    gateway: Daemon, admin_g: aiohttp.ClientSession, receiver: CapturingReceiver,
) -> None:
    sd = gateway.state_dir
    first = await published(admin_g, "entry.created")
    await published(admin_g, "other.thing")
    second = await published(admin_g, "entry.updated")
    await subscribe(admin_g, "late", receiver.url, events=["entry.*"])
    head = (await palyra_json(sd, "system", "events", "list"))["events"][-1]["seq"]
    assert (await palyra_json(sd, "deliveries", "list"))["deliveries"] == []  # starts at head

    answer = await palyra_json(sd, "subscriptions", "replay", "late", "--from-seq", "1")
    assert answer == {"replayed": 2, "scanned": head}
    got = await receiver.wait_for(2)
    assert sorted(r.headers["webhook-id"] for r in got) == sorted([first, second])
    # The live flow goes on: a new event is delivered once.
    third = await published(admin_g, "entry.deleted")
    assert (await receiver.wait_for(3))[2].headers["webhook-id"] == third
    await gateway.dispatcher.wait_for_attempts(3)

    # Replayed again by time: the three deliveries are sent again, none created twice.
    code, out, err = await palyra(sd, "subscriptions", "replay", "late", "--since", "1h")
    assert code == 0, err
    assert "Replaying 3 of" in out
    again = await receiver.wait_for(6)
    assert sorted(r.headers["webhook-id"] for r in again[3:]) == sorted([first, second, third])
    await gateway.dispatcher.wait_for_attempts(6)
    listed = (await palyra_json(sd, "deliveries", "list"))["deliveries"]
    assert len(listed) == 3 and all(d["attempts"] == 2 for d in listed)


async def test_replay_needs_a_start_and_a_known_subscription(gateway: Daemon) -> None:
    sd = gateway.state_dir
    code, _, err = await palyra(sd, "subscriptions", "replay", "nope", "--from-seq", "1")
    assert code == 1 and "no subscription" in err
    code, _, err = await palyra(sd, "subscriptions", "replay", "nope")
    assert code == 2 and "--from-seq" in err
