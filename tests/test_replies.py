"""Replies to the sender: an integration's static ``response`` and ``response_command``,
on the real daemon over real HTTP, with real scripts and Slack slash commands signed by
slack_sdk's own code. The event is journaled whatever the answer."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from slack_sdk.signature import SignatureVerifier

from palyra_py.server.daemon import Daemon
from tests.daemon_process import DaemonProcess
from tests.helpers import add_integration, events
from tests.test_cli_e2e import palyra, palyra_json

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
FORM = "application/x-www-form-urlencoded"
SLASH = {"command": "/deploy", "text": "prod", "user_id": "U1", "trigger_id": "1.2.abc"}
STATIC = {"status": 200, "body": "On it.", "content_type": "text/plain; charset=utf-8"}


def slack_signed(fields: dict[str, str], now: float) -> tuple[bytes, dict[str, str]]:
    """A slash command body and the headers Slack sends, signed by slack_sdk."""
    body = urlencode(fields).encode()
    stamp = str(int(now))
    signature = SignatureVerifier(SECRET).generate_signature(timestamp=stamp, body=body)
    assert signature is not None
    return body, {"Content-Type": FORM, "X-Slack-Request-Timestamp": stamp,
                  "X-Slack-Signature": signature}


async def post_slash(
    http: aiohttp.ClientSession, url: str, fields: dict[str, str], now: float
) -> tuple[int, bytes, dict[str, str]]:
    body, headers = slack_signed(fields, now)
    async with http.post(url, data=body, headers=headers) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


def script(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


# A reply command that tells what it was given: its argv, its environment and its stdin.
ECHO_ALL = """\
import json, os, sys
print(json.dumps({"argv": sys.argv[1:], "env": dict(os.environ),
                  "stdin": json.loads(sys.stdin.read())}))
