"""Edit in place (issue 13, item 1): ``palyra webhooks update`` and ``palyra subscriptions
update``, the real CLI (a child process) against the real daemon, on the file registry and
on PostgreSQL. The secret stays, the subscription's cursor stays (nothing skipped, nothing
sent twice), comments in the registry survive, list options replace or add/remove."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp

from palyra_py.outbound.signing import StandardWebhooksSigner
from palyra_py.server.daemon import Daemon
from palyra_py.testing import (
    CapturingReceiver,
    ManualClock,
    MemoryKeyring,
    Received,
    running_daemon,
    running_receiver,
)
from tests.fault_helpers import admin_session, publish
from tests.helpers import send_signed
from tests.pg import PgServer
from tests.test_cli_e2e import palyra, palyra_json

HOOK_SECRET = "edit-in-place-hook-secret"
SUB_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # base64 of 24 bytes


async def webhook(state_dir: Path, integration_id: str) -> dict[str, Any]:
    answer: dict[str, Any] = (await palyra_json(state_dir, "webhooks", "show",
                                                integration_id))["webhook"]
    return answer


async def subscription(state_dir: Path, subscription_id: str) -> dict[str, Any]:
    answer: dict[str, Any] = (await palyra_json(state_dir, "subscriptions", "show",
                                                subscription_id))["subscription"]
    return answer


def said(err: str) -> str:
    """A CLI error as one line, without Rich's box around it."""
    return " ".join(re.sub("[│╭╮╰╯─]", " ", err).split())


def signed_by(received: Received, secret: str) -> bool:
    headers = {k.lower(): v for k, v in received.headers.items()}
    expected = StandardWebhooksSigner([secret]).headers(
        headers["webhook-id"], int(headers["webhook-timestamp"]), received.body)
    return expected["webhook-signature"] in headers["webhook-signature"].split()


async def check_webhook_edits(state_dir: Path, post: Any) -> None:
    """``webhooks update`` on integration ``gh`` (github, events push, secret HOOK_SECRET,
    a comment above it): ``post(event, delivery)`` sends a signed GitHub delivery."""
    assert await post("push", "d-1") == 202
    edited = await palyra_json(state_dir, "webhooks", "update", "gh", "--add-event", "release",
                               "--display-name", "CI pushes", "--max-payload-bytes", "4096")
    assert edited["webhook"]["allowed_events"] == ["push", "release"]
    assert edited["webhook"]["display_name"] == "CI pushes"
    assert edited["webhook"]["max_payload_bytes"] == 4096
    assert await post("release", "d-2") == 202  # the same secret verifies

    edited = await palyra_json(state_dir, "webhooks", "update", "gh", "--remove-event", "push")
    assert edited["webhook"]["allowed_events"] == ["release"]
    code, _, err = await palyra(state_dir, "webhooks", "update", "gh",
                                "--remove-event", "release")
    assert code == 2 and "--all-events" in said(err), err
    code, _, err = await palyra(state_dir, "webhooks", "update", "gh", "--remove-event", "ping")
    assert code == 2 and "'ping' is not in the list" in said(err), err
    code, _, err = await palyra(state_dir, "webhooks", "update", "gh", "--all-events",
                                "--events", "push")
    assert code == 2 and "exclude each other" in said(err), err
    assert (await webhook(state_dir, "gh"))["allowed_events"] == ["release"]  # untouched

    edited = await palyra_json(state_dir, "webhooks", "update", "gh", "--events", "push,ping",
                               "--sources", "127.0.0.0/8")
    assert edited["webhook"]["allowed_events"] == ["push", "ping"]  # replaced
    assert edited["webhook"]["allowed_sources"] == ["127.0.0.0/8"]
    edited = await palyra_json(state_dir, "webhooks", "update", "gh", "--all-events",
                               "--any-source")
    assert edited["webhook"]["allowed_events"] == []
    assert edited["webhook"]["allowed_sources"] == []
    code, out, err = await palyra(state_dir, "webhooks", "update", "gh", "--add-event", "push")
    assert code == 0 and "secret is unchanged" in out, (out, err)
    assert await post("push", "d-3") == 202
    assert await post("issues", "d-4") == 200  # verified, but not an accepted type


COMMENT = "# GitHub: CI pushes, ask #ci\n"


async def registry_text(state_dir: Path) -> str:
    """The registry document as the daemon holds it (the file, or PostgreSQL's copy)."""
    text: str = (await palyra_json(state_dir, "registry", "export"))["document"]
    return text


async def add_commented_hook(state_dir: Path) -> None:
    """Integration ``gh`` with a comment above it, written the way people do: in the file
    (then ``daemon reload``), or with ``registry import`` in cluster mode."""
    code, _, err = await palyra(state_dir, "webhooks", "add", "gh", "--provider", "github",
                                "-e", "push", "--secret-stdin",
                                stdin=HOOK_SECRET.encode() + b"\n")
    assert code == 0, err
    text = (await registry_text(state_dir)).replace("[[webhooks]]", COMMENT + "[[webhooks]]", 1)
    edited = state_dir / "edited.toml"
    edited.write_text(text)
    await palyra_json(state_dir, "registry", "import", str(edited))


async def check_all_edits(daemon: Daemon, http: aiohttp.ClientSession,
                          receiver: CapturingReceiver) -> None:
    sd = daemon.state_dir
    await add_commented_hook(sd)

    async def post(event: str, delivery: str) -> int:
        body = json.dumps({"zen": delivery}).encode()
        status, _, _ = await send_signed(http, daemon, "gh", body, secret=HOOK_SECRET,
                                         event=event, delivery_id=delivery)
        return status

    await check_webhook_edits(sd, post)
    async with admin_session(daemon.socket_path) as admin, running_receiver() as second:
        await check_subscription_edits(sd, admin, receiver, second)
    text = await registry_text(sd)
    assert COMMENT + "[[webhooks]]" in text
    assert 'display_name = "CI pushes"' in text


