"""Operational alerts through the real daemon and CLI, on SQLite and on PostgreSQL (cluster
mode: the node holding the subscription's lease delivers it and journals its alerts):
``delivery.failing``, ``delivery.exhausted``, ``delivery.recovered`` and
``subscription.disabled`` are journaled at warn/error, delivered to the subscriptions that
name them, never to the subscription they are about and never when they are about an
alert's delivery; the daemon log has one line per change of a subscription's failure
class."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from palyra_py.server.daemon import Daemon
from palyra_py.testing import (
    CapturingReceiver,
    ManualClock,
    MemoryKeyring,
    running_daemon,
    running_receiver,
)
from tests.pg import PgServer
from tests.test_cli_e2e import palyra, palyra_json

ALERTS = "delivery.*,subscription.disabled"


@pytest.fixture(params=["sqlite", "postgres"])
def engine_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    settings: dict[str, Any] = {"delivery__allow_private_networks": True}
    if request.param == "postgres":
        pg: PgServer = request.getfixturevalue("pg_server")
        pg.new_database("alerts")
        settings.update(storage__backend="postgres", storage__dsn=pg.dsn(pg.databases[-1]))
    return settings


@pytest.fixture
async def alerted(state_dir: Path, clock: ManualClock, memory_keyring: MemoryKeyring,
                  engine_settings: dict[str, Any]) -> AsyncIterator[Daemon]:
    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring,
                              **engine_settings) as daemon:
        yield daemon


async def add(state_dir: Path, sid: str, *args: str) -> None:
    # Not palyra_json: the answer holds the new secret, shown once.
    code, out, err = await palyra(state_dir, "subscriptions", "add", sid, *args, "--json")
    assert code == 0, (out, err)


def kinds(received: list[Any]) -> list[tuple[str, str]]:
    return [(r.json()["type"], r.json()["data"]["subscription_id"]) for r in received]


async def test_alerts_are_routed_by_name_without_loops_and_logged_once_per_change(
    alerted: Daemon, clock: ManualClock, receiver: CapturingReceiver,
) -> None:
    sd = alerted.state_dir
    receiver.script = [500, 500]  # the app's receiver fails twice, then answers 200
    async with running_receiver() as ops, running_receiver() as pager:
        ops.script = [500]  # the first alert it is sent fails once
        await add(sd, "app", "--url", receiver.url, "--events", "app.*",
                  "--retry-schedule", "0s,1s")
        await add(sd, "ops", "--url", ops.url, "--events", ALERTS, "--retry-schedule", "0s,1s")
        await add(sd, "pager", "--url", pager.url, "--events", ALERTS)
        with structlog.testing.capture_logs() as logs:
            await palyra_json(sd, "system", "events", "emit", "app.one")
            await receiver.wait_for(1)
            assert kinds(await pager.wait_for(1)) == [("delivery.failing", "app")]
            clock.advance(2)  # the app's second attempt, and the retry of ops' first alert
            alerted.dispatcher.wake()
            await receiver.wait_for(2)
            await palyra_json(sd, "system", "events", "emit", "app.two")
            await receiver.wait_for(3)
            expected = [("delivery.failing", "app"), ("delivery.exhausted", "app"),
                        ("delivery.recovered", "app")]
            assert kinds(await pager.wait_for(3)) == expected
            got = await ops.wait_for(4)
            assert sorted(kinds(got)) == sorted([expected[0], *expected])
            # app 3, ops 4, pager 3: all recorded, so every alert they make is journaled.
            await alerted.dispatcher.wait_for_attempts(10)

        # What ops failed made alerts about ops: journaled, delivered to nobody (not to
        # ops itself, and not to pager: an alert about an alert's delivery goes nowhere).
        journaled = await palyra_json(sd, "system", "events", "list", "--type",
                                      "delivery.*", "--type", "subscription.disabled")
        rows = [(e["kind"], e["severity"], e["payload"]["subscription_id"],
                 e["payload"]["event_type"]) for e in journaled["events"]]
        assert ("delivery.failing", "warn", "ops", "delivery.failing") in rows
        assert ("delivery.recovered", "warn", "ops", "delivery.failing") in rows
        assert [r for r in rows if r[2] == "app"] == [
            ("delivery.failing", "warn", "app", "app.one"),
            ("delivery.exhausted", "error", "app", "app.one"),
            ("delivery.recovered", "warn", "app", "app.two"),
        ]

        # One line when the failure starts (not one per attempt), one when it ends.
        lines = [(e["event"], e["subscription_id"]) for e in logs
                 if e["event"] in ("delivery_failing", "delivery_recovered")]
        assert lines.count(("delivery_failing", "app")) == 1
        assert lines.count(("delivery_recovered", "app")) == 1
        failing = next(e for e in logs if e["event"] == "delivery_failing")
        assert (failing["error_class"], failing["status_code"]) == ("http_status", 500)

        # An operator's disable is an alert too (warn); it is not sent to itself.
        await palyra_json(sd, "subscriptions", "disable", "ops")
        (disabled,) = [r for r in await pager.wait_for(4) if r.json()["type"].startswith(
            "subscription.")]
        assert disabled.json()["data"]["subscription_id"] == "ops"
        shown = await palyra_json(sd, "system", "events", "list", "--type",
                                  "subscription.disabled")
        assert [e["severity"] for e in shown["events"]] == ["warn"]
        # The disable came last: pager's deliveries of everything before it are made, and
        # none is of an alert about ops.
        listed = await palyra_json(sd, "deliveries", "list", "--subscription", "pager")
        assert len(listed["deliveries"]) == 4
        listed = await palyra_json(sd, "deliveries", "list", "--subscription", "ops")
        assert len(listed["deliveries"]) == 3
    assert all(json.loads(r.body)["type"].startswith("app.") for r in receiver.received)


async def test_alerts_go_only_where_they_are_named(
    alerted: Daemon, receiver: CapturingReceiver,
) -> None:
    """A subscription without ``--events`` (every application event and webhook) is not
    sent the daemon's alerts: they go only where they are named."""
    sd = alerted.state_dir
    async with running_receiver() as failing:
        failing.script = [500]
        await add(sd, "broken", "--url", failing.url, "--events", "app.*",
                  "--retry-schedule", "0s")
        await add(sd, "everything", "--url", receiver.url)
        await palyra_json(sd, "system", "events", "emit", "app.one")
        # Both attempts of app.one recorded: its alerts are journaled before app.two.
        await alerted.dispatcher.wait_for_attempts(2)
        await palyra_json(sd, "system", "events", "emit", "app.two")
        await receiver.wait_for(2)
        # "everything" was sent the app's events, not the alerts between them.
        assert [r.json()["type"] for r in receiver.received] == ["app.one", "app.two"]
    journaled = await palyra_json(sd, "system", "events", "list", "--type", "delivery.*")
    assert [e["kind"] for e in journaled["events"]][:2] == [
        "delivery.failing", "delivery.exhausted"]