"""


async def slack_hook(admin: aiohttp.ClientSession, **fields: Any) -> None:
    await add_integration(admin, "sl", provider="slack", secret=SECRET, **fields)


async def test_static_response_answers_and_the_event_is_journaled(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession
) -> None:
    await slack_hook(admin, response=STATIC)
    url = daemon.ingress_url_for("sl", local=True)
    status, body, headers = await post_slash(http, url, SLASH, daemon.clock())
    assert (status, body) == (200, b"On it.")
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    (event,) = await events(admin, type="webhook.received")
    assert headers["Palyra-Event-Id"] == event["payload"]["id"]
    assert headers["Palyra-Seq"] == str(event["seq"])
    assert headers["Palyra-Status"] == "accepted"
    assert event["payload"]["payload"] == SLASH


async def test_command_response_gets_the_payload_on_stdin_and_a_clean_env(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    echo = script(tmp_path, "echo_all.py", ECHO_ALL)
    await slack_hook(admin, response_command=[sys.executable, echo, "--literal", "{text}"],
                     response_timeout_s=10)
    os.environ["PALYRA_TEST_DAEMON_ONLY"] = "must-not-leak"
    try:
        hostile = {**SLASH, "text": f"$(touch {marker}); rm -rf ~ `touch {marker}`\n|&>x"}
        status, body, headers = await post_slash(
            http, daemon.ingress_url_for("sl", local=True), hostile, daemon.clock())
    finally:
        del os.environ["PALYRA_TEST_DAEMON_ONLY"]
    assert status == 200, body
    assert headers["Content-Type"] == "application/json"
    seen = json.loads(body)
    assert seen["argv"] == ["--literal", "{text}"]  # exactly the argv given
    assert seen["stdin"] == hostile  # values reach stdin as data, never a shell
    assert not marker.exists()
    env = seen["env"]
    (event,) = await events(admin, type="webhook.received")
    assert env["PALYRA_EVENT_ID"] == event["payload"]["id"] == headers["Palyra-Event-Id"]
    assert env["PALYRA_EVENT_TYPE"] == "/deploy" and env["PALYRA_INTEGRATION_ID"] == "sl"
    assert env["PALYRA_SEQ"] == str(event["seq"])
    # Nothing of the daemon's own environment (it may hold secrets) is passed on.
    assert "PALYRA_TEST_DAEMON_ONLY" not in env
    assert set(env) - {"LC_CTYPE"} <= {"PATH", "HOME", "LANG", "PALYRA_EVENT_ID",
                                       "PALYRA_EVENT_TYPE", "PALYRA_INTEGRATION_ID",
                                       "PALYRA_SEQ"}


async def test_command_stdout_uses_the_static_status_and_content_type(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession
) -> None:
    await slack_hook(admin, response={"status": 201, "content_type": "text/markdown"},
                     response_command=["/bin/echo", "*deploying*"])
    status, body, headers = await post_slash(
        http, daemon.ingress_url_for("sl", local=True), SLASH, daemon.clock())
    assert (status, body, headers["Content-Type"]) == (201, b"*deploying*\n", "text/markdown")


async def test_plain_stdout_is_text(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession
) -> None:
    await slack_hook(admin, response_command=["/bin/echo", "deploying prod"])
    status, body, headers = await post_slash(
        http, daemon.ingress_url_for("sl", local=True), SLASH, daemon.clock())
    assert (status, body) == (200, b"deploying prod\n")
    assert headers["Content-Type"] == "text/plain; charset=utf-8"


async def test_timeout_sends_the_fallback_and_the_event_stays_journaled(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    fifo = tmp_path / "never-written"
    os.mkfifo(fifo)
    # Opening a FIFO nobody writes blocks: the command hangs until it is killed.
    blocker = script(tmp_path, "block.sh", f"#!/bin/sh\nread line < {fifo}\necho late\n")
    await slack_hook(admin, response=STATIC, response_command=[blocker],
                     response_timeout_s=0.3)
    status, body, _ = await post_slash(
        http, daemon.ingress_url_for("sl", local=True), SLASH, daemon.clock())
    assert (status, body) == (200, b"On it.")
    assert len(await events(admin, type="webhook.received")) == 1


async def test_without_a_static_response_the_fallback_is_the_usual_answer(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession
) -> None:
    await slack_hook(admin, response_command=["/bin/sh", "-c", "echo oops; exit 3"])
    status, body, _ = await post_slash(
        http, daemon.ingress_url_for("sl", local=True), SLASH, daemon.clock())
    answer = json.loads(body)
    assert (status, answer["status"]) == (202, "accepted")
    (event,) = await events(admin, type="webhook.received")
    assert answer["event_id"] == event["payload"]["id"]


@pytest.mark.parametrize("command", [
    pytest.param(["/bin/sh", "-c", "echo oops; exit 3"], id="exit-3"),
    pytest.param(["/nonexistent/reply"], id="no-such-program"),
    pytest.param(["/bin/sh", "-c", "kill -9 $$"], id="killed"),
    pytest.param(["/bin/sh", "-c", "head -c 70000 /dev/zero"], id="stdout-past-64k"),
])
async def test_a_failed_command_sends_the_static_fallback(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession,
    command: list[str],
) -> None:
    await slack_hook(admin, response=STATIC, response_command=command)
    status, body, _ = await post_slash(
        http, daemon.ingress_url_for("sl", local=True), SLASH, daemon.clock())
    assert (status, body) == (200, b"On it.")
    assert len(await events(admin, type="webhook.received")) == 1


async def test_stdout_of_64k_exactly_is_the_answer(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession
) -> None:
    await slack_hook(admin, response=STATIC,
                     response_command=["/bin/sh", "-c", "head -c 65536 /dev/zero | tr '\\0' a"])
    status, body, _ = await post_slash(
        http, daemon.ingress_url_for("sl", local=True), SLASH, daemon.clock())
    assert (status, body) == (200, b"a" * 65536)


async def test_a_replayed_request_gets_the_fallback_and_no_second_run(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    counter = script(tmp_path, "count.sh", f"#!/bin/sh\necho run >> {runs}\necho ran\n")
    await slack_hook(admin, response=STATIC, response_command=[counter])
    url, now = daemon.ingress_url_for("sl", local=True), daemon.clock()
    first = await post_slash(http, url, SLASH, now)
    again = await post_slash(http, url, SLASH, now)  # Slack's retry: the same signed request
    assert (first[0], first[1]) == (200, b"ran\n")
    assert (again[0], again[1]) == (200, b"On it.")
    assert again[2]["Palyra-Event-Id"] == first[2]["Palyra-Event-Id"]
    assert again[2]["Palyra-Status"] == "duplicate"
    assert runs.read_text() == "run\n"
    assert len(await events(admin, type="webhook.received")) == 1


async def test_rejections_keep_their_answers(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    counter = script(tmp_path, "count.sh", f"#!/bin/sh\necho run >> {runs}\n")
    await slack_hook(admin, response=STATIC, response_command=[counter])
    body, headers = slack_signed(SLASH, daemon.clock())
    headers["X-Slack-Signature"] = "v0=" + "0" * 64
    async with http.post(daemon.ingress_url_for("sl", local=True), data=body,
                         headers=headers) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"] == "signature_mismatch"
    assert not runs.exists()


@pytest.mark.parametrize(("fields", "field"), [
    ({"response": {"status": 500}}, "response.status"),
    ({"response": {"status": 302}}, "response.status"),
    ({"response": {"body": "x" * 65537}}, "response.body"),
    ({"response": {"content_type": "not a type"}}, "response.content_type"),
    ({"response": {"headers": {}}}, "response.headers"),
    ({"response_command": [""]}, "response_command[0]"),
    ({"response_command": "/bin/echo hi"}, "response_command"),
    ({"response_command": ["/bin/echo", "a\x00b"]}, "response_command[1]"),
    ({"response_timeout_s": 11}, "response_timeout_s"),
    ({"response_timeout_s": 0}, "response_timeout_s"),
])
async def test_bad_response_settings_are_refused_naming_the_field(
    daemon: Daemon, admin: aiohttp.ClientSession, fields: dict[str, Any], field: str
) -> None:
    body = {"integration_id": "sl", "provider": "slack", "secret": {"value": SECRET}, **fields}
    async with admin.post("/v1/webhooks", json=body) as resp:
        answer = await resp.json()
        assert resp.status == 400, answer
    assert answer["error"] == "invalid_request" and answer["field"] == field


async def test_patch_sets_and_removes_a_response(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession
) -> None:
    await slack_hook(admin)
    async with admin.patch("/v1/webhooks/sl", json={"response": {"body": "ok"}}) as resp:
        answer = await resp.json()
        assert resp.status == 200, answer
    hook = answer["webhook"]
    assert hook["response"] == {"status": 200, "body": "ok",
                                "content_type": "text/plain; charset=utf-8"}
    url = daemon.ingress_url_for("sl", local=True)
    status, body, _ = await post_slash(http, url, SLASH, daemon.clock())
    assert (status, body) == (200, b"ok")
    async with admin.patch("/v1/webhooks/sl", json={"response": None}) as resp:
        assert resp.status == 200 and (await resp.json())["webhook"]["response"] is None
    status, body, _ = await post_slash(http, url, {**SLASH, "text": "2"}, daemon.clock())
    assert status == 202 and json.loads(body)["status"] == "accepted"


async def test_with_two_workers_each_answers_with_the_command(
    state_dir: Path, tmp_path: Path
) -> None:
    """Ingress runs in worker processes: the registry's response fields reach them."""
    process = await DaemonProcess(state_dir, workers="2").start()
    try:
        connector = aiohttp.UnixConnector(path=str(state_dir / "palyra.sock"))
        async with aiohttp.ClientSession(connector=connector, base_url="http://admin") as admin:
            await slack_hook(admin, response=STATIC,
                             response_command=["/bin/sh", "-c", "echo \"$PALYRA_SEQ\""])
        url = f"{process.ingress}/hooks/sl"
        seqs = set()
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True)
        ) as http:
            for n in range(6):
                status, body, headers = await post_slash(
                    http, url, {**SLASH, "text": str(n)}, time.time())
                assert status == 200, body
                assert body.decode().strip() == headers["Palyra-Seq"]
                seqs.add(headers["Palyra-Seq"])
        assert len(seqs) == 6
    finally:
        await process.stop()


