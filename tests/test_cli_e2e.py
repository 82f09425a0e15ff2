"""The real ``palyra`` CLI (a child process) against the real daemon."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp

from palyra_py.server.daemon import Daemon
from tests import leakcheck
from tests.fault_helpers import admin_session
from tests.helpers import add_integration, send_signed


async def palyra(state_dir: Path, *args: str, stdin: bytes | None = None,
                 columns: int | None = None) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PALYRA_")}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "palyra_py", *args, "--state-dir", str(state_dir),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def palyra_json(state_dir: Path, *args: str, stdin: bytes | None = None) -> Any:
    code, out, err = await palyra(state_dir, *args, "--json", stdin=stdin)
    assert code == 0, (args, code, out, err)
    leakcheck.WATCH.record(f"palyra {' '.join(args)} --json", out + err)
    return json.loads(out)


async def test_add_test_and_list_through_the_cli(daemon: Daemon) -> None:
    sd = daemon.state_dir
    code, out, err = await palyra(sd, "webhooks", "add", "gh", "--provider", "github",
                                  "--events", "ping,push", "--secret-stdin",
                                  stdin=b"cli-secret-value\n")
    assert code == 0, err
    assert "cli-secret-value" not in out + err
    listed = await palyra_json(sd, "webhooks", "list")
    assert [w["integration_id"] for w in listed["webhooks"]] == ["gh"]
    assert listed["webhooks"][0]["readiness"] == "ready"

    verdict = await palyra_json(sd, "webhooks", "test", "gh")
    assert verdict["outcome"] == "accepted" and verdict["seq"] > 0
    tampered = await palyra_json(sd, "webhooks", "test", "gh", "--tamper")
    assert (tampered["outcome"], tampered["reason"]) == ("rejected", "signature_mismatch")
    shown = await palyra_json(sd, "webhooks", "show", "gh")
    assert shown["webhook"]["last_test_status"] == "rejected"

    received = await palyra_json(sd, "system", "events", "list", "--type", "webhook.received")
    assert [e["seq"] for e in received["events"]] == [verdict["seq"]]
    secrets_text = json.dumps([listed, verdict, tampered, shown, received])
    assert "cli-secret-value" not in secrets_text


async def test_generate_secret_is_printed_once_and_works(daemon: Daemon) -> None:
    sd = daemon.state_dir
    code, out, err = await palyra(sd, "webhooks", "add", "sw", "--provider",
                                  "standard-webhooks", "--generate-secret")
    assert code == 0, err
    secret = next(w for w in out.split() if w.startswith("whsec_"))
    assert out.count(secret) == 1
    assert (await palyra_json(sd, "webhooks", "test", "sw"))["outcome"] == "accepted"
    code, out, _ = await palyra(sd, "webhooks", "show", "sw")
    assert code == 0 and secret not in out


async def test_add_refuses_a_replay_window_the_signed_timestamp_outlives(
    daemon: Daemon,
) -> None:
    sd = daemon.state_dir
    code, out, err = await palyra(sd, "webhooks", "add", "st", "--provider", "stripe",
                                  "--replay-window", "10m", "--timestamp-tolerance", "5m",
                                  "--secret-stdin", stdin=b"whsec_cli_test\n")
    assert code == 1, (out, err)
    message = " ".join(err.split())
    assert "replay_window_s = 600, timestamp_tolerance_s = 300" in message
    assert "[invalid_request]" in message
    assert (await palyra_json(sd, "webhooks", "list"))["webhooks"] == []
    code, _, err = await palyra(sd, "webhooks", "add", "st", "--provider", "stripe",
                                "--replay-window", "11m", "--timestamp-tolerance", "5m",
                                "--secret-stdin", stdin=b"whsec_cli_test\n")
    assert code == 0, err


async def test_emit_list_verify_and_status(daemon: Daemon) -> None:
    sd = daemon.state_dir
    emitted = await palyra_json(sd, "system", "events", "emit", "deploy.finished",
                                "--data", '{"sha": "abc", "password": "hunter2"}',
                                "--severity", "warn")
    listed = await palyra_json(sd, "system", "events", "list", "--type", "deploy.*")
    assert [e["seq"] for e in listed["events"]] == [emitted["seq"]]
    assert listed["events"][0]["payload"]["data"] == {"sha": "abc", "password": "[REDACTED]"}
    code, _, err = await palyra(sd, "system", "events", "emit", "webhook.fake")
    assert code == 1 and "reserved" in err
    assert (await palyra_json(sd, "system", "events", "verify"))["ok"] is True
    status = await palyra_json(sd, "daemon", "status")
    assert status["journal"]["last_seq"] >= emitted["seq"]
    code, out, _ = await palyra(sd, "daemon", "status")
    assert code == 0 and "keyring" in out.lower()


async def test_tail_follow_sees_a_new_event(daemon: Daemon) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PALYRA_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "palyra_py", "system", "events", "tail", "-f", "--json",
        "--type", "tail.*", "--state-dir", str(daemon.state_dir),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    try:
        connector = aiohttp.UnixConnector(path=str(daemon.socket_path))
        async with aiohttp.ClientSession(connector=connector) as admin:
            # Emit until tail has subscribed and shows one: no timer decides when it is ready.
            assert proc.stdout is not None
            line = b""
            for i in range(200):
                async with admin.post("http://admin/v1/events",
                                      json={"type": "tail.seen", "data": {"i": i}}) as resp:
                    assert resp.status == 201
                try:
                    line = await asyncio.wait_for(proc.stdout.readline(), 0.5)
                    break
                except TimeoutError:
                    continue
        event = json.loads(line)
        assert event["kind"] == "tail.seen"
    finally:
        proc.terminate()
        await proc.wait()


async def test_twenty_concurrent_adds_all_land_and_comments_survive(daemon: Daemon) -> None:
    sd = daemon.state_dir
    registry = sd / "webhooks.toml"
    await palyra(sd, "webhooks", "add", "first", "--provider", "gitlab", "--secret-stdin",
                 stdin=b"token-1\n")
    registry.write_text("# Hand-written: do not remove\n" + registry.read_text())
    results = await asyncio.gather(*(
        palyra(sd, "webhooks", "add", f"hook-{i:02d}", "--provider", "github",
               "--secret-stdin", stdin=b"s\n")
        for i in range(20)
    ))
    assert [r[0] for r in results] == [0] * 20, [r[2] for r in results if r[0]]
    listed = await palyra_json(sd, "webhooks", "list")
    assert len(listed["webhooks"]) == 21
    assert registry.read_text().startswith("# Hand-written: do not remove\n")


async def test_cli_says_when_the_daemon_is_not_running(state_dir: Path) -> None:
    code, _, err = await palyra(state_dir, "webhooks", "list")
    assert code == 3 and "not running" in err and "palyra daemon run" in err


async def test_test_sends_an_allowed_event_when_the_sample_is_filtered_out(
    daemon: Daemon,
) -> None:
    sd = daemon.state_dir
    for integration_id, provider in (("gh", "github"), ("st", "stripe")):
        code, _, err = await palyra(sd, "webhooks", "add", integration_id, "--provider",
                                    provider, "--events", "invoice.paid,push",
                                    "--generate-secret")
        assert code == 0, err
        verdict = await palyra_json(sd, "webhooks", "test", integration_id)
        assert verdict["outcome"] == "accepted", verdict
    code, _, err = await palyra(sd, "webhooks", "test", "gh", "--event", "issues")
    assert code == 0 and "not in allowed_events" in err


# Issue 9 item 14: a provider's event type (from a JSON body, or GitHub's unsigned
# X-GitHub-Event header, where a C1 CSI U+009B gets through) that would clear the screen,
# plant an OSC 8 link, recolour the terminal, reverse the line and carry rich markup.
HOSTILE_TYPE = ("\x1b[2J\x1b]8;;https://evil.example/\x1b\\click me\x1b]8;;\x1b\\"
                "\x9b31m\u202egnp.exe\u202c\u2066[bold]loud[/bold]\x7f\x07")
HOSTILE_HEADER = "push\x9b2J\u202eexe.txt"
RAW_CONTROLS = ("\x1b", "\x9b", "\x07", "\x7f", "\u202e", "\u202c", "\u2066")


async def test_event_types_are_shown_escaped_to_people_and_exact_in_json(
    daemon: Daemon, http: aiohttp.ClientSession,
) -> None:
    sd = daemon.state_dir
    async with admin_session(daemon.socket_path) as admin:
        await add_integration(admin, "st", provider="stripe", secret="whsec_test")
        await add_integration(admin, "gh", provider="github")
    body = json.dumps({"id": "evt_hostile", "type": HOSTILE_TYPE}).encode()
    status, _, _ = await send_signed(http, daemon, "st", body, provider="stripe",
                                     secret="whsec_test")
    assert status == 202
    status, _, _ = await send_signed(http, daemon, "gh", b'{"zen": "hi"}',
                                     event=HOSTILE_HEADER)
    assert status == 202

    machine = await palyra_json(sd, "system", "events", "list", "--type", "webhook.received")
    assert [e["event_type"] for e in machine["events"]] == [HOSTILE_TYPE, HOSTILE_HEADER]
    code, out, err = await palyra(sd, "system", "events", "tail", "-n", "10", "--json")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert {HOSTILE_TYPE, HOSTILE_HEADER} <= {e.get("event_type") for e in lines}

    for args in (("system", "events", "list"), ("system", "events", "tail", "-n", "10")):
        code, out, err = await palyra(sd, *args, columns=400)
        assert code == 0, err
        assert not [c for c in RAW_CONTROLS if c in out + err], args
        assert "\\x1b[2J\\x1b]8;;https://evil.example/\\x1b\\click me" in out, out
        assert "\\x9b31m\\u202egnp.exe\\u202c\\u2066[bold]loud[/bold]\\x7f\\x07" in out
        assert "push\\x9b2J\\u202eexe.txt" in out