async def test_edits_in_place_on_the_file_registry(
    outbound: Daemon, http: aiohttp.ClientSession, receiver: CapturingReceiver,
) -> None:
    await check_all_edits(outbound, http, receiver)
    assert COMMENT + "[[webhooks]]" in (outbound.state_dir / "webhooks.toml").read_text()
    code, out, _ = await palyra(outbound.state_dir, "subscriptions", "update", "--help",
                                columns=200)
    assert code == 0 and "REPLACES" in out and "--add-event" in out


async def test_edits_in_place_on_the_postgresql_registry(
    pg_server: PgServer, state_dir: Path, clock: ManualClock, memory_keyring: MemoryKeyring,
    http: aiohttp.ClientSession, receiver: CapturingReceiver,
) -> None:
    dsn = pg_server.new_database("edit")
    async with running_daemon(state_dir, clock=clock, keyring=memory_keyring,
                              storage__backend="postgres", storage__dsn=dsn,
                              delivery__allow_private_networks=True) as daemon:
        await check_all_edits(daemon, http, receiver)


async def check_subscription_edits(state_dir: Path, admin: aiohttp.ClientSession,
                                   first: CapturingReceiver, second: CapturingReceiver,
                                   ) -> None:
    """``subscriptions update`` on a subscription ``ci`` made here to ``first``."""
    code, _, err = await palyra(state_dir, "subscriptions", "add", "ci", "--url", first.url,
                                "-e", "job.*", "--secret-stdin",
                                stdin=SUB_SECRET.encode() + b"\n")
    assert code == 0, err
    assert (await publish(admin, "job.one", n=1))[0] == 201
    [one] = await first.wait_for(1)
    assert one.json()["type"] == "job.one" and signed_by(one, SUB_SECRET)

    edited = (await palyra_json(
        state_dir, "subscriptions", "update", "ci", "--url", second.url,
        "--add-event", "deploy.*", "--max-in-flight", "3", "--ordered",
        "--retry-schedule", "0s,1m,1h", "-H", "X-Team: ci", "--filter", "data.env=prod",
        "--description", "moved"))["subscription"]
    assert edited["url"] == second.url
    assert edited["events"] == ["job.*", "deploy.*"]
    assert (edited["max_in_flight"], edited["ordered"]) == (3, True)
    assert edited["retry_schedule"] == ["0s", "1m", "1h"]
    assert edited["headers"] == {"X-Team": "ci"} and edited["filter"] == {"data.env": "prod"}
    assert edited["secret_ref"] == "keyring:subscription:ci"  # the same secret

    await publish(admin, "job.two", env="dev")  # filtered out
    await publish(admin, "job.three", env="prod")
    await publish(admin, "deploy.done", env="prod")
    got = await second.wait_for(2)
    # The cursor stayed: job.one is not sent again, nothing after it is skipped.
    assert [r.json()["type"] for r in got] == ["job.three", "deploy.done"]
    assert all(signed_by(r, SUB_SECRET) for r in got)
    assert got[0].headers["X-Team"] == "ci"
    assert len(first.received) == 1

    edited = (await palyra_json(state_dir, "subscriptions", "update", "ci", "--remove-event",
                                "job.*", "--no-ordered", "--no-filter", "--no-headers",
                                ))["subscription"]
    assert edited["events"] == ["deploy.*"]
    assert (edited["ordered"], edited["filter"], edited["headers"]) == (False, {}, {})
    code, _, err = await palyra(state_dir, "subscriptions", "update", "ci",
                                "--remove-event", "deploy.*")
    assert code == 2 and "--all-events" in said(err), err
    code, _, err = await palyra(state_dir, "subscriptions", "update", "ci")
    assert code == 2 and "nothing to change" in said(err), err
    code, _, err = await palyra(state_dir, "subscriptions", "update", "ci",
                                "--url", first.url, "--email", "a@example.com")
    assert code == 2 and "one destination" in said(err), err
    code, _, err = await palyra(state_dir, "subscriptions", "update", "ci",
                                "--max-in-flight", "1000")
    assert code == 1 and "max_in_flight" in said(err), err

    # A command destination, then back to a URL: the old destination's fields go.
    edited = (await palyra_json(state_dir, "subscriptions", "update", "ci", "--command",
                                "/bin/echo", "--arg", "{type}"))["subscription"]
    assert (edited["url"], edited["command"]) == ("", ["/bin/echo", "{type}"])
    edited = (await palyra_json(state_dir, "subscriptions", "update", "ci", "--arg", "{id}",
                                "--arg", "--json"))["subscription"]
    assert edited["command"] == ["/bin/echo", "{id}", "--json"]
    # A command signs nothing: its secret went with the switch, and the URL gets a new one,
    # shown this once.
    # (Read without the leak check's record: a secret shown once is the point here.)
    code, out, err = await palyra(state_dir, "subscriptions", "update", "ci", "--url",
                                  second.url, "--all-events", "--json")
    assert code == 0, err
    switched = json.loads(out)
    edited, new_secret = switched["subscription"], switched["secret"]
    assert (edited["url"], edited["command"], edited["events"]) == (second.url, [], [])
    assert new_secret != SUB_SECRET
    code, _, err = await palyra(state_dir, "subscriptions", "update", "ci", "--arg", "x")
    assert code == 2 and "no command" in said(err), err
    await publish(admin, "job.four")
    got = await second.wait_for(3)
    assert got[2].json()["type"] == "job.four" and signed_by(got[2], new_secret)