async def test_cli_add_and_update_set_the_answer(
    daemon: Daemon, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    sd = daemon.state_dir
    added = await palyra_json(
        sd, "webhooks", "add", "sl", "--provider", "slack", "--secret-stdin",
        "--response-body", "On it.", "--response-status", "200",
        "--response-command", "/bin/echo", "--response-arg", "--from", "--response-arg", "cli",
        "--response-timeout", "1.5", stdin=f"{SECRET}\n".encode())
    hook = added["webhook"]
    assert hook["response"] == {"status": 200, "body": "On it.",
                                "content_type": "text/plain; charset=utf-8"}
    assert (hook["response_command"], hook["response_timeout_s"]) == (["/bin/echo", "--from",
                                                                       "cli"], 1.5)
    url = daemon.ingress_url_for("sl", local=True)
    status, body, _ = await post_slash(http, url, SLASH, daemon.clock())
    assert (status, body) == (200, b"--from cli\n")

    updated = await palyra_json(sd, "webhooks", "update", "sl", "--no-response-command",
                                "--response-content-type", "text/markdown")
    assert updated["webhook"]["response_command"] == []
    assert updated["webhook"]["response"] == {"status": 200, "body": "On it.",
                                              "content_type": "text/markdown"}
    status, body, headers = await post_slash(http, url, {**SLASH, "text": "2"}, daemon.clock())
    assert (status, body, headers["Content-Type"]) == (200, b"On it.", "text/markdown")

    code, out, _ = await palyra(sd, "webhooks", "show", "sl", columns=200)
    assert code == 0 and "text/markdown" in out and "response_timeout_s" in out
    code, _, err = await palyra(sd, "webhooks", "update", "sl", "--response-arg", "x")
    assert code == 2 and "--response-command" in err
    code, _, err = await palyra(sd, "webhooks", "update", "sl", "--response-status", "500")
    assert code == 2



def test_openapi_schemas_hold_the_response_fields() -> None:
    import yaml

    from tests.test_openapi import SPEC_FILE, schema_validator

    spec = yaml.safe_load(SPEC_FILE.read_text(encoding="utf-8"))
    new = schema_validator(spec, "/components/schemas/NewIntegration")
    base = {"integration_id": "sl", "provider": "slack", "secret": {"value": "x"}}
    assert new.is_valid({**base, "response": STATIC, "response_command": ["/bin/echo"],
                         "response_timeout_s": 2.5})
    assert not new.is_valid({**base, "response": {"status": 500}})
    assert not new.is_valid({**base, "response": {"headers": {}}})
    assert not new.is_valid({**base, "response_timeout_s": 11})


async def test_webhooks_test_reads_the_outcome_of_a_custom_answer(
    daemon: Daemon, admin: aiohttp.ClientSession
) -> None:
    await slack_hook(admin, response=STATIC, response_command=["/bin/echo", "custom"])
    async with admin.post("/v1/webhooks/sl/test", json={}) as resp:
        verdict = await resp.json()
        assert resp.status == 200, verdict
    (event,) = await events(admin, type="webhook.received")
    assert (verdict["outcome"], verdict["status_code"]) == ("accepted", 200)
    assert (verdict["seq"], verdict["event_id"]) == (event["seq"], event["payload"]["id"])


async def test_an_ignored_event_type_runs_nothing(
    daemon: Daemon, admin: aiohttp.ClientSession, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    counter = script(tmp_path, "count.sh", f"#!/bin/sh\necho run >> {runs}\n")
    await slack_hook(admin, response=STATIC, response_command=[counter],
                     allowed_events=["/status"])
    status, body, _ = await post_slash(
        http, daemon.ingress_url_for("sl", local=True), SLASH, daemon.clock())
    assert (status, json.loads(body)["status"]) == (200, "ignored")
    assert not runs.exists()
