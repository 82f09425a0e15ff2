"""The rough edges a new user hits (issue 13, items 16-20), each through the real daemon
and the real CLI (a child process)."""

from __future__ import annotations

import re
from pathlib import Path

from palyra_py.server.daemon import Daemon
from palyra_py.testing import ManualClock, MemoryKeyring, running_daemon
from tests.fault_helpers import admin_session, subscribe
from tests.test_cli_e2e import palyra, palyra_json


def said(err: str) -> str:
    """A CLI error as one line, without Rich's box around it."""
    return " ".join(re.sub("[│╭╮╰╯─]", " ", err).split())


async def test_an_install_without_owners_is_not_capped(daemon: Daemon) -> None:
    async with admin_session(daemon.socket_path) as admin:
        for n in range(7):
            await subscribe(admin, f"s{n}", "https://example.com/hook")
    added = await palyra_json(daemon.state_dir, "subscriptions", "add", "s7",
                              "--url", "https://example.com/hook",
                              "--secret-ref", "env:SUB_SECRET")
    assert added["subscription"]["owner"] == "default"
    listed = await palyra_json(daemon.state_dir, "subscriptions", "list")
    assert len(listed["subscriptions"]) == 8


async def test_a_limit_set_holds_for_each_owner(
    state_dir: Path, clock: ManualClock, memory_keyring: MemoryKeyring,
) -> None:
    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring,
                              delivery__max_subscriptions_per_owner=1) as daemon:
        sd = daemon.state_dir
        await palyra_json(sd, "subscriptions", "add", "a", "--url", "https://example.com/a",
                          "--owner", "team-a", "--secret-ref", "env:SUB_SECRET")
        await palyra_json(sd, "subscriptions", "add", "b", "--url", "https://example.com/b",
                          "--owner", "team-b", "--secret-ref", "env:SUB_SECRET")
        code, _, err = await palyra(sd, "subscriptions", "add", "a2", "--url",
                                    "https://example.com/a", "--owner", "team-a",
                                    "--secret-ref", "env:SUB_SECRET")
        assert code == 1 and "[limit_reached]" in said(err), err
        assert "max_subscriptions_per_owner" in said(err)
        code, _, err = await palyra(sd, "subscriptions", "update", "b", "--owner", "team-a")
        assert code == 1 and "[limit_reached]" in said(err), err
        shown = await palyra_json(sd, "subscriptions", "show", "b")
        assert shown["subscription"]["owner"] == "team-b"
